"""The optimizers step by step against a NumPy transcription of PyTorch's documented rules."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from lstmcore import optim

STEPS = 6


def param_set(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}


def grad_seq(rng: np.random.Generator, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(STEPS)]


def torch_sgd(
    p: np.ndarray,
    grads: list[np.ndarray],
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    wd: float,
) -> np.ndarray:
    """torch.optim.SGD's algorithm, as its documentation states it."""
    p = p.copy()
    b = None
    for t, g in enumerate(grads, start=1):
        if wd != 0:
            g = g + wd * p
        if momentum != 0:
            b = g.copy() if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def torch_adam(
    p: np.ndarray,
    grads: list[np.ndarray],
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    wd: float,
    decoupled: bool,
) -> np.ndarray:
    """torch.optim.Adam / AdamW (amsgrad off), as their documentation states them."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if wd != 0:
            if decoupled:
                p = p - lr * wd * p
            else:
                g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize(
    ("momentum", "dampening", "nesterov", "wd"),
    [
        (0.0, 0.0, False, 0.0),
        (0.9, 0.0, False, 0.0),
        (0.9, 0.3, False, 1e-2),
        (0.8, 0.0, True, 0.0),
        (0.8, 0.0, True, 5e-3),
        (0.0, 0.0, False, 1e-1),
    ],
)
def test_sgd_matches_torch_rules(
    rng: np.random.Generator, momentum: float, dampening: float, nesterov: bool, wd: float
) -> None:
    params = param_set(rng)
    start = {k: v.copy() for k, v in params.items()}
    grads = grad_seq(rng, params)
    opt = optim.SGD(
        params, lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd
    )
    for g in grads:
        opt.step({k: v.copy() for k, v in g.items()})
    for name in params:
        want = torch_sgd(
            start[name], [g[name] for g in grads], 0.05, momentum, dampening, nesterov, wd
        )
        np.testing.assert_allclose(params[name], want, rtol=1e-12, atol=1e-14)
        assert not np.allclose(params[name], start[name])


@pytest.mark.parametrize(
    ("betas", "eps", "wd", "decoupled"),
    [
        ((0.9, 0.999), 1e-8, 0.0, False),
        ((0.8, 0.99), 1e-6, 1e-2, False),
        ((0.9, 0.999), 1e-8, 1e-2, True),
        ((0.5, 0.9), 1e-3, 0.1, True),
    ],
)
def test_adam_matches_torch_rules(
    rng: np.random.Generator, betas: tuple[float, float], eps: float, wd: float, decoupled: bool
) -> None:
    params = param_set(rng)
    start = {k: v.copy() for k, v in params.items()}
    grads = grad_seq(rng, params)
    opt = optim.Adam(params, lr=1e-2, betas=betas, eps=eps, weight_decay=wd, decoupled=decoupled)
    for g in grads:
        opt.step(g)
    assert int(opt.state["step"]) == STEPS
    for name in params:
        want = torch_adam(start[name], [g[name] for g in grads], 1e-2, *betas, eps, wd, decoupled)
        np.testing.assert_allclose(params[name], want, rtol=1e-12, atol=1e-14)


def test_optimizer_state_round_trips_and_is_checked(rng: np.random.Generator) -> None:
    params = param_set(rng)
    opt = optim.Adam(params, lr=1e-2)
    grads = grad_seq(rng, params)
    for g in grads[:3]:
        opt.step(g)
    saved, snapshot = opt.state_dict(), {k: v.copy() for k, v in params.items()}
    for g in grads[3:]:
        opt.step(g)
    after = {k: v.copy() for k, v in params.items()}
    for k in params:
        params[k][...] = snapshot[k]
    other = optim.Adam(params, lr=1e-2)
    other.load_state_dict(saved)
    for g in grads[3:]:
        other.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], after[k])
    bad = dict(saved)
    bad["exp_avg:a"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="exp_avg:a"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing 'step'"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "step"})


def test_clip_grad_norm_matches_torch_rule(rng: np.random.Generator) -> None:
    grads = {"a": rng.standard_normal((4, 4)) * 3, "b": rng.standard_normal(7) * 3}
    original = {k: v.copy() for k, v in grads.items()}
    norm = math.sqrt(sum(float((v**2).sum()) for v in original.values()))
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(norm, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], original[k] * (1.0 / (norm + 1e-6)), rtol=1e-12)
    small = {k: v / (10 * norm) for k, v in original.items()}
    kept = {k: v.copy() for k, v in small.items()}
    optim.clip_grad_norm(small, 1.0)
    for k in small:
        np.testing.assert_array_equal(small[k], kept[k])


def test_schedules() -> None:
    assert optim.lr_at("constant", 0.1, 50, 100) == 0.1
    assert optim.lr_at("cosine", 0.1, 0, 100) == pytest.approx(0.1)
    assert optim.lr_at("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert optim.lr_at("cosine", 0.1, 100, 100) == pytest.approx(0.0, abs=1e-15)
    assert optim.lr_at("cosine", 0.1, 25, 100, min_lr=0.02) == pytest.approx(
        0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert optim.lr_at("step", 0.1, 9, 100, step_size=10) == 0.1
    assert optim.lr_at("step", 0.1, 10, 100, step_size=10) == pytest.approx(0.01)
    assert optim.lr_at("step", 0.1, 25, 100, step_size=10) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.lr_at("linear", 0.1, 0, 10)


def test_bad_hyperparameters_are_rejected() -> None:
    params = {"a": np.zeros(3)}
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(params, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="missing"):
        optim.SGD(params, lr=0.1).step({})


def test_clip_grad_norm_accumulates_float32_gradients_in_float64(
    rng: np.random.Generator,
) -> None:
    """The norm of float32 gradients is their exact float64 norm (as on the GPU), not a
    float32 running sum that loses about 1e-7 relative per addition."""
    grads = {
        "a": rng.standard_normal(300_001).astype(np.float32),
        "b": (rng.standard_normal((64, 65)) * 1e3).astype(np.float32),
    }
    exact = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    got = optim.clip_grad_norm(grads, 1e30)  # no scaling: only the norm is compared
    assert got == pytest.approx(exact, rel=1e-13)


def numpy_adam_step(
    p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, hyper: dict[str, Any]
) -> None:
    """One Adam step in NumPy, operation by operation in the arrays' dtype (the rule the core
    follows; cpp/include/lstmcore/optim.h): p, m, v in place."""
    lr, (beta1, beta2), eps, wd = hyper["lr"], hyper["betas"], hyper["eps"], hyper["wd"]
    if wd != 0.0:
        if hyper["decoupled"]:
            p *= 1.0 - lr * wd
        else:
            g = g + wd * p
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    denom = np.sqrt(v) / math.sqrt(1.0 - beta2**t) + eps
    p -= lr / (1.0 - beta1**t) * (m / denom)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("wd", "decoupled"), [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_core_update_equals_numpy_bit_for_bit(
    rng: np.random.Generator, dtype: Any, wd: float, decoupled: bool
) -> None:
    """The core's one-pass update rounds every operation as NumPy does, in the same order."""
    hyper = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "wd": wd, "decoupled": decoupled}
    shape = (37, 41)  # odd sizes: the vector loop's remainder runs too
    params = {"w": rng.standard_normal(shape).astype(dtype)}
    p, m, v = params["w"].copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)
    opt = optim.Adam(params, lr=3e-3, weight_decay=wd, decoupled=decoupled)
    for t in range(1, STEPS + 1):
        # gradients over many magnitudes, so rounding differences would show
        g = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 3, shape)).astype(dtype)
        opt.step({"w": g})
        numpy_adam_step(p, g, m, v, t, hyper)
    np.testing.assert_array_equal(params["w"], p)
    np.testing.assert_array_equal(opt.state["exp_avg:w"], m)
    np.testing.assert_array_equal(opt.state["exp_avg_sq:w"], v)


