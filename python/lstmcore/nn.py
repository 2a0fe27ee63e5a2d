"""Layers over the core: LSTM, Linear, the sequence classifier and softmax cross-entropy.

Parameters are NumPy arrays held in ``params`` dicts and updated in place by the optimizers;
``grads`` dicts hold the gradients of the last backward pass under the same names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import ops

Array = NDArray[Any]

__all__ = ["LSTM", "Linear", "SequenceClassifier", "softmax_cross_entropy"]


class LSTM:
    """One LSTM layer (torch.nn.LSTM's gates and weight shapes, one bias vector).

    Initialisation as torch: every weight and the bias uniform in +-1/sqrt(hidden_size); then
    ``forget_bias`` is added to the forget gate's bias block.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        batch_first: bool = False,
        forget_bias: float = 0.0,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
        device: str = "cpu",
    ) -> None:
        if input_size < 1 or hidden_size < 1:
            raise ValueError(
                f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}"
            )
        rng = rng if rng is not None else np.random.default_rng()
        bound = 1.0 / np.sqrt(hidden_size)
        h = hidden_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.batch_first = batch_first
        self.device = device
        self.params: dict[str, Array] = {
            "w_ih": rng.uniform(-bound, bound, (4 * h, input_size)).astype(dtype),
            "w_hh": rng.uniform(-bound, bound, (4 * h, h)).astype(dtype),
            "bias": rng.uniform(-bound, bound, 4 * h).astype(dtype),
        }
        self.params["bias"][h : 2 * h] += dtype(forget_bias)
        self.grads: dict[str, Array] = {}
        self._ctx: ops.LstmContext | None = None  # kept for backward
        self._infer_ctx: ops.LstmContext | None = None  # inference's buffers

    def forward(
        self,
        x: Array,
        h0: Array | None = None,
        c0: Array | None = None,
        *,
        need_y: bool = True,
        for_backward: bool = True,
    ) -> tuple[Array | None, Array, Array]:
        """x: (T, B, I), or (B, T, I) with batch_first. Returns (y, h_n, c_n), y like x (None
        with ``need_y=False``). The layer reuses its buffers from call to call; with
        ``for_backward=False`` (inference) the pass leaves what backward needs untouched."""
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        p = self.params
        reuse = self._ctx if for_backward else self._infer_ctx
        y, h_n, c_n, ctx = ops.lstm_forward(
            x,
            h0,
            c0,
            p["w_ih"],
            p["w_hh"],
            p["bias"],
            device=self.device,
            reuse=reuse,
            need_y=need_y,
        )
        if for_backward:
            self._ctx = ctx
        else:
            self._infer_ctx = ctx
        if y is not None and self.batch_first:
            y = y.transpose(1, 0, 2)
        return y, h_n, c_n

    def backward(
        self,
        dy: Array | None,
        dh_n: Array | None = None,
        dc_n: Array | None = None,
        *,
        need_dx: bool = True,
    ) -> tuple[Array | None, Array, Array]:
        """Gradients of the last forward; fills ``grads``; returns (dx, dh0, dc0)."""
        if self._ctx is None:
            raise RuntimeError("LSTM.backward called before forward")
        if dy is not None and self.batch_first:
            dy = dy.transpose(1, 0, 2)
        dx, dh0, dc0, dw_ih, dw_hh, dbias = ops.lstm_backward(
            self._ctx, dy, dh_n, dc_n, need_dx=need_dx
        )
        self.grads = {"w_ih": dw_ih, "w_hh": dw_hh, "bias": dbias}
        if dx is not None and self.batch_first:
            dx = dx.transpose(1, 0, 2)
        return dx, dh0, dc0


