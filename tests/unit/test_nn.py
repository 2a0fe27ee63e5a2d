"""nn.LSTM against the reference stack (every output and gradient), its torch-like contract
(names, init, state_dict, dropout, dtype), and the classifier against finite differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from helpers import make_lengths, numeric_grad, rel_err
from lstmcore import optim
from lstmcore import reference as ref
from lstmcore.nn import LSTM, SequenceClassifier, softmax_cross_entropy, upgrade_v01_params

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def random_lstm_call(
    rng: np.random.Generator, lstm: LSTM, steps: int, batch: int, lengths_kind: str
) -> dict[str, Any]:
    """Inputs and upstream gradients of the layer's shapes, fresh random values."""
    dt = lstm.dtype
    states = (lstm.num_layers * lstm.directions, batch, lstm.hidden_size)
    x_shape = (steps, batch, lstm.input_size)
    y_shape = (steps, batch, lstm.directions * lstm.hidden_size)
    if lstm.batch_first:
        x_shape, y_shape = (batch, steps, x_shape[2]), (batch, steps, y_shape[2])

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape).astype(dt)

    return {
        "x": normal(x_shape),
        "h0": normal(states),
        "c0": normal(states),
        "lengths": make_lengths(rng, lengths_kind, steps, batch),
        "dy": normal(y_shape),
        "dh_n": normal(states),
        "dc_n": normal(states),
    }


CASES = [  # (layers, bidirectional, batch_first, lengths, dropout, (T, B, I, H))
    (1, False, False, "none", 0.0, (5, 4, 3, 6)),
    (1, True, True, "mixed", 0.0, (6, 5, 3, 7)),
    (2, False, True, "mixed", 0.4, (5, 4, 3, 6)),
    (2, True, False, "equal", 0.0, (4, 3, 2, 5)),
    (2, True, True, "mixed", 0.3, (7, 6, 4, 5)),
    (3, True, False, "ones", 0.0, (3, 4, 2, 4)),
    (3, False, False, "mixed", 0.5, (6, 5, 3, 7)),
    (1, True, False, "none", 0.0, (1, 1, 1, 7)),  # T=1, B=1
]


