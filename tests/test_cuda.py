"""The CUDA path against the NumPy reference and the CPU trainer. Skipped, with the reason,
where no GPU is usable; the build checks run everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import make_problem, rel_err
from lstmcore import ops, optim
from lstmcore import reference as ref
from lstmcore.nn import SequenceClassifier

AVAILABLE, REASON = lstmcore.cuda_available()
needs_gpu = pytest.mark.skipif(not AVAILABLE, reason=f"CUDA not usable here: {REASON}")
TOL = {np.float64: 1e-10, np.float32: 1e-5}
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 7),
    (4, 1, 6, 7),
    (5, 4, 3, 33),
    (7, 3, 10, 4),
    (784, 2, 1, 8),
    (28, 128, 28, 128),
]


def test_cuda_module_is_built_when_required() -> None:
    """CI builds with LSTMCORE_CUDA=ON: the extension must then exist (compiled and linked)."""
    if os.environ.get("LSTMCORE_CUDA", "").upper() != "ON":
        pytest.skip("LSTMCORE_CUDA=ON is not set: the CUDA module is optional here")
    package = Path(lstmcore.__file__).parent
    assert list(package.glob("_cuda*.so")), f"no _cuda module in {package}"


def test_availability_gives_a_reason() -> None:
    ok, reason = lstmcore.cuda_available()
    assert isinstance(ok, bool) and reason
    if not ok:
        with pytest.raises(RuntimeError, match=reason[:20].replace("(", r"\(")):
            ops.lstm_forward(
                *make_problem(np.random.default_rng(0), 2, 2, 2, 2).inputs(), device="cuda"
            )


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_gpu_matches_reference(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: Any
) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    *out, ctx = ops.lstm_forward(*p.inputs(), device="cuda")
    got = [*out, *ops.lstm_backward(ctx, *p.grads())]
    *want, rctx = ref.lstm_forward(*p.inputs())
    want = [*want, *ref.lstm_backward(rctx, *p.grads())]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        assert rel_err(a, b) <= TOL[dtype]


def cpu_and_gpu_runs(
    optimizer: str, steps: int
) -> tuple[list[float], list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    from lstmcore.cuda_train import CudaSession

    rng = np.random.default_rng(7)
    images = rng.random((256, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 256)
    batches = [rng.choice(256, 32, replace=False) for _ in range(steps)]
    losses: list[list[float]] = [[], []]
    final = []
    for k in range(2):
        model = SequenceClassifier(28, 32, 10, seed=3)
        opt: optim.Optimizer = (
            optim.Adam(model.params, 3e-3)
            if optimizer == "adam"
            else optim.SGD(model.params, 0.05, momentum=0.9)
        )
        session = CudaSession(model, opt, images, labels, max_batch=32, clip=1.0) if k else None
        for idx in batches:
            if session is None:
                loss, _ = model.loss_and_grads(images[idx], labels[idx])
                optim.clip_grad_norm(model.grads, 1.0)
                opt.step(model.grads)
            else:
                loss, _, grad_norm = session.compute(idx)
                assert np.isfinite(loss) and np.isfinite(grad_norm)
                session.apply(opt.lr)
            losses[k].append(loss)
        if session is not None:
            session.pull(model, opt)
        final.append({k2: v.copy() for k2, v in model.params.items()})
    return losses[0], losses[1], final[0], final[1]


@needs_gpu
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gpu_optimizer_steps_match_the_cpu(optimizer: str) -> None:
    cpu_losses, gpu_losses, cpu_params, gpu_params = cpu_and_gpu_runs(optimizer, 3)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-5)
    for name in cpu_params:
        assert rel_err(gpu_params[name], cpu_params[name]) <= 1e-4, name


@needs_gpu
def test_short_gpu_training_run_tracks_the_cpu_run() -> None:
    """50 Adam steps: float32 rounding differs between cuBLAS and OpenBLAS and compounds, so
    losses agree to 1e-2 relative (stated tolerance), and both fall."""
    cpu_losses, gpu_losses, _, _ = cpu_and_gpu_runs("adam", 50)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-2)
    assert np.mean(gpu_losses[-10:]) < np.mean(gpu_losses[:10])


def cuda_module() -> Any:
    """lstmcore._cuda where it was built and loads (no GPU needed), else skip saying why."""
    import importlib

    try:
        return importlib.import_module("lstmcore._cuda")
    except ImportError as err:
        pytest.skip(f"lstmcore._cuda does not load here: {err}")


def test_the_models_parameters_follow_the_trainers_layout() -> None:
    """The host's parameters give exactly the trainer's flat layout (names and sizes, in order,
    torch's two biases included): checked on the host, without a GPU, wherever _cuda loads (CI
    builds it)."""
    from lstmcore.cuda_train import param_layout

    module = cuda_module()
    model = SequenceClassifier(28, 16, 10)
    layout = param_layout(model.params)
    assert layout == module.param_layout(28, 16, 10)
    module.check_layout(layout, 28, 16, 10)


@pytest.mark.parametrize("change", ["reordered", "renamed", "resized", "missing", "extra"])
def test_a_layout_that_differs_from_the_trainers_is_refused(change: str) -> None:
    from lstmcore.cuda_train import param_layout

    module = cuda_module()
    layout = param_layout(SequenceClassifier(28, 16, 10).params)
    if change == "reordered":
        layout[0], layout[1] = layout[1], layout[0]
    elif change == "renamed":
        layout[2] = ("lstm.b", layout[2][1])
    elif change == "resized":
        layout[4] = (layout[4][0], layout[4][1] + 1)
    elif change == "missing":
        layout.pop()
    else:
        layout.append(("head.scale", 1))
    with pytest.raises(ValueError, match="parameter layout: "):
        module.check_layout(layout, 28, 16, 10)
