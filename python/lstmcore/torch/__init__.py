"""PyTorch on lstmcore: :class:`LSTM`, a drop-in ``torch.nn.LSTM`` for the CPU, and
:func:`replace_lstm`, which switches every ``torch.nn.LSTM`` of a model to it in one line.

Needs torch (``pip install 'lstmcore[torch]'``, torch 2.4 or later); ``import lstmcore`` never
imports torch, this module does.

What it is: ``torch.nn.LSTM``'s constructor (and its checks), attributes and parameters (the
same names, shapes, order and initialisation from torch's generator, so ``state_dict`` loads
both ways and a seed gives torch's weights), with a forward that runs each layer and direction
through lstmcore's core as the custom operators of :mod:`lstmcore.torch._ops`
(``torch.ops.lstmcore.lstm`` with its autograd formula, ``lstm_backward``, ``lstm_inference``),
which ``torch.compile`` and ``torch.export`` see as single operators. It is not a subclass of
``torch.nn.LSTM`` (``isinstance(m, torch.nn.LSTM)`` is False): ``torch.compile`` refuses to
trace any module that is one.

- Input: a tensor (T, B, I), (B, T, I) with ``batch_first``, or unbatched (T, I); or a
  ``PackedSequence`` (sorted or not): then the output is a ``PackedSequence`` with the same
  ``batch_sizes`` and indices, and the core runs each sequence only for its own length.
- Dropout between layers in training mode, as torch's: the same ``torch.nn.functional.dropout``
  on the same tensors, drawn from torch's generator (``torch.manual_seed`` gives torch's masks).
- Gradients: input, ``hx`` and every parameter; backward also in eval mode; double backward
  raises (one error naming it). ``torch.autograd.gradcheck`` passes in float64.
- ``torch.autocast("cpu", dtype=torch.bfloat16)``: a float32 layer runs lstmcore's bf16 path
  (GEMM operands rounded to bfloat16, float32 accumulation, cell state and gradients) and
  returns torch's dtypes there: bfloat16 output and states for a tensor input (torch's oneDNN
  path), for a ``PackedSequence`` float32 unless its data or ``hx`` is bfloat16 (torch's packed
  path). A float64 layer ignores autocast, as torch's does.
- ONNX: inside ``torch.onnx.export`` the layer runs torch.nn.LSTM's own forward, so the file
  holds ONNX's LSTM operator exactly as before the switch; a program from ``torch.export``
  (which records lstmcore's operators) converts with ``custom_translation_table=``
  :func:`onnx_translation_table`.
- Threads: the core runs with ``torch.get_num_threads()`` threads and releases the GIL. With
  more than one, start the process with ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP workers
  otherwise spin after each torch op on the cores the core's threads need (several times
  the step on a busy machine).

Not supported, each a ValueError naming it (nothing falls back silently): ``proj_size > 0``;
tensors or parameters off the CPU; dtypes other than float32 and float64 (and float16
autocast). TorchScript (``torch.jit.script``) cannot compile the module (its own error).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, overload

try:
    import torch
except ModuleNotFoundError as err:  # the optional extra is missing
    raise ModuleNotFoundError(
        "lstmcore.torch needs PyTorch 2.4 or later: pip install 'lstmcore[torch]'", name="torch"
    ) from err
import torch.nn.functional as F  # noqa: N812  (torch's own spelling)
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from lstmcore.torch import _ops

__all__ = ["LSTM", "onnx_translation_table", "replace_lstm"]

_DTYPES = (torch.float32, torch.float64)
_Cell = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None"]  # w_ih, w_hh, b_ih, b_hh
_State = tuple[Tensor, Tensor]


def _unsupported(what: str) -> ValueError:
    return ValueError(f"lstmcore.torch.LSTM: {what} is not supported (use torch.nn.LSTM)")


def _check_config(proj_size: Any, device: Any, dtype: Any) -> None:
    """The constructor arguments lstmcore cannot serve, refused before anything is made."""
    if isinstance(proj_size, int) and proj_size > 0:
        raise _unsupported(f"proj_size={proj_size} (an LSTM with projections)")
    if device is not None and torch.device(device).type != "cpu":
        raise _unsupported(f"device={str(device)!r} (lstmcore runs on the CPU)")
    resolved = dtype if dtype is not None else torch.get_default_dtype()
    if resolved not in _DTYPES:
        raise _unsupported(f"dtype={resolved} (float32 and float64 only)")


def _check_arguments(
    input_size: Any, hidden_size: Any, num_layers: Any, bias: Any, batch_first: Any, dropout: Any
) -> None:
    """torch.nn.LSTM's own constructor checks, with its exceptions and messages."""
    number = isinstance(dropout, numbers.Number) and not isinstance(dropout, bool)
    if not number or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            "dropout expects num_layers greater than 1, but got "
            f"dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")