# every combination of layers, directions, batch_first and lengths at one small shape (dropout
# where there is a layer below the top), then the odd shapes
GRID = [
    (layers, bi, bf, lengths, 0.25 if layers > 1 else 0.0, (5, 4, 3, 5))
    for layers in (1, 2, 3)
    for bi in (False, True)
    for bf in (False, True)
    for lengths in ("equal", "mixed", "ones")
]
CASES += GRID


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "lengths_kind", "dropout", "shape"),
    CASES,
    ids=[f"L{c[0]}-{'bi' if c[1] else 'uni'}{'-bf' if c[2] else ''}-{c[3]}"
         f"{'-drop' if c[4] else ''}-T{c[5][0]}B{c[5][1]}H{c[5][3]}" for c in CASES],
)  # fmt: skip
def test_lstm_matches_reference(
    rng: np.random.Generator,
    dtype: Any,
    layers: int,
    bidirectional: bool,
    batch_first: bool,
    lengths_kind: str,
    dropout: float,
    shape: tuple[int, int, int, int],
) -> None:
    steps, batch, inp, hidden = shape
    lstm = LSTM(inp, hidden, layers, bidirectional, batch_first, dropout, dtype, rng)
    a = random_lstm_call(rng, lstm, steps, batch, lengths_kind)
    y, h_n, c_n = lstm.forward(a["x"], a["h0"], a["c0"], a["lengths"])
    dx, dh0, dc0 = lstm.backward(a["dy"], a["dh_n"], a["dc_n"])
    masks = lstm.dropout_masks
    assert len(masks) == layers - 1
    assert all((m is not None) == (dropout > 0) for m in masks)
    want_y, want_h, want_c, ctx = ref.stack_forward(
        a["x"], a["h0"], a["c0"], lstm.params, num_layers=layers, bidirectional=bidirectional,
        batch_first=batch_first, lengths=a["lengths"], dropout_masks=masks,
    )  # fmt: skip
    want_dx, want_dh0, want_dc0, want_grads = ref.stack_backward(ctx, a["dy"], a["dh_n"], a["dc_n"])
    assert list(lstm.grads) == list(lstm.params) == ref.param_names(layers, bidirectional)
    got = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0, **lstm.grads}
    want = {"y": want_y, "h_n": want_h, "c_n": want_c, "dx": want_dx, "dh0": want_dh0,
            "dc0": want_dc0, **want_grads}  # fmt: skip
    for name, value in got.items():
        assert value is not None and value.dtype == dtype, name
        err = rel_err(value, want[name])
        assert err <= TOL[dtype], f"{name}: relative error {err:.2e}"
    if a["lengths"] is not None:  # zero past each end, as torch's pad_packed_sequence
        time_major = y.transpose(1, 0, 2) if batch_first else y
        past_end = np.arange(steps)[:, None] >= a["lengths"][None, :]
        assert np.all(time_major[past_end] == 0)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_batch_first_values_equal_the_time_major_result(
    rng: np.random.Generator, bidirectional: bool
) -> None:
    """batch_first is a transpose of every input and output, values included (issue 10: a
    reshape in place of the transpose of dx passed a shapes-only test)."""
    steps, batch, inp, hidden = 5, 3, 4, 6  # T != B: a reshape cannot pass for a transpose
    seed = int(rng.integers(1 << 30))
    tm = LSTM(
        inp, hidden, 2, bidirectional, False, dtype=np.float64, rng=np.random.default_rng(seed)
    )
    bf = LSTM(
        inp, hidden, 2, bidirectional, True, dtype=np.float64, rng=np.random.default_rng(seed)
    )
    a = random_lstm_call(rng, tm, steps, batch, "mixed")
    y, h_n, c_n = tm.forward(a["x"], a["h0"], a["c0"], a["lengths"])
    dx, dh0, dc0 = tm.backward(a["dy"], a["dh_n"], a["dc_n"])

    def bfirst(t: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(t.transpose(1, 0, 2))

    y_b, h_b, c_b = bf.forward(bfirst(a["x"]), a["h0"], a["c0"], a["lengths"])
    dx_b, dh0_b, dc0_b = bf.backward(bfirst(a["dy"]), a["dh_n"], a["dc_n"])
    assert y_b is not None and dx_b is not None and y is not None and dx is not None
    np.testing.assert_array_equal(y_b, y.transpose(1, 0, 2))
    np.testing.assert_array_equal(dx_b, dx.transpose(1, 0, 2))
    for got, want in [(h_b, h_n), (c_b, c_n), (dh0_b, dh0), (dc0_b, dc0)]:
        np.testing.assert_array_equal(got, want)
    for name in tm.grads:
        np.testing.assert_array_equal(bf.grads[name], tm.grads[name])


@pytest.mark.parametrize(
    "spelling",
    [np.float32, "float32", "f4", np.dtype("float32"), np.float64, "float64", "d", float,
     np.dtype("float64"), ">f8"],
)  # fmt: skip
def test_any_numpy_spelling_of_float32_or_float64_works(spelling: Any) -> None:
    """Issue 10 item 6: nn.LSTM(dtype=np.dtype("float32")) raised TypeError."""
    lstm = LSTM(3, 4, dtype=spelling, forget_bias=1.0)
    want = np.dtype(spelling).newbyteorder("=")
    assert lstm.dtype == want
    assert all(p.dtype == want for p in lstm.params.values())
    y, _, _ = lstm.forward(np.ones((2, 1, 3), dtype=want))
    assert y is not None and y.dtype == want


@pytest.mark.parametrize("bad", [np.int32, "float16", np.complex128, "not-a-dtype", None, object])
def test_other_dtypes_raise_a_clear_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="dtype: expected float32 or float64"):
        LSTM(3, 4, dtype=bad)


