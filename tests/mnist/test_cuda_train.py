"""The GPU trainer (lstmcore.cuda_train) against the CPU trainer and torch.nn.LSTM, and its
layout checks. The layout tests run wherever _cuda loads (no GPU needed); the rest skip
without a GPU, or fail with LSTMCORE_REQUIRE_GPU=1 (see tests/unit/test_cuda.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from helpers import cuda_module, rel_err, skip_or_fail
from lstmcore import cuda_available, optim
from lstmcore.mnist.stepper import CudaStepper
from lstmcore.nn import SequenceClassifier

Array = np.ndarray


# ---- the layout (host only) ------------------------------------------------------------------


def test_the_models_parameters_follow_the_trainers_layout() -> None:
    """The host's parameters give exactly the trainer's flat layout (names and sizes, in order,
    torch's two biases included): checked on the host, without a GPU, wherever _cuda loads (CI
    builds it)."""
    from lstmcore.mnist.cuda_train import param_layout

    module = cuda_module()
    model = SequenceClassifier(28, 16, 10)
    layout = param_layout(model.params)
    assert layout == module.param_layout(28, 16, 10)
    module.check_layout(layout, 28, 16, 10)


@pytest.mark.parametrize("change", ["reordered", "renamed", "resized", "missing", "extra"])
def test_a_layout_that_differs_from_the_trainers_is_refused(change: str) -> None:
    from lstmcore.mnist.cuda_train import param_layout

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


def trainer_args(**change: Any) -> dict[str, Any]:
    """Arguments of _cuda.Trainer for a small model, with `change` applied."""
    model = SequenceClassifier(28, 16, 10, seed=1)
    from lstmcore.mnist.cuda_train import param_layout

    args: dict[str, Any] = {
        "images": np.full((8, 28, 28), 0.5, np.float32),
        "labels": np.arange(8, dtype=np.int32),
        "params": np.concatenate([v.ravel() for v in model.params.values()]),
        "layout": param_layout(model.params),
        "hidden": 16,
        "classes": 10,
        "max_batch": 4,
        "optimizer": "adam",
        "momentum": 0.0,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "clip": 1.0,
    }
    args.update(change)
    return args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer: expected adam, adamw or sgd"),
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"clip": float("nan")}, "clip must be finite"),
        ({"beta2": float("inf")}, "adam: hyperparameters must be finite"),
        ({"labels": np.full(8, 10, np.int32)}, "labels: value 10 outside"),
        ({"hidden": 17}, "params: expected shape"),
    ],
    ids=["optimizer", "max_batch", "clip", "beta2", "labels", "hidden"],
)
def test_a_bad_trainer_configuration_is_refused_before_the_device(
    change: dict[str, Any], message: str
) -> None:
    """Checked on the host before any CUDA call: the same ValueError with or without a GPU."""
    module = cuda_module()
    with pytest.raises(ValueError, match=message):
        module.Trainer(**trainer_args(**change))


def test_a_trainer_without_a_gpu_raises_with_the_cuda_error() -> None:
    """Without a usable device the first CUDA call of the constructor fails: a RuntimeError
    naming the call and CUDA's error (the half-made context is freed by RAII), never a crash."""
    available, _ = cuda_available()
    module = cuda_module()
    if available:
        trainer = module.Trainer(**trainer_args())
        assert trainer.param_count == sum(size for _, size in trainer_args()["layout"])
        return
    with pytest.raises(RuntimeError, match=r"failed: cudaError\w+ \(\d+\): .*\(.+:\d+\)"):
        module.Trainer(**trainer_args())


# ---- CPU and GPU side by side ----------------------------------------------------------------


@dataclass
class Recipe:
    optimizer: str = "adam"  # adam, adamw, sgd
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 1.0
    hidden: int = 32
    count: int = 256
    batch: int = 32
    epochs: int = 1
    seed: int = 7


@dataclass
class Run:
    losses: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    params: dict[str, Array] = field(default_factory=dict)