def _cells(m: torch.nn.LSTM | LSTM) -> list[_Cell]:
    """Each (layer, direction)'s parameters of ``m``, read now (``functional_call`` swaps
    them), in torch's order: layer by layer, the forward direction first."""
    cells: list[_Cell] = []
    for layer in range(m.num_layers):
        for direction in range(2 if m.bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            if m.bias:
                cells.append((w_ih, w_hh, getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)))
            else:
                cells.append((w_ih, w_hh, None, None))
    return cells


def _check_supported(
    m: torch.nn.LSTM | LSTM, cells: list[_Cell], tensors: list[Tensor]
) -> torch.dtype:
    """The parameters' one dtype; ValueError naming what lstmcore cannot run."""
    if m.proj_size > 0:
        raise _unsupported(f"proj_size={m.proj_size} (an LSTM with projections)")
    dtype = cells[0][0].dtype
    if dtype not in _DTYPES:
        raise _unsupported(f"parameters of dtype {dtype} (float32 and float64 only)")
    for cell in cells:
        for p in cell:
            if p is None:
                continue
            if p.device.type != "cpu":
                raise _unsupported(f"parameters on {p.device} (lstmcore runs on the CPU)")
            if p.dtype != dtype:
                raise _unsupported(f"parameters of mixed dtypes ({dtype} and {p.dtype})")
    for t in tensors:
        if t.device.type != "cpu":
            raise _unsupported(f"tensors on {t.device} (lstmcore runs on the CPU)")
    return dtype