def test_parameters_names_shapes_and_init_are_torchs(rng: np.random.Generator) -> None:
    lstm = LSTM(5, 8, 2, True, rng=rng, forget_bias=1.0)
    shapes = {name: p.shape for name, p in lstm.params.items()}
    assert shapes == {
        "weight_ih_l0": (32, 5), "weight_hh_l0": (32, 8), "bias_ih_l0": (32,), "bias_hh_l0": (32,),
        "weight_ih_l0_reverse": (32, 5), "weight_hh_l0_reverse": (32, 8),
        "bias_ih_l0_reverse": (32,), "bias_hh_l0_reverse": (32,),
        "weight_ih_l1": (32, 16), "weight_hh_l1": (32, 8), "bias_ih_l1": (32,), "bias_hh_l1": (32,),
        "weight_ih_l1_reverse": (32, 16), "weight_hh_l1_reverse": (32, 8),
        "bias_ih_l1_reverse": (32,), "bias_hh_l1_reverse": (32,),
    }  # fmt: skip
    bound = 1 / np.sqrt(8)
    for name, p in lstm.params.items():
        assert p.dtype == np.float32
        shifted = p.copy()
        if name.startswith("bias"):  # forget_bias: half in each vector's forget block
            shifted[8:16] -= np.float32(0.5)
        assert np.abs(shifted).max() <= bound * (1 + 1e-6), name
        assert np.abs(shifted).max() > bound / 2, name  # drawn, not zeros
    for sfx in ["_l0", "_l1_reverse"]:
        forget = lstm.params["bias_ih" + sfx][8:16] + lstm.params["bias_hh" + sfx][8:16]
        assert np.all(np.abs(forget - 1.0) <= 2 * bound * (1 + 1e-6))


@pytest.mark.parametrize("steps", [2, 784])
def test_chrono_initialisation(steps: int) -> None:
    """Forget-gate biases log U(1, T-1), input-gate biases their negative, halves in each
    vector; every other parameter as with chrono off (the same generator stream)."""
    plain = LSTM(3, 16, 2, True, rng=np.random.default_rng(4), forget_bias=1.0)
    chrono = LSTM(3, 16, 2, True, rng=np.random.default_rng(4), forget_bias=1.0, chrono=steps)
    h = 16
    for name, p in chrono.params.items():
        if not name.startswith("bias"):
            np.testing.assert_array_equal(p, plain.params[name])
            continue
        np.testing.assert_array_equal(p[2 * h :], plain.params[name][2 * h :])  # g and o
        twin = name.replace("bias_ih", "bias_hh") if "bias_ih" in name else name
        np.testing.assert_array_equal(p[: 2 * h], chrono.params[twin][: 2 * h])  # even halves
        forget = 2 * p[h : 2 * h].astype(np.float64)
        np.testing.assert_allclose(2 * p[:h], -forget, rtol=1e-6)
        assert forget.min() >= 0.0 and forget.max() <= np.log(steps - 1) * (1 + 1e-6)
        if steps > 2:
            assert forget.std() > 0.3  # drawn per unit, not one constant


@pytest.mark.parametrize("bad", [1, -3, True, 2.5, "784", 2**53 + 1, 10**400])
def test_chrono_rejects_what_is_not_off_or_two_steps_or_more(bad: Any) -> None:
    with pytest.raises(ValueError, match="chrono: expected 0 \\(off\\) or an integer in"):
        LSTM(3, 4, chrono=bad)