def data(r: Recipe) -> tuple[Array, Array, list[Array]]:
    rng = np.random.default_rng(r.seed)
    images = rng.random((r.count, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, r.count)
    batches = []
    for _ in range(r.epochs):  # epochs in shuffled order, the last batch short when it is
        order = rng.permutation(r.count)
        batches += [order[k : k + r.batch] for k in range(0, r.count, r.batch)]
    return images, labels, batches


def make_opt(r: Recipe, model: SequenceClassifier) -> optim.Optimizer:
    if r.optimizer == "sgd":
        return optim.SGD(model.params, r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    return optim.Adam(
        model.params, r.lr, weight_decay=r.weight_decay, decoupled=r.optimizer == "adamw"
    )


def cpu_run(r: Recipe) -> Run:
    images, labels, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    opt = make_opt(r, model)
    out = Run()
    for idx in batches:
        loss, correct = model.loss_and_grads(images[idx], labels[idx])
        # clip 0: no clipping; an infinite max norm returns the norm and scales nothing
        norm = optim.clip_grad_norm(model.grads, r.clip if r.clip > 0 else float("inf"))
        opt.step(model.grads)
        out.losses.append(loss)
        out.correct.append(correct)
        out.norms.append(norm)
    out.params = {k: v.copy() for k, v in model.params.items()}
    return out


def gpu_session(r: Recipe, model: SequenceClassifier, opt: optim.Optimizer) -> Any:
    from lstmcore.mnist.cuda_train import CudaSession

    images, labels, _ = data(r)
    return CudaSession(model, opt, images, labels, max_batch=r.batch, clip=r.clip)


def gpu_run(r: Recipe, steps: int | None = None) -> Run:
    _, _, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    opt = make_opt(r, model)
    session = gpu_session(r, model, opt)
    out = Run()
    for idx in batches[:steps]:
        loss, correct, norm = session.compute(idx)
        session.apply(r.lr)
        out.losses.append(loss)
        out.correct.append(correct)
        out.norms.append(norm)
    session.pull(model, opt)
    out.params = {k: v.copy() for k, v in model.params.items()}
    return out


def assert_tracks(gpu_out: Run, cpu_out: Run, loss_rtol: float, param_tol: float) -> None:
    np.testing.assert_allclose(gpu_out.losses, cpu_out.losses, rtol=loss_rtol)
    np.testing.assert_allclose(gpu_out.norms, cpu_out.norms, rtol=max(loss_rtol, 1e-5))
    for name, want in cpu_out.params.items():
        assert rel_err(gpu_out.params[name], want) <= param_tol, name


@pytest.mark.gpu
@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(),
        Recipe(count=100),  # 32, 32, 32 and a short last batch of 4
        Recipe(optimizer="adamw", weight_decay=0.05),
        Recipe(optimizer="adam", weight_decay=1e-3),
        Recipe(optimizer="sgd", lr=0.05),  # no momentum
        Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4),
        Recipe(clip=0.0),
    ],
    ids=["adam", "short-last-batch", "adamw-decay", "adam-l2", "sgd", "sgd-momentum", "noclip"],
)
def test_an_epoch_on_the_gpu_tracks_the_cpu(recipe: Recipe) -> None:
    """One epoch (8 steps, or 4 with a short last batch): the same gradients up to the GEMMs'
    rounding, the same update rule bit for bit (tests/unit/test_cuda.py), so losses agree to 1e-5
    and the parameters to 1e-4 relative."""
    assert_tracks(gpu_run(recipe), cpu_run(recipe), loss_rtol=1e-5, param_tol=1e-4)


@pytest.mark.gpu
def test_a_small_clip_engages_and_is_applied_as_on_the_cpu() -> None:
    recipe = Recipe(clip=0.05)
    gpu_out, cpu_out = gpu_run(recipe), cpu_run(recipe)
    assert min(gpu_out.norms) > recipe.clip  # every step is clipped
    assert_tracks(gpu_out, cpu_out, loss_rtol=1e-5, param_tol=1e-4)


@pytest.mark.gpu
def test_a_longer_gpu_run_tracks_the_cpu_run() -> None:
    """Six epochs (48 Adam steps): float32 rounding differs between cuBLAS and OpenBLAS and
    compounds, so losses agree to 1e-2 relative (stated tolerance), and both fall."""
    recipe = Recipe(epochs=6)
    gpu_out, cpu_out = gpu_run(recipe), cpu_run(recipe)
    np.testing.assert_allclose(gpu_out.losses, cpu_out.losses, rtol=1e-2)
    assert np.mean(gpu_out.losses[-8:]) < np.mean(gpu_out.losses[:8])


@pytest.mark.gpu
def test_the_gpu_gradients_are_the_cpus() -> None:
    r = Recipe()
    images, labels, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    session = gpu_session(r, model, make_opt(r, model))
    loss, correct, norm = session.compute(batches[0])
    want_loss, want_correct = model.loss_and_grads(images[batches[0]], labels[batches[0]])
    assert correct == want_correct
    assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
    grads = session.grads()
    for name, want in model.grads.items():
        assert rel_err(grads[name], want) <= 1e-5, name
    total = np.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in grads.values()))
    assert abs(norm - total) <= 1e-9 * total


@pytest.mark.gpu
def test_twenty_gpu_steps_are_bit_identical_twice() -> None:
    recipe = Recipe(epochs=3)
    a, b = gpu_run(recipe, steps=20), gpu_run(recipe, steps=20)
    assert a.losses == b.losses and a.norms == b.norms and a.correct == b.correct
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resuming_through_pull_and_push_continues_the_same_run(optimizer: str) -> None:
    """Steps 1-3 in one session, pulled into a fresh model and optimizer (as a checkpoint
    does), pushed into a new session, steps 4-8 there: the same bits as 8 steps straight."""
    r = Recipe(optimizer=optimizer, lr=3e-3 if optimizer == "adam" else 0.05, momentum=0.9)
    straight = gpu_run(r)
    _, _, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    opt = make_opt(r, model)
    first = gpu_session(r, model, opt)
    first.push(model, opt)
    for idx in batches[:3]:
        first.compute(idx)
        first.apply(r.lr)
    first.pull(model, opt)
    resumed_model = SequenceClassifier(28, r.hidden, 10, seed=99)  # other weights, replaced
    for name, value in model.params.items():
        resumed_model.params[name][...] = value
    resumed_opt = make_opt(r, resumed_model)
    resumed_opt.load_state_dict(opt.state_dict())
    second = gpu_session(r, resumed_model, resumed_opt)
    second.push(resumed_model, resumed_opt)
    for idx in batches[3:]:
        second.compute(idx)
        second.apply(r.lr)
    second.pull(resumed_model, resumed_opt)
    for name, want in straight.params.items():
        np.testing.assert_array_equal(resumed_model.params[name], want)