class Linear:
    """y = x W^T + b, initialised as torch.nn.Linear (uniform in +-1/sqrt(in_features))."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng()
        bound = 1.0 / np.sqrt(in_features)
        self.params: dict[str, Array] = {
            "weight": rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype),
            "bias": rng.uniform(-bound, bound, out_features).astype(dtype),
        }
        self.grads: dict[str, Array] = {}
        self._x: Array | None = None

    def forward(self, x: Array) -> Array:
        self._x = x
        out: Array = ops.matmul(x, self.params["weight"], trans_b=True) + self.params["bias"]
        return out

    def backward(self, dy: Array) -> Array:
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        self.grads = {"weight": ops.matmul(dy, self._x, trans_a=True), "bias": dy.sum(axis=0)}
        dx: Array = ops.matmul(dy, self.params["weight"])
        return dx


def softmax_cross_entropy(logits: Array, labels: NDArray[np.integer[Any]]) -> tuple[float, Array]:
    """Mean cross-entropy over the batch and its gradient w.r.t. the logits.

    Stable: log-softmax as ``z - max(z) - log(sum(exp(z - max(z))))``, so no exp overflows.
    """
    n = logits.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    loss = -float(log_probs[np.arange(n), labels].mean()) if n else 0.0
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1.0
    grad /= max(n, 1)
    return loss, np.asarray(grad, dtype=logits.dtype)


class SequenceClassifier:
    """LSTM over the rows of each input, its last hidden state into a Linear layer.

    Input (B, T, I) (an MNIST image: T = 28 rows of I = 28 pixels); output logits (B, classes).
    """

    def __init__(
        self,
        input_size: int = 28,
        hidden_size: int = 128,
        num_classes: int = 10,
        *,
        forget_bias: float = 1.0,
        dtype: Any = np.float32,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        rng = np.random.default_rng(seed)
        self.config = {
            "input_size": input_size,
            "hidden_size": hidden_size,
            "num_classes": num_classes,
        }
        self.lstm = LSTM(
            input_size, hidden_size, forget_bias=forget_bias, dtype=dtype, rng=rng, device=device
        )
        self.head = Linear(hidden_size, num_classes, dtype=dtype, rng=rng)
        self.dtype = np.dtype(dtype)

    @property
    def params(self) -> dict[str, Array]:
        """Every parameter under a stable dotted name (the arrays themselves, not copies)."""
        return {
            **{f"lstm.{k}": v for k, v in self.lstm.params.items()},
            **{f"head.{k}": v for k, v in self.head.params.items()},
        }

    @property
    def grads(self) -> dict[str, Array]:
        return {
            **{f"lstm.{k}": v for k, v in self.lstm.grads.items()},
            **{f"head.{k}": v for k, v in self.head.grads.items()},
        }

    def _time_major(self, images: Array) -> Array:
        if images.ndim != 3:
            raise ValueError(f"images: expected (B, T, I), got shape {images.shape}")
        # one conversion to the core's layout (T, B, I), C-contiguous, in the model's dtype
        return np.ascontiguousarray(images.transpose(1, 0, 2), dtype=self.dtype)

    def logits(self, images: Array) -> Array:
        """Inference: no gradients; the training buffers are left alone."""
        _, h_n, _ = self.lstm.forward(self._time_major(images), need_y=False, for_backward=False)
        return self.head.forward(h_n)

    def loss_and_grads(self, images: Array, labels: NDArray[np.integer[Any]]) -> tuple[float, int]:
        """Forward and backward on one batch; fills ``grads``; returns (mean loss, correct)."""
        _, h_n, _ = self.lstm.forward(self._time_major(images), need_y=False)
        logits = self.head.forward(h_n)
        loss, dlogits = softmax_cross_entropy(logits, labels)
        dh_n = self.head.backward(dlogits)
        self.lstm.backward(None, np.ascontiguousarray(dh_n), None, need_dx=False)
        correct = int((logits.argmax(axis=1) == labels).sum())
        return loss, correct

    def predict(self, images: Array, batch_size: int = 1000) -> NDArray[np.int64]:
        out = [
            self.logits(images[k : k + batch_size]).argmax(axis=1)
            for k in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