def test_state_dict_round_trip_and_validation(rng: np.random.Generator) -> None:
    src = LSTM(3, 4, 2, True, dtype=np.float64, rng=rng)
    dst = LSTM(3, 4, 2, True, dtype=np.float64, rng=rng)
    arrays = dict(dst.params)  # the objects the optimizers hold
    sd = src.state_dict()
    assert list(sd) == ref.param_names(2, True)
    assert all(sd[k] is not src.params[k] for k in sd)  # copies
    dst.load_state_dict(sd)
    for name in sd:
        np.testing.assert_array_equal(dst.params[name], src.params[name])
        assert dst.params[name] is arrays[name]
    before = dst.state_dict()
    bad_cases = [
        ({k: v for k, v in sd.items() if k != "bias_hh_l1"}, "bias_hh_l1"),
        ({**sd, "weight_ih_l2": sd["weight_ih_l1"]}, "weight_ih_l2"),
        ({**sd, "weight_hh_l1_reverse": sd["weight_hh_l1_reverse"][:, :3]}, "weight_hh_l1_reverse"),
        ({**sd, "bias_ih_l0": sd["bias_ih_l0"].astype(np.float32)}, "bias_ih_l0"),
        ({**sd, "weight_ih_l0": sd["weight_ih_l0"].tolist()}, "weight_ih_l0"),
    ]  # fmt: skip
    for bad, key in bad_cases:
        # a good first entry that would change: all-or-nothing
        bad = {**bad, "weight_ih_l0_reverse": sd["weight_ih_l0_reverse"] + 1.0}
        with pytest.raises(ValueError, match=key):
            dst.load_state_dict(bad)
        for name, value in dst.params.items():
            np.testing.assert_array_equal(value, before[name])


def test_dropout_masks_are_torchs_rule_reproducible_and_training_only(
    rng: np.random.Generator,
) -> None:
    seed = int(rng.integers(1 << 30))
    p = 0.3
    lstm = LSTM(4, 16, 3, True, dropout=p, dtype=np.float64, rng=np.random.default_rng(seed))
    twin = LSTM(4, 16, 3, True, dropout=p, dtype=np.float64, rng=np.random.default_rng(seed))
    x = rng.standard_normal((20, 30, 4))
    y1, _, _ = lstm.forward(x)
    masks = lstm.dropout_masks
    assert len(masks) == 2
    for mask in masks:
        assert mask is not None and mask.shape == (20, 30, 32)
        assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
        assert abs(np.mean(mask == 0) - p) < 0.05  # 19,200 draws: 5 standard deviations
    assert not np.array_equal(masks[0], masks[1])
    y_twin, _, _ = twin.forward(x)
    np.testing.assert_array_equal(y1, y_twin)  # same seed, same masks
    y2, _, _ = lstm.forward(x)
    assert not np.array_equal(y1, y2)  # fresh masks each training step
    # inference never drops: eval() and for_backward=False both equal a dropout-free layer
    plain = LSTM(4, 16, 3, True, dtype=np.float64, rng=rng)
    plain.load_state_dict(lstm.state_dict())
    want, _, _ = plain.forward(x)
    y_infer, _, _ = lstm.forward(x, for_backward=False)
    np.testing.assert_array_equal(y_infer, want)
    assert lstm.eval() is lstm and not lstm.training
    y_eval, _, _ = lstm.forward(x)
    np.testing.assert_array_equal(y_eval, want)
    assert lstm.dropout_masks == [None, None]
    lstm.train()
    lstm.forward(x)
    assert all(m is not None for m in lstm.dropout_masks)


def test_works_with_the_optimizers_unchanged(rng: np.random.Generator) -> None:
    lstm = LSTM(3, 5, 2, True, dtype=np.float64, rng=rng)
    opt = optim.Adam(lstm.params, lr=0.01)
    before = lstm.state_dict()
    x = rng.standard_normal((4, 2, 3))
    lengths = np.array([4, 2])
    y, _, _ = lstm.forward(x, lengths=lengths)
    assert y is not None
    lstm.backward(np.ones_like(y))
    assert set(lstm.grads) == set(opt.params)
    opt.step(lstm.grads)
    for name, value in lstm.params.items():
        assert value is opt.params[name]
        assert not np.array_equal(value, before[name]), name


