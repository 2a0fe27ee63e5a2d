"""The one-call classifier forward, its packed-weight cache, and streaming.

SequenceClassifier.logits runs the stack and its head in one call into the core, on weights
packed once; every call compares the weights with those packed and packs again what changed.
The layered path (LSTM.forward for inference, then the head) is what it must equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import make_stack_params, rel_err
from lstmcore import nn, optim
from lstmcore._native import core as _core


def layered_logits(model: nn.SequenceClassifier, images: Any) -> Any:
    """The layer-by-layer inference path: each layer packs its weights per call."""
    x = np.ascontiguousarray(images.transpose(1, 0, 2), dtype=model.dtype)
    _, h_n, _ = model.lstm.forward(x, need_y=False, for_backward=False)
    top = h_n[-model.lstm.directions :]
    return model.head.apply(np.ascontiguousarray(np.concatenate(list(top), axis=1)))


@pytest.mark.parametrize(
    ("layers", "bidirectional", "dtype", "precision"),
    [
        (1, False, np.float32, None),
        (2, True, np.float32, None),
        (3, False, np.float64, None),
        (1, True, np.float64, None),
        (2, False, np.float32, "bf16"),
    ],
)
@pytest.mark.parametrize(("batch", "steps"), [(1, 28), (16, 5), (3, 1), (0, 4)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_call_equals_the_layered_path_bit_for_bit(
    layers: int,
    bidirectional: bool,
    dtype: Any,
    precision: str | None,
    batch: int,
    steps: int,
    threads: int,
    rng: np.random.Generator,
) -> None:
    model = nn.SequenceClassifier(
        6, 9, 4, num_layers=layers, bidirectional=bidirectional, dtype=dtype, seed=2
    )
    model.precision = precision
    images = rng.standard_normal((batch, steps, 6)).astype(dtype)
    lstmcore.set_num_threads(threads)
    try:
        got = model.logits(images)
        want = layered_logits(model, images)
    finally:
        lstmcore.set_num_threads(lstmcore._default_threads())
    assert got.dtype == dtype and got.shape == (batch, 4)
    assert np.array_equal(got, want)


def fresh_logits(model: nn.SequenceClassifier, images: Any) -> Any:
    """What a model never called before gives with the same parameters."""
    twin = nn.SequenceClassifier(
        model.lstm.input_size,
        model.lstm.hidden_size,
        model.head.params["bias"].size,
        num_layers=model.lstm.num_layers,
        bidirectional=model.lstm.bidirectional,
        dtype=model.dtype,
    )
    for name, value in model.params.items():
        twin.params[name][...] = value
    return twin.logits(images)


def test_weights_changed_in_place_are_seen_at_once(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(5, 8, 3, num_layers=2, seed=0)
    images = rng.standard_normal((4, 6, 5)).astype(np.float32)
    before = model.logits(images)
    net = model.lstm._stack()
    packs = net.packs
    model.logits(images)
    assert net.packs == packs  # nothing changed: nothing packed again
    model.lstm.params["weight_hh_l1"][3, 2] += 0.5  # one element, in place
    after = model.logits(images)
    assert not np.array_equal(after, before)
    assert np.array_equal(after, fresh_logits(model, images))
    assert net.packs == packs + 1  # only the changed cell
    model.lstm.params["bias_ih_l0"][0] -= 0.25  # a bias enters the packed sum too
    assert np.array_equal(model.logits(images), fresh_logits(model, images))


def test_load_state_dict_and_optimizer_steps_are_seen_at_once(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(5, 8, 3, bidirectional=True, seed=0)
    images = rng.standard_normal((4, 6, 5)).astype(np.float32)
    model.logits(images)
    model.lstm.load_state_dict(make_stack_params(rng, 5, 8, 1, True, np.float32))
    assert np.array_equal(model.logits(images), fresh_logits(model, images))
    opt = optim.Adam(model.params, 1e-2)
    labels = rng.integers(0, 3, 4)
    model.loss_and_grads(images, labels)
    opt.step(model.grads)
    assert np.array_equal(model.logits(images), fresh_logits(model, images))


def test_a_replaced_parameter_array_is_read(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(5, 8, 3, seed=0)
    images = rng.standard_normal((2, 6, 5)).astype(np.float32)
    model.logits(images)
    model.lstm.params["weight_ih_l0"] = model.lstm.params["weight_ih_l0"] * 2
    model.head.params["weight"] = model.head.params["weight"] + 1
    assert np.array_equal(model.logits(images), fresh_logits(model, images))


def test_another_isa_path_packs_again(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(5, 8, 3, seed=0)
    images = rng.standard_normal((2, 6, 5)).astype(np.float32)
    before = _core.isa()
    want = model.logits(images)
    net = model.lstm._stack()
    packs = net.packs
    try:
        _core.set_isa("generic")
        got = model.logits(images)
    finally:
        _core.set_isa(before)
    assert net.packs == packs + (before != "generic")
    assert rel_err(got, want) <= 1e-5


def test_precision_change_makes_a_new_cache(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(5, 8, 3, seed=0)
    images = rng.standard_normal((2, 6, 5)).astype(np.float32)
    fp32 = model.logits(images)
    model.precision = "bf16"
    assert model.lstm._stack().precision == "bf16"
    assert not np.array_equal(model.logits(images), fp32)
    model.precision = None
    assert np.array_equal(model.logits(images), fp32)


@pytest.mark.parametrize(("layers", "dtype"), [(1, np.float32), (3, np.float64)])
@pytest.mark.parametrize("batch", [1, 5])
def test_stream_step_by_step_equals_the_whole_sequence(
    layers: int, dtype: Any, batch: int, rng: np.random.Generator
) -> None:
    lstm = nn.LSTM(4, 7, layers, dtype=dtype, rng=rng)
    lstm.eval()
    x = rng.standard_normal((9, batch, 4)).astype(dtype)
    h0 = rng.standard_normal((layers, batch, 7)).astype(dtype)
    c0 = rng.standard_normal((layers, batch, 7)).astype(dtype)
    y, h_n, c_n = lstm.forward(x, h0, c0, for_backward=False)
    stream = lstm.stream(batch, h0, c0)
    steps = np.stack([stream.step(x[t]) for t in range(9)])
    assert y is not None
    assert np.array_equal(steps, y)
    assert np.array_equal(stream.h, h_n) and np.array_equal(stream.c, c_n)
    stream.reset()
    assert np.array_equal(stream.step(x[0]), y[0])  # reset: back to h0, c0


def test_stream_refuses_what_it_cannot_do(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        nn.LSTM(3, 4, bidirectional=True).stream(2)
    stream = nn.LSTM(3, 4).stream(2)
    with pytest.raises(ValueError, match=r"x_t: expected \(2, 3\) float32"):
        stream.step(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="h0: expected"):
        nn.LSTM(3, 4).stream(2, h0=np.zeros((1, 3, 4), dtype=np.float32))


def test_stream_sees_weight_changes(rng: np.random.Generator) -> None:
    lstm = nn.LSTM(3, 4, rng=rng)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    first = lstm.stream(2).step(x)
    lstm.params["weight_ih_l0"] *= 2
    again = lstm.stream(2).step(x)
    y, _, _ = lstm.forward(x[None], for_backward=False)
    assert y is not None
    assert not np.array_equal(first, again) and np.array_equal(again, y[0])
