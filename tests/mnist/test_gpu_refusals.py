"""What the GPU trainer cannot run is refused with the GPU table's message
(lstmcore.cuda.GPU_SUPPORT), before any device work: so all of this runs without a GPU and
without lstmcore._cuda."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_train import small_dataset

from lstmcore import cuda, optim
from lstmcore.mnist.cuda_train import CudaSession
from lstmcore.mnist.run import Config, Run, TrainingError, unsupported_on_device
from lstmcore.mnist.stepper import make_stepper
from lstmcore.nn import SequenceClassifier

IMAGES = np.zeros((4, 28, 28), np.float32)
LABELS = np.arange(4, dtype=np.int64)


class Lion(optim.Optimizer):
    """An optimizer the GPU trainer does not have."""

    def step(self, grads: dict[str, Any]) -> None:
        pass


def with_adam(**options: Any) -> CudaSession:
    """A GPU session for a small model made with ``options``, trained by Adam."""
    model = SequenceClassifier(28, 8, 10, **options)
    return CudaSession(model, optim.Adam(model.params), IMAGES, LABELS, max_batch=4, clip=1.0)


def with_optimizer(make: Callable[[dict[str, Any]], optim.Optimizer]) -> CudaSession:
    """A GPU session for a small model trained by ``make(params)``."""
    model = SequenceClassifier(28, 8, 10)
    return CudaSession(model, make(model.params), IMAGES, LABELS, max_batch=4, clip=1.0)


def shifted_stepper() -> Any:
    """A GPU stepper asked to train on augmented batches (--shift)."""
    model = SequenceClassifier(28, 8, 10)
    return make_stepper(
        "cuda",
        model,
        optim.Adam(model.params),
        IMAGES,
        LABELS,
        clip=1.0,
        max_loss=100.0,
        max_batch=4,
        tf32=False,
        batch=lambda idx: IMAGES[idx],
    )


# (table row, how the refusal names it, the call)
TRAINER_REFUSALS: list[tuple[str, str | None, Callable[[], Any]]] = [
    ("float64_training", "a float64 model", lambda: with_adam(dtype=np.float64)),
    ("layers", "num_layers=2", lambda: with_adam(num_layers=2)),
    ("reverse", "bidirectional=True", lambda: with_adam(bidirectional=True)),
    (
        "sgd_variants",
        "optim.SGD(nesterov=True, dampening=0)",
        lambda: with_optimizer(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    ),
    (
        "sgd_variants",
        "optim.SGD(nesterov=False, dampening=0.5)",
        lambda: with_optimizer(lambda p: optim.SGD(p, lr=0.1, dampening=0.5)),
    ),
    ("other_optimizers", "optimizer Lion", lambda: with_optimizer(lambda p: Lion(p, 0.1))),
    ("shift", None, shifted_stepper),
]


@pytest.mark.parametrize(
    ("key", "given", "call"),
    TRAINER_REFUSALS,
    ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(TRAINER_REFUSALS)],
)
def test_what_the_gpu_trainer_lacks_is_refused_with_the_tables_message(
    key: str, given: str | None, call: Callable[[], Any]
) -> None:
    with pytest.raises(cuda.GpuUnsupportedError) as refused:
        call()
    assert refused.value.feature.key == key
    feature = cuda.gpu_feature(key)
    assert str(refused.value) == feature.refusal(given, command_line=key == "shift")


@pytest.mark.parametrize(
    ("change", "key", "given"),
    [
        ({"layers": 3}, "layers", "--layers 3"),
        ({"bidirectional": True}, "reverse", "--bidirectional"),
        ({"precision": "bf16"}, "bf16", "--precision bf16"),
        ({"shift": 2}, "shift", "--shift 2"),
    ],
)
def test_a_run_the_gpu_cannot_train_gets_the_tables_refusal_by_flag(
    change: dict[str, Any], key: str, given: str
) -> None:
    cfg = Config(**{"shift": 0, **change})
    want = cuda.gpu_feature(key).refusal(given, command_line=True)
    assert unsupported_on_device(cfg, "cuda") == want
    assert unsupported_on_device(cfg, "cpu") is None
    assert unsupported_on_device(Config(shift=0), "cuda") is None


def test_resuming_a_shifted_cpu_run_on_the_gpu_is_refused_by_the_table(tmp_path: Path) -> None:
    """The run's own settings are checked when its config is read, before any device work:
    a CPU run trained with shifts cannot continue on the GPU."""
    data = small_dataset(tmp_path / "data", np.random.default_rng(0))
    cfg = Config(hidden=4, batch_size=10, iters=1, val_size=10, data_dir=str(data), shift=1)
    with Run.create(cfg, tmp_path / "run") as run:
        assert run.train()
    with pytest.raises(TrainingError) as refused:
        Run.resume(tmp_path / "run", device="cuda")
    assert str(refused.value) == cuda.gpu_feature("shift").refusal("--shift 1", command_line=True)