def test_errors_name_the_argument(rng: np.random.Generator) -> None:
    lstm = LSTM(3, 4, 2, True, dtype=np.float64, rng=rng)
    x = rng.standard_normal((5, 2, 3))
    with pytest.raises(RuntimeError, match="before forward"):
        lstm.backward(None)
    with pytest.raises(ValueError, match="lengths"):
        lstm.forward(x, lengths=np.array([6, 1]))
    with pytest.raises(ValueError, match="lengths"):
        lstm.forward(x, lengths=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="h0: expected \\(4, 2, 4\\)"):
        lstm.forward(x, h0=np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="x: expected"):
        lstm.forward(x.astype(np.float32))
    with pytest.raises(ValueError, match="x: expected"):
        lstm.forward(x[:, :, :2])
    y, _, _ = lstm.forward(x)
    assert y is not None
    with pytest.raises(ValueError, match="dy: expected"):
        lstm.backward(y[:, :, :4])
    with pytest.raises(ValueError, match="dropout"):
        LSTM(3, 4, 2, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers"):
        LSTM(3, 4, 0)
    with pytest.raises(ValueError, match="device"):
        LSTM(3, 4, device="gpu")


def test_cuda_path_names_each_unsupported_feature() -> None:
    """No silent fallback: each feature the GPU path lacks is refused, by name, before any
    device work (so this runs without a GPU)."""
    with pytest.raises(ValueError, match="num_layers > 1"):
        LSTM(3, 4, 2, device="cuda")
    with pytest.raises(ValueError, match="bidirectional"):
        LSTM(3, 4, bidirectional=True, device="cuda")
    lstm = LSTM(3, 4, device="cuda")
    with pytest.raises(ValueError, match="lengths"):
        lstm.forward(np.zeros((2, 1, 3), np.float32), lengths=np.array([1]))


def test_softmax_cross_entropy_is_stable_and_correct(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    loss, grad = softmax_cross_entropy(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(6), labels])), rel=1e-12)
    want = probs.copy()
    want[np.arange(6), labels] -= 1
    np.testing.assert_allclose(grad, want / 6, rtol=1e-10)
    huge_loss, huge_grad = softmax_cross_entropy(logits + 1e4, labels)  # exp would overflow
    assert huge_loss == pytest.approx(loss, rel=1e-9)
    assert np.all(np.isfinite(huge_grad))


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)], ids=["L1", "L2-bi"])
def test_classifier_gradients_match_finite_differences(
    rng: np.random.Generator, layers: int, bidirectional: bool
) -> None:
    model = SequenceClassifier(
        input_size=5,
        hidden_size=6,
        num_classes=4,
        num_layers=layers,
        bidirectional=bidirectional,
        dtype=np.float64,
        seed=int(rng.integers(1 << 30)),
        forget_bias=0.5,
    )
    images = rng.standard_normal((3, 7, 5))
    labels = rng.integers(0, 4, 3)
    model.loss_and_grads(images, labels)
    analytic = {k: v.copy() for k, v in model.grads.items()}
    assert set(analytic) == set(model.params)

    def loss() -> float:
        return softmax_cross_entropy(model.logits(images), labels)[0]

    for name, p in model.params.items():
        numeric = numeric_grad(loss, p)
        assert np.linalg.norm(numeric) > 0, name
        assert rel_err(analytic[name], numeric) < 1e-6, name


def test_a_v01_classifier_upgrades_to_the_same_model(rng: np.random.Generator) -> None:
    """lstmcore 0.1 saved one bias under lstm.w_ih/lstm.w_hh/lstm.bias; upgraded, the same
    weights compute the same logits."""
    model = SequenceClassifier(6, 5, 3, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    p = model.params
    old = {
        "lstm.w_ih": p["lstm.weight_ih_l0"].copy(),
        "lstm.w_hh": p["lstm.weight_hh_l0"].copy(),
        "lstm.bias": p["lstm.bias_ih_l0"] + p["lstm.bias_hh_l0"],
        "head.weight": p["head.weight"].copy(),
        "head.bias": p["head.bias"].copy(),
    }
    fresh = SequenceClassifier(6, 5, 3, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    upgraded = upgrade_v01_params(old)
    assert set(upgraded) == set(fresh.params)
    assert np.all(upgraded["lstm.bias_hh_l0"] == 0)
    for name, value in upgraded.items():
        fresh.params[name][...] = value
    images = rng.standard_normal((4, 7, 6))
    assert rel_err(fresh.logits(images), model.logits(images)) < 1e-14
    assert upgrade_v01_params(model.params).keys() == model.params.keys()  # already current
