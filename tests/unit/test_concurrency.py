"""Several threads on one model or one context: every call right, or one clear error.

The core releases the GIL while it computes, so two Python threads really do run at once;
a barrier lines the threads up so that their calls overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lstmcore import nn, ops
from lstmcore import reference as ref

THREADS = 6
CALLS = 25


def run_together(work: Callable[[int], Any], threads: int = THREADS) -> list[Any]:
    """Runs work(i) in `threads` threads started together; returns results, re-raises the
    first exception."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_one_classifier_shared_by_threads_answers_every_call_right(
    rng: np.random.Generator, layers: int, bidirectional: bool
) -> None:
    model = nn.SequenceClassifier(
        12, 24, 10, num_layers=layers, bidirectional=bidirectional, seed=3
    )
    # several batches of one shape (the buffers a shape reuses) and one of another shape
    batches = [rng.standard_normal((40, 9, 12)).astype(np.float32) for _ in range(THREADS - 1)]
    batches.append(rng.standard_normal((7, 5, 12)).astype(np.float32))
    expected = [model.logits(b) for b in batches]  # one thread: the right answers

    def work(i: int) -> int:
        wrong = 0
        for _ in range(CALLS):
            wrong += int(not np.array_equal(model.logits(batches[i]), expected[i]))
        return wrong

    assert run_together(work) == [0] * THREADS


def test_inference_beside_training_on_one_classifier(rng: np.random.Generator) -> None:
    """Inference from several threads while another trains: inference reads no training
    buffer (its result moves only with the parameters, which this test keeps fixed)."""
    model = nn.SequenceClassifier(8, 16, 4, seed=1)
    images = rng.standard_normal((32, 6, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 32)
    expected = model.logits(images)

    def work(i: int) -> bool:
        ok = True
        for _ in range(CALLS):
            if i == 0:
                model.loss_and_grads(images, labels)  # gradients only: parameters unchanged
            else:
                ok &= bool(np.array_equal(model.logits(images), expected))
        return ok

    assert all(run_together(work))


def test_training_calls_from_threads_each_get_their_own_loss(rng: np.random.Generator) -> None:
    model = nn.SequenceClassifier(8, 16, 4, seed=2)
    data = [
        (rng.standard_normal((16, 6, 8)).astype(np.float32), rng.integers(0, 4, 16))
        for _ in range(THREADS)
    ]
    expected = [model.loss_and_grads(x, y) for x, y in data]

    def work(i: int) -> list[tuple[float, int]]:
        return [model.loss_and_grads(*data[i]) for _ in range(5)]

    for i, got in enumerate(run_together(work)):
        assert got == [expected[i]] * 5


def test_lstm_inference_threads_match_the_reference(rng: np.random.Generator) -> None:
    """nn.LSTM itself (not only the classifier), float64 against the reference."""
    lstm = nn.LSTM(5, 7, num_layers=2, dtype=np.float64, rng=rng)
    xs = [rng.standard_normal((6, 3 + i % 2, 5)) for i in range(THREADS)]
    names = ref.param_names(2, False)
    params = {n: lstm.params[n] for n in names}
    want = [ref.stack_forward(x, None, None, params, num_layers=2)[0] for x in xs]

    def work(i: int) -> float:
        worst = 0.0
        for _ in range(CALLS):
            y, _, _ = lstm.forward(xs[i], for_backward=False)
            assert y is not None
            worst = max(worst, float(np.linalg.norm(y - want[i]) / np.linalg.norm(want[i])))
        return worst

    assert max(run_together(work)) < 1e-10


def _context(rng: np.random.Generator, steps: int = 400) -> tuple[Any, list[Any]]:
    x = rng.standard_normal((steps, 64, 32)).astype(np.float32)
    w_ih = rng.standard_normal((256, 32)).astype(np.float32) * 0.1
    w_hh = rng.standard_normal((256, 64)).astype(np.float32) * 0.1
    bias = rng.standard_normal(256).astype(np.float32) * 0.1
    args = [x, None, None, w_ih, w_hh, bias]
    return ops.lstm_forward(*args)[3], args


def test_context_used_by_two_threads_at_once_raises_not_crashes(
    rng: np.random.Generator,
) -> None:
    """Backward in one thread while another overwrites the same context (reuse=): the
    second call raises the misuse; it crashed the process before."""
    ctx, args = _context(rng)
    dh_n = np.ones((64, 64), dtype=np.float32)
    misuse: list[str] = []

    def work(i: int) -> None:
        for _ in range(10):
            try:
                if i % 2:
                    ops.lstm_forward(*args, reuse=ctx)
                else:
                    ops.lstm_backward(ctx, None, dh_n, None)
            except ValueError as err:
                misuse.append(str(err))

    run_together(work, threads=4)
    assert misuse, "the calls never overlapped: the test proves nothing"
    assert all("in use by another thread" in m or "stale" in m for m in misuse)
    assert any("in use by another thread" in m for m in misuse)


def test_reuse_makes_the_old_context_stale(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 4, 3))
    w_ih, w_hh, bias = rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), np.zeros(8)
    first = ops.lstm_forward(x, None, None, w_ih, w_hh, bias, lengths=np.array([5, 1, 3, 2]))
    ctx1 = first[3]
    lengths2 = np.array([2, 5, 1, 4])
    *_, ctx2 = ops.lstm_forward(x, None, None, w_ih, w_hh, bias, lengths=lengths2, reuse=ctx1)
    dh_n = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="ctx: stale"):
        ops.lstm_backward(ctx1, None, dh_n, None)
    # the returned context is right: against the reference with the second lengths
    got = ops.lstm_backward(ctx2, None, dh_n, None)
    r = ref.lstm_forward(x, None, None, w_ih, w_hh, bias, lengths=lengths2)
    want = ref.lstm_backward(r[3], None, dh_n, None)
    for g, w in zip(got, want, strict=True):
        assert np.linalg.norm(g - w) <= 1e-10 * max(np.linalg.norm(w), 1.0)


@pytest.mark.parametrize("name", ["x", "w_ih", "w_hh"])
def test_input_resized_in_place_after_forward_is_refused(
    rng: np.random.Generator, name: str
) -> None:
    x = rng.standard_normal((4, 3, 5))
    w_ih, w_hh, bias = rng.standard_normal((12, 5)), rng.standard_normal((12, 3)), np.zeros(12)
    arrays = {"x": x, "w_ih": w_ih, "w_hh": w_hh}
    ctx = ops.lstm_forward(x, None, None, w_ih, w_hh, bias)[3]
    grown = list(arrays[name].shape)
    grown[0] *= 50  # large enough that the allocator moves the data
    arrays[name].resize(tuple(grown), refcheck=False)
    with pytest.raises(ValueError, match=f"{name}: was resized or reallocated"):
        ops.lstm_backward(ctx, None, np.ones((3, 3)), None)
