"""ONNX translations of lstmcore's operators for torch's dynamo exporter: each cell (one
layer, one direction) becomes one ONNX ``LSTM`` node (opset 18 ops around it).

ONNX's LSTM wants the gates in the order i, o, f, c where torch (and lstmcore) use i, f, g, o,
weights with a leading direction axis (W (1, 4H, I), R (1, 4H, H)), the two biases side by side
(B (1, 8H)), int32 ``sequence_lens`` and states (1, B, H); its Y is (T, 1, B, H). The gates
are reordered with Slice and Concat, which the exporter folds into the initializers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from onnxscript import opset18

__all__ = ["translation_table"]

op: Any = opset18  # its stubs want typed ONNX values where plain int lists work

_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)  # ONNX's (i, o, f, c) from torch's (i, f, g, o) blocks


def _gates(w: Any, hidden: int) -> Any:
    """(4H,) or (4H, K) in torch's gate order -> (1, 4H) or (1, 4H, K) in ONNX's."""
    blocks = [op.Slice(w, [k * hidden], [(k + 1) * hidden], [0]) for k in _TORCH_TO_ONNX_GATES]
    return op.Unsqueeze(op.Concat(*blocks, axis=0), [0])


def _cell(
    x: Any,
    h0: Any,
    c0: Any,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any,
    b_hh: Any,
    lengths: Any,
    reverse: bool,
    precision: str,
) -> tuple[Any, Any, Any]:
    hidden = int(w_hh.shape[1])
    bias = None
    if b_ih is not None and b_hh is not None:
        bias = op.Concat(_gates(b_ih, hidden), _gates(b_hh, hidden), axis=1)  # (1, 8H)
    y, h_n, c_n = op.LSTM(
        x,
        _gates(w_ih, hidden),
        _gates(w_hh, hidden),
        bias,
        sequence_lens=None if lengths is None else op.Cast(lengths, to=6),  # 6: INT32
        initial_h=None if h0 is None else op.Unsqueeze(h0, [0]),
        initial_c=None if c0 is None else op.Unsqueeze(c0, [0]),
        hidden_size=hidden,
        direction="reverse" if reverse else "forward",
    )
    return op.Squeeze(y, [1]), op.Squeeze(h_n, [0]), op.Squeeze(c_n, [0])


def _cell_training(*args: Any) -> tuple[Any, Any, Any, Any]:
    """The training forward exported for inference: its fourth output (the saved state's
    key) has no meaning outside lstmcore and becomes a constant."""
    y, h_n, c_n = _cell(*args)
    return y, h_n, c_n, op.Constant(value_ints=[0])


def translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    # importing the operators registers them (lstmcore.torch imports them too)
    from lstmcore.torch import _ops  # noqa: F401

    return {
        torch.ops.lstmcore.lstm_inference.default: _cell,
        torch.ops.lstmcore.lstm.default: _cell_training,
    }
