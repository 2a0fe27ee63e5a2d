"""``python -m lstmcore.train --device cuda`` with a setting the GPU does not run: one
``error:`` line, the GPU table's refusal (lstmcore.cuda.GPU_SUPPORT), status 1, before any
work. The settings are checked before the GPU is looked for, so this holds without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lstmcore import cuda
from lstmcore.cli import train
from lstmcore.mnist.run import Config

# every refused row that has a flag: (the flags, the row, how the refusal names it)
CLI_REFUSALS = [
    (["--layers", "2"], "layers", "--layers 2"),
    (["--bidirectional"], "reverse", "--bidirectional"),
    (["--precision", "bf16"], "bf16", "--precision bf16"),
    (["--shift", "1"], "shift", "--shift 1"),
]


def refusal(key: str, given: str) -> str:
    """The table's refusal of row ``key``, as the command line names it (``given``)."""
    return cuda.gpu_feature(key).refusal(given, command_line=True)


def test_every_refused_flag_of_the_table_is_tried_here() -> None:
    with_flags = {f.key for f in cuda.GPU_SUPPORT if f.flags and not f.supported}
    assert {key for _, key, _ in CLI_REFUSALS} == with_flags


@pytest.mark.parametrize(("flags", "key", "given"), CLI_REFUSALS)
def test_a_setting_the_gpu_lacks_is_the_tables_one_error_line(
    flags: list[str],
    key: str,
    given: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    assert train.main(["--device", "cuda", *flags, "--out", str(run)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {refusal(key, given)}\n"
    assert not run.exists()


def test_the_device_check_consults_the_table_before_the_gpu() -> None:
    """check_device: the table's refusal for the run's settings, then the GPU's availability."""
    for changes, key, given in [
        ({"layers": 4}, "layers", "--layers 4"),
        ({"precision": "bf16", "shift": 0}, "bf16", "--precision bf16"),
    ]:
        assert train.check_device("cuda", Config(**changes)) == refusal(key, given)
    assert train.check_device("cpu", Config(layers=4, bidirectional=True)) is None
    available, reason = cuda.available()
    want = None if available else f"--device cuda: {reason}"
    assert train.check_device("cuda", Config(shift=0)) == want


def test_a_gpu_run_defaults_to_no_shifts() -> None:
    """--shift left out is 0 on the GPU (its only value there): no refusal for it."""
    args = train.build_parser().parse_args(["--device", "cuda"])
    cfg = train.config_from_args(args, train.given_flags(["--device", "cuda"]))
    assert cfg.shift == 0
    assert train.check_device("cuda", cfg) in (None, f"--device cuda: {cuda.available()[1]}")


@pytest.mark.subprocess
def test_the_command_itself_prints_the_tables_refusal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--device", "cuda", "--layers", "2", "--out", str(run)]
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.train", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {refusal('layers', '--layers 2')}\n"
    assert not run.exists()