class LSTM(torch.nn.Module):  # type: ignore[misc, unused-ignore]  # (Any where torch is missing)
    """``torch.nn.LSTM`` on lstmcore's CPU core: same constructor, parameters and forward.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None)``;
    ``forward(input, hx=None) -> (output, (h_n, c_n))`` with torch's shapes: output
    (T, B, D*H) (batch_first: (B, T, D*H); the forward direction's columns first), h_n and c_n
    (num_layers*D, B, H), entry ``layer * D + direction``; D = 2 if bidirectional else 1.

    Parameters as torch's, in its order: ``weight_ih_l{k}`` (4H, I for k = 0, else D*H),
    ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,) (absent with
    ``bias=False``), suffix ``_reverse`` for the second direction; gates i, f, g, o. Initialised
    as torch's (uniform in +-1/sqrt(H), in that order, from torch's generator), so the same
    seed gives torch.nn.LSTM's weights. A ``torch.nn.Module`` of its own rather than a
    subclass of ``torch.nn.LSTM``: ``torch.compile`` refuses to trace into any subclass of
    torch's RNN modules, and traces this one whole.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        _check_config(proj_size, device, dtype)
        _check_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        super().__init__()
        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        gates = 4 * hidden_size
        dirs = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            for direction in range(dirs):
                inputs = input_size if layer == 0 else dirs * hidden_size
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                shapes: dict[str, tuple[int, ...]] = {
                    "weight_ih": (gates, inputs),
                    "weight_hh": (gates, hidden_size),
                }
                if bias:
                    shapes.update({"bias_ih": (gates,), "bias_hh": (gates,)})
                names = [kind + sfx for kind in shapes]
                for name, shape in zip(names, shapes.values(), strict=True):
                    setattr(self, name, torch.nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    @classmethod
    def from_torch(cls, lstm: torch.nn.LSTM) -> LSTM:
        """An LSTM sharing ``lstm``'s parameters (the same ``Parameter`` objects, so an
        optimizer built on them keeps working) and its training mode; nothing is drawn from
        torch's generator. ValueError naming what lstmcore cannot run."""
        cells = _cells(lstm)
        _check_supported(lstm, cells, [])
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        for key in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                    "dropout", "bidirectional", "proj_size"):  # fmt: skip
            setattr(new, key, getattr(lstm, key))
        new._flat_weights_names = list(lstm._flat_weights_names)
        new._all_weights = [list(names) for names in lstm._all_weights]
        for name in new._flat_weights_names:
            setattr(new, name, getattr(lstm, name))
        new.train(lstm.training)
        return new

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's initialisation: every parameter uniform in +-1/sqrt(H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do (torch's packs weights for cuDNN); kept so torch code runs as is."""

    @property
    def all_weights(self) -> list[list[torch.nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    # ---- checks (torch.nn.LSTM's, with its messages) -------------------------------------

    def _check_input(self, input: Tensor, batch_sizes: Tensor | None, dtype: torch.dtype) -> None:
        if input.dtype != dtype and not torch.is_autocast_enabled("cpu"):
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({dtype}). "
                f"Convert input: input.to({dtype}), or convert model: model.to({input.dtype})"
            )
        want = 2 if batch_sizes is not None else 3
        if input.dim() != want:
            raise RuntimeError(f"input must have {want} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}"
            )

    def _check_hidden(self, hx: _State, batch: int) -> None:
        want = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        for k, t in enumerate(hx):
            if t.shape != want:
                raise RuntimeError(f"Expected hidden[{k}] size {want}, got {list(t.shape)}")

    def _precision(self, dtype: torch.dtype) -> str:
        """ "bf16" under CPU autocast to bfloat16 for a float32 layer, else "fp32"."""
        if dtype != torch.float32 or not torch.is_autocast_enabled("cpu"):
            return "fp32"
        fast = torch.get_autocast_dtype("cpu")
        if fast != torch.bfloat16:
            raise _unsupported(f"autocast to {fast} (lstmcore's mixed precision is bfloat16)")
        return "bf16"

    @staticmethod
    def _as_float32(name: str, t: Tensor) -> Tensor:
        """Under autocast: float32 (bfloat16 converts exactly) for the core."""
        if t.dtype == torch.float32:
            return t
        if t.dtype != torch.bfloat16:
            raise _unsupported(f"{name} of dtype {t.dtype} under autocast (float32 or bfloat16)")
        return t.float()

    # ---- forward -------------------------------------------------------------------------

    @overload
    def forward(self, input: Tensor, hx: _State | None = None) -> tuple[Tensor, _State]: ...

    @overload
    def forward(  # type: ignore[overload-cannot-match, unused-ignore]  # (where torch is missing)
        self, input: PackedSequence, hx: _State | None = None
    ) -> tuple[PackedSequence, _State]: ...

    def forward(
        self, input: Tensor | PackedSequence, hx: _State | None = None
    ) -> tuple[Tensor | PackedSequence, _State]:
        if torch.onnx.is_in_onnx_export():
            return self._forward_stock(input, hx)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        return self._forward_padded(input, hx)

    def _forward_padded(self, input: Tensor, hx: _State | None) -> tuple[Tensor, _State]:
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        cells = _cells(self)
        dtype = _check_supported(self, cells, [input, *(hx or ())])
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        self._check_input(input, None, dtype)
        if hx is not None:
            want = 3 if batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            if not batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_hidden(hx, input.size(batch_dim))
        precision = self._precision(dtype)
        if precision == "bf16":
            input = self._as_float32("input", input)
            if hx is not None:
                hx = (self._as_float32("h_0", hx[0]), self._as_float32("c_0", hx[1]))
        x = input.transpose(0, 1) if self.batch_first else input  # time-major view
        y, h_n, c_n = self._layers(x, hx, None, None, cells, precision)
        if precision == "bf16":  # torch's oneDNN path returns all three in bfloat16
            y, h_n, c_n = y.bfloat16(), h_n.bfloat16(), c_n.bfloat16()
        output = y.transpose(0, 1) if self.batch_first else y
        if not batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)

    def _forward_packed(
        self, input: PackedSequence, hx: _State | None
    ) -> tuple[PackedSequence, _State]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        cells = _cells(self)
        dtype = _check_supported(self, cells, [data, *(hx or ())])
        self._check_input(data, batch_sizes, dtype)
        # the batch from a static size where there is one (torch.compile, torch.export)
        batch = sorted_indices.numel() if sorted_indices is not None else int(batch_sizes[0])
        if hx is not None:
            self._check_hidden(hx, batch)
            hx = _permute(hx, sorted_indices)  # rows in the packed (sorted) order
        precision = self._precision(dtype)
        out_dtype = data.dtype
        if precision == "bf16":
            bf16_in = data.dtype == torch.bfloat16 or (
                hx is not None and torch.bfloat16 in (hx[0].dtype, hx[1].dtype)
            )
            out_dtype = torch.bfloat16 if bf16_in else torch.float32  # as torch's packed path
            data = self._as_float32("input", data)
            if hx is not None:
                hx = (self._as_float32("h_0", hx[0]), self._as_float32("c_0", hx[1]))
        steps, rows, width = batch_sizes.numel(), data.shape[0], data.shape[1]
        # the packed rows in the padded (T, B) grid: row n of data is step t of sequence b,
        # sequences sorted longest first, so sequence b runs step t iff b < batch_sizes[t];
        # packed order is t-major, the order of the True cells of that grid
        runs = torch.arange(batch) < batch_sizes.unsqueeze(1)  # (T, B)
        index = torch.argsort((~runs).view(-1).to(torch.uint8), stable=True)[:rows]  # (N,)
        lengths = runs.sum(0)  # (B,) int64, non-increasing: the core sorts nothing
        x = data.new_zeros(steps * batch, width).index_copy(0, index, data)
        y, h_n, c_n = self._layers(
            x.view(steps, batch, width), hx, lengths, index, cells, precision
        )
        out = y.reshape(steps * batch, y.shape[2]).index_select(0, index)
        h_n, c_n = _permute((h_n, c_n), unsorted_indices)
        if out.dtype != out_dtype:
            out, h_n, c_n = out.to(out_dtype), h_n.to(out_dtype), c_n.to(out_dtype)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)

    def _layers(
        self,
        x: Tensor,
        hx: _State | None,
        lengths: Tensor | None,
        index: Tensor | None,
        cells: list[_Cell],
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The stack over time-major x (T, B, I): (y (T, B, D*H), h_n, c_n (L*D, B, H)).
        ``index``: the packed rows' places in the (T*B) grid (PackedSequence input), or None."""
        params = [p for cell in cells for p in cell if p is not None]
        tracked = [x, *params, *(hx or ())]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tracked)
        op = _ops.lstm if needs_grad else _ops.lstm_inference
        dirs = 2 if self.bidirectional else 1
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for layer in range(self.num_layers):
            outs: list[Tensor] = []
            for direction in range(dirs):
                k = layer * dirs + direction
                w_ih, w_hh, b_ih, b_hh = cells[k]
                h0, c0 = (None, None) if hx is None else (hx[0][k], hx[1][k])
                result = op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, direction == 1, precision)
                outs.append(result[0])
                hs.append(result[1])
                cs.append(result[2])
            x = outs[0] if dirs == 1 else torch.cat(outs, dim=2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = self._dropout(x, index)
        return x, torch.stack(hs), torch.stack(cs)

    def _dropout(self, y: Tensor, index: Tensor | None) -> Tensor:
        """torch's inter-layer dropout: on the (T, B, D*H) output, or for a PackedSequence on
        its packed rows (N, D*H), so the masks are the ones torch.nn.LSTM draws."""
        if index is None:
            return F.dropout(y, self.dropout, training=True)
        steps, batch, width = y.shape
        flat = y.reshape(steps * batch, width)
        dropped = F.dropout(flat.index_select(0, index), self.dropout, training=True)
        return flat.new_zeros(flat.shape).index_copy(0, index, dropped).view(steps, batch, width)

    def _forward_stock(
        self, input: Tensor | PackedSequence, hx: _State | None
    ) -> tuple[Tensor | PackedSequence, _State]:
        """torch.nn.LSTM's own computation (``aten::lstm``), which every ONNX exporter turns
        into ONNX's LSTM operator: under ``torch.onnx.export`` the file is the one the stock
        layer gives."""
        flat = [p for cell in _cells(self) for p in cell if p is not None]
        shape = (self.num_layers * (2 if self.bidirectional else 1), 0, self.hidden_size)
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                zeros = data.new_zeros(shape[0], int(batch_sizes[0]), shape[2])
                hx = (zeros, zeros)
            else:
                hx = _permute(hx, sorted_indices)
            out, h_n, c_n = torch.lstm(
                data, batch_sizes, hx, flat, self.bias, self.num_layers, self.dropout,
                self.training, self.bidirectional,
            )  # fmt: skip
            packed = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
            return packed, _permute((h_n, c_n), unsorted_indices)
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            hx = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx is None:
            zeros = input.new_zeros(shape[0], input.size(0 if self.batch_first else 1), shape[2])
            hx = (zeros, zeros)
        out, h_n, c_n = torch.lstm(
            input, hx, flat, self.bias, self.num_layers, self.dropout, self.training,
            self.bidirectional, self.batch_first,
        )  # fmt: skip
        if not batched:
            return out.squeeze(0 if self.batch_first else 1), (h_n.squeeze(1), c_n.squeeze(1))
        return out, (h_n, c_n)


def _permute(hx: _State, order: Tensor | None) -> _State:
    """Both states with their batch rows (dim 1) taken in ``order`` (None: unchanged)."""
    if order is None:
        return hx
    return hx[0].index_select(1, order), hx[1].index_select(1, order)


def replace_lstm(module: torch.nn.Module) -> torch.nn.Module:
    """Replaces every ``torch.nn.LSTM`` in ``module``'s tree by an :class:`LSTM` made with
    :meth:`LSTM.from_torch` (the same ``Parameter`` objects, so their values, ``requires_grad``
    and an optimizer's references and state carry over; nothing is drawn from torch's
    generator), in place, and returns ``module`` (or, when ``module`` itself is a
    ``torch.nn.LSTM``, its replacement). Subclasses of ``torch.nn.LSTM`` are left alone
    (they may have their own forward), and so are hooks registered on the old modules. What
    lstmcore cannot run (``proj_size > 0``, parameters off the CPU or not float32/float64) is
    a ValueError naming the module, raised before anything changes.
    """
    if type(module) is torch.nn.LSTM:
        return LSTM.from_torch(module)
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.LSTM
    ]
    names = {id(m): name for name, m in module.named_modules(remove_duplicate=False)}
    new: dict[int, LSTM] = {}
    for _, _, child in found:
        if id(child) in new:  # one module reached twice (shared): one replacement
            continue
        try:
            new[id(child)] = LSTM.from_torch(child)
        except ValueError as err:
            raise ValueError(f"replace_lstm: {names.get(id(child), '?')}: {err}") from None
    for parent, name, child in found:
        setattr(parent, name, new[id(child)])
    return module


def onnx_translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export`` of a ``torch.export`` program
    that holds lstmcore's operators: each cell becomes ONNX's LSTM operator. Needs
    onnxscript (the dynamo exporter's own dependency)."""
    from lstmcore.torch import _onnx

    return _onnx.translation_table()