def test_adam_updates_a_strided_parameter_in_place(rng: np.random.Generator) -> None:
    base = rng.standard_normal((6, 8))
    view = base[:, ::2]  # not contiguous: updated through a copy, written back
    untouched = base[:, 1::2].copy()
    start = view.copy()
    grads = [{"w": rng.standard_normal(view.shape)} for _ in range(STEPS)]
    raw = np.zeros(grads[0]["w"].nbytes + 1, np.uint8)  # a gradient off its alignment
    grads[0]["w"] = raw[1:].view(np.float64).reshape(view.shape)
    grads[0]["w"][...] = rng.standard_normal(view.shape)
    opt = optim.Adam({"w": view}, lr=1e-2)
    for g in grads:
        opt.step(g)
    want = torch_adam(start, [g["w"] for g in grads], 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    np.testing.assert_allclose(base[:, ::2], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(base[:, 1::2], untouched)


def test_adam_core_rejects_bad_arguments() -> None:
    from lstmcore._native import core

    p = np.zeros(4, np.float32)
    good = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    args = {**good, "decoupled": False, "step": 1}
    g, m, v = np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"m: expected shape \(4,\) float32, got \(5,\) float32"):
        core.adam_update(p, g, np.zeros(5, np.float32), v, **args)
    with pytest.raises(ValueError, match=r"g: expected shape \(4,\) float32, got \(4,\) float64"):
        core.adam_update(p, np.zeros(4), m, v, **args)
    for aliased in ((p, g, p, v), (p, p, m, v), (p, g, m, m)):
        with pytest.raises(ValueError, match="must not share memory"):
            core.adam_update(*aliased, **args)
    wide = np.zeros(8, np.float32)  # overlapping views of one buffer
    with pytest.raises(ValueError, match="must not share memory"):
        core.adam_update(wide[:4], g, wide[2:6], v, **args)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="v: expected a writeable array"):
        core.adam_update(p, g, m, frozen, **args)
    with pytest.raises(ValueError, match="step must be >= 1"):
        core.adam_update(p, g, m, v, **{**args, "step": 0})
    with pytest.raises(ValueError, match="finite"):
        core.adam_update(p, g, m, v, **{**args, "lr": math.nan})
    with pytest.raises(ValueError, match="p: expected dtype float32 or float64"):
        core.adam_update(np.zeros(4, np.float16), g, m, v, **args)
    with pytest.raises(ValueError, match="Adam updates float32 or float64"):
        optim.Adam({"h": np.zeros(3, np.float16)}).step({"h": np.zeros(3, np.float16)})


