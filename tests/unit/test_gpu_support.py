"""The GPU support table (lstmcore.cuda.GPU_SUPPORT): docs/gpu.md shows exactly it, every
refused row is consulted by a check, and each library feature the GPU lacks is refused with
the table's message, before any device work (so all of this runs without a GPU)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from helpers import REPO, make_problem
from lstmcore import cuda, nn, ops

DOCS = REPO / "docs" / "gpu.md"
PACKAGE = REPO / "python" / "lstmcore"
TABLE_BLOCK = re.compile(
    r"<!-- gpu-support-table: begin[^\n]*-->\n(.*?)<!-- gpu-support-table: end -->", re.S
)


def test_the_docs_table_is_the_support_table() -> None:
    found = TABLE_BLOCK.findall(DOCS.read_text())
    assert len(found) == 1, "docs/gpu.md needs one generated support table"
    assert found[0] == cuda.support_table(), (
        "docs/gpu.md's table differs from lstmcore.cuda.GPU_SUPPORT: replace it with the "
        "output of python -c \"from lstmcore import cuda; print(cuda.support_table(), end='')\""
    )


def test_every_row_is_named_once_and_says_why() -> None:
    keys = [f.key for f in cuda.GPU_SUPPORT]
    assert len(keys) == len(set(keys))
    for f in cuda.GPU_SUPPORT:
        assert f.feature and f.note and "|" not in f.feature + f.note, f.key
        assert f.api or f.flags, f"{f.key}: nothing says how it is asked for"
    assert {f.supported for f in cuda.GPU_SUPPORT} == {True, False}


def test_every_refused_row_is_consulted_by_a_check() -> None:
    """A refused row that no check refers to would be a claim nothing enforces."""
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    for f in cuda.GPU_SUPPORT:
        if not f.supported:
            used = f'refuse("{f.key}"' in source or f'gpu_feature("{f.key}")' in source
            assert used, f"no check refuses {f.key!r}"


def test_a_supported_feature_cannot_be_refused() -> None:
    with pytest.raises(ValueError, match="the GPU supports it"):
        cuda.refuse("lstm")
    with pytest.raises(KeyError):
        cuda.gpu_feature("warp-drive")


def test_the_refusal_names_what_was_given_where_and_why() -> None:
    layers = cuda.gpu_feature("layers")
    assert layers.refusal() == (
        "num_layers > 1: not supported on device='cuda': the GPU path runs one LSTM layer "
        "(use device='cpu')"
    )
    assert layers.refusal("--layers 3", command_line=True) == (
        "--layers 3: not supported on --device cuda: the GPU path runs one LSTM layer "
        "(use --device cpu)"
    )
    err = cuda.refuse("layers", "num_layers=3")
    assert isinstance(err, ValueError) and err.feature is layers
    assert str(err) == layers.refusal("num_layers=3")


def _problem(rng: np.random.Generator) -> tuple[Any, ...]:
    return make_problem(rng, 3, 2, 4, 5, dtype=np.float32).inputs()


# each library feature the GPU path lacks, asked for on it: (table row, how it was named, call)
LIBRARY_REFUSALS: list[tuple[str, str | None, Callable[[np.random.Generator], Any]]] = [
    ("layers", None, lambda rng: nn.LSTM(3, 4, 2, device="cuda")),
    ("reverse", "bidirectional=True", lambda rng: nn.LSTM(3, 4, bidirectional=True, device="cuda")),
    (
        "reverse",
        "reverse=True",
        lambda rng: ops.lstm_forward(*_problem(rng), device="cuda", reverse=True),
    ),
    (
        "lengths",
        None,
        lambda rng: ops.lstm_forward(*_problem(rng), device="cuda", lengths=np.array([3, 1])),
    ),
    (
        "lengths",
        None,
        lambda rng: nn.LSTM(3, 4, device="cuda").forward(
            np.zeros((2, 1, 3), np.float32), lengths=np.array([1])
        ),
    ),
    ("bf16", None, lambda rng: ops.lstm_forward(*_problem(rng), device="cuda", precision="bf16")),
    ("bf16", None, lambda rng: nn.LSTM(3, 4, device="cuda", precision="bf16")),
    ("bf16", None, lambda rng: setattr(nn.LSTM(3, 4, device="cuda"), "precision", "bf16")),
    ("stream", None, lambda rng: nn.LSTM(3, 4, device="cuda").stream(2)),
]


@pytest.mark.parametrize(
    ("key", "given", "call"),
    LIBRARY_REFUSALS,
    ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(LIBRARY_REFUSALS)],
)
def test_each_library_feature_the_gpu_lacks_is_refused_with_the_tables_message(
    rng: np.random.Generator,
    key: str,
    given: str | None,
    call: Callable[[np.random.Generator], Any],
) -> None:
    with pytest.raises(cuda.GpuUnsupportedError) as refused:
        call(rng)
    assert refused.value.feature.key == key
    assert str(refused.value) == cuda.gpu_feature(key).refusal(given)


def test_the_same_calls_on_the_cpu_are_not_refused(rng: np.random.Generator) -> None:
    """The checks look at the device: on the CPU every one of these features runs."""
    ops.lstm_forward(*_problem(rng), reverse=True, lengths=np.array([3, 1]), precision="bf16")
    layer = nn.LSTM(3, 4, 2, bidirectional=True, precision="bf16")
    layer.forward(np.zeros((2, 1, 3), np.float32), lengths=np.array([1]))
    nn.LSTM(3, 4).stream(2)