@pytest.mark.gpu
def test_gpu_predict_equals_the_cpus() -> None:
    r = Recipe(count=300)
    images, _, _ = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    session = gpu_session(r, model, make_opt(r, model))
    got = session.predict(images)  # 300 images: chunks of 32, the last short
    logits = model.logits(images)
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # near-ties may go either way in float32
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], logits.argmax(axis=1)[clear])
    assert session.predict(images[:0]).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(5, 28, 20), (5, 27, 28), (5, 28)])
def test_gpu_predict_refuses_another_shape(shape: tuple[int, ...]) -> None:
    r = Recipe()
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    session = gpu_session(r, model, make_opt(r, model))
    with pytest.raises(ValueError, match="images: expected"):
        session.predict(np.zeros(shape, np.float32) + 0.5)


@pytest.mark.gpu
def test_a_nan_parameter_leaves_the_parameters_untouched() -> None:
    r = Recipe()
    _, _, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    model.params["lstm.weight_hh_l0"][3, 5] = np.nan
    opt = make_opt(r, model)
    session = gpu_session(r, model, opt)
    stepper = CudaStepper(model, opt, session, max_loss=1e6)
    before = session.trainer.get_params()
    loss, _, problem = stepper.step(batches[0], r.lr)
    assert not np.isfinite(loss) and problem is not None
    np.testing.assert_array_equal(session.trainer.get_params(), before)  # NaN in place too
    assert session.trainer.get_state()[2] == 0  # no step counted


@pytest.mark.gpu
def test_one_step_matches_torch_with_cudnn_tf32_off() -> None:
    """The loss and every gradient of one batch against torch.nn.LSTM + Linear on the same GPU
    with cuDNN's and cuBLAS's TF32 off (cuDNN's RNN default allows TF32)."""
    torch = _import_torch()
    if not torch.cuda.is_available():
        skip_or_fail("torch sees no CUDA device")
    r = Recipe()
    images, labels, batches = data(r)
    model = SequenceClassifier(28, r.hidden, 10, seed=3)
    session = gpu_session(r, model, make_opt(r, model))
    idx = batches[0]
    loss, _, _ = session.compute(idx)
    grads = session.grads()
    with _tf32(torch, False):
        dev = torch.device("cuda")
        lstm = torch.nn.LSTM(28, r.hidden, batch_first=True).to(dev)
        head = torch.nn.Linear(r.hidden, 10).to(dev)
        named = {f"lstm.{k}": v for k, v in lstm.named_parameters()}
        named.update({f"head.{k}": v for k, v in head.named_parameters()})
        with torch.no_grad():
            for name, value in model.params.items():
                named[name].copy_(torch.from_numpy(value))
        x = torch.from_numpy(images[idx]).to(dev)
        y = torch.from_numpy(labels[idx]).to(dev)
        _, (h_n, _) = lstm(x)
        t_loss = torch.nn.functional.cross_entropy(head(h_n[0]), y)
        t_loss.backward()
        assert abs(loss - t_loss.item()) <= 1e-5 * abs(t_loss.item())
        for name, p in named.items():
            assert p.grad is not None
            assert rel_err(grads[name], p.grad.cpu().numpy()) <= 1e-5, name


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as err:
        skip_or_fail(f"torch is not importable: {err}")
    return torch


class _tf32:  # noqa: N801 - used as a context manager
    """TF32 off (or on) for cuDNN's RNNs and cuBLAS's matmuls in torch, restored after; the
    fp32_precision settings where torch has them (2.9+: the allow_tf32 flags warn there)."""

    def __init__(self, torch: Any, on: bool) -> None:
        self.torch, self.mode, self.saved = torch, "tf32" if on else "ieee", None
        self.on = on

    def __enter__(self) -> None:
        b = self.torch.backends
        if hasattr(b.cudnn, "rnn") and hasattr(b.cudnn.rnn, "fp32_precision"):
            self.saved = (b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision)
            b.cudnn.rnn.fp32_precision = self.mode
            b.cuda.matmul.fp32_precision = self.mode
        else:
            self.saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
            b.cudnn.allow_tf32 = self.on
            b.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc: object) -> None:
        b = self.torch.backends
        assert self.saved is not None
        if hasattr(b.cudnn, "rnn") and hasattr(b.cudnn.rnn, "fp32_precision"):
            b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision = self.saved
        else:
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = self.saved
