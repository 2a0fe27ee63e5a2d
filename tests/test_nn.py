"""The classifier's loss and gradients against finite differences; the layers' contracts."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import numeric_grad, rel_err
from lstmcore import reference as ref
from lstmcore.nn import LSTM, SequenceClassifier, softmax_cross_entropy


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


def test_classifier_gradients_match_finite_differences(rng: np.random.Generator) -> None:
    model = SequenceClassifier(
        input_size=5,
        hidden_size=6,
        num_classes=4,
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


def test_lstm_layer_batch_first_matches_reference(rng: np.random.Generator) -> None:
    layer = LSTM(4, 5, batch_first=True, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 6, 4))  # (B, T, I)
    y, h_n, _ = layer.forward(x)
    p = layer.params
    want_y, want_h, _, _ = ref.lstm_forward(
        x.transpose(1, 0, 2), None, None, p["w_ih"], p["w_hh"], p["bias"]
    )
    assert y.shape == (3, 6, 5)
    assert rel_err(y, want_y.transpose(1, 0, 2)) < 1e-12
    assert rel_err(h_n, want_h) < 1e-12
    dy = rng.standard_normal(y.shape)
    dx, _, _ = layer.backward(dy)
    assert dx is not None and dx.shape == x.shape


def test_initialisation_is_torch_like_with_forget_bias(rng: np.random.Generator) -> None:
    layer = LSTM(28, 128, forget_bias=1.0, rng=rng)
    bound = 1 / np.sqrt(128)
    assert np.abs(layer.params["w_hh"]).max() <= bound
    assert np.abs(layer.params["w_ih"]).max() <= bound
    forget = layer.params["bias"][128:256]
    assert np.all((forget >= 1 - bound) & (forget <= 1 + bound))
    assert layer.params["w_hh"].dtype == np.float32
    with pytest.raises(RuntimeError, match="before forward"):
        LSTM(2, 3).backward(None)