def test_sum_of_squares_of_strided_and_half_gradients(rng: np.random.Generator) -> None:
    g = rng.standard_normal((50, 30)).astype(np.float32)
    exact = float(np.sum(g.astype(np.float64) ** 2))
    assert optim.clip_grad_norm({"a": g[:, ::3]}, 1e30) == pytest.approx(
        math.sqrt(float(np.sum(g[:, ::3].astype(np.float64) ** 2))), rel=1e-14
    )
    assert optim.clip_grad_norm({"a": g.T}, 1e30) == pytest.approx(math.sqrt(exact), rel=1e-14)
    half = g.astype(np.float16)
    assert optim.clip_grad_norm({"a": half}, 1e30) == pytest.approx(
        math.sqrt(float(np.sum(half.astype(np.float64) ** 2))), rel=1e-14
    )


def test_fortran_ordered_state_loads_and_steps_as_c_ordered(rng: np.random.Generator) -> None:
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    grads = grad_seq(rng, params)
    opt = optim.Adam(params, lr=1e-2)
    opt.step({"w": grads[0]["w"].astype(np.float32)})
    saved = opt.state_dict()
    start = params["w"].copy()
    results = []
    for order in ("C", "F"):
        params["w"][...] = start
        other = optim.Adam(params, lr=1e-2)
        other.load_state_dict({k: np.array(v, order=order) for k, v in saved.items()})
        other.step({"w": grads[1]["w"].astype(np.float32)})
        results.append(params["w"].copy())
    np.testing.assert_array_equal(results[0], results[1])
