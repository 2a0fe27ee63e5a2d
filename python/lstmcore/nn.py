"""Layers over the core: LSTM, Linear, the sequence classifier and softmax cross-entropy.

Parameters are NumPy arrays held in ``params`` dicts and updated in place by the optimizers;
``grads`` dicts hold the gradients of the last backward pass under the same names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import cuda, ops
from lstmcore import reference as ref
from lstmcore._native import core as _core

Array = NDArray[Any]

__all__ = [
    "LSTM",
    "Linear",
    "SequenceClassifier",
    "float_dtype",
    "softmax_cross_entropy",
    "upgrade_v01_optim_state",
    "upgrade_v01_params",
]


def float_dtype(dtype: Any) -> np.dtype[Any]:
    """float32 or float64 from any spelling NumPy accepts (``np.float32``, ``"float32"``,
    ``"f4"``, ``np.dtype("float32")``, Python's ``float``, ``">f8"``...), in native byte
    order; ValueError for anything else."""
    if dtype is None:  # NumPy would read None as float64; torch users mean "the default"
        raise ValueError("dtype: expected float32 or float64, got None")
    try:
        out: np.dtype[Any] = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}") from err
    if out.kind != "f" or out.itemsize not in (4, 8):
        raise ValueError(f"dtype: expected float32 or float64, got {out}")
    return np.dtype(np.float32 if out.itemsize == 4 else np.float64)  # native byte order


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


class _BufferPool:
    """Sets of inference contexts, one set per call in flight: each call takes a set (or a
    fresh one when every set is busy) and gives it back, so calls from several threads never
    share buffers while steady single-thread use allocates nothing. Only the take and the
    give hold the lock (well under a microsecond a call); the compute runs unlocked."""

    _KEEP = 8  # sets kept for reuse; more concurrent calls allocate and drop theirs

    def __init__(self, cells: int) -> None:
        self._cells = cells
        self._free: list[list[ops.LstmContext | None]] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[list[ops.LstmContext | None]]:
        fresh: list[ops.LstmContext | None] = [None] * self._cells
        with self._lock:
            ctxs = self._free.pop() if self._free else fresh
        try:
            yield ctxs
        finally:
            with self._lock:
                if len(self._free) < self._KEEP:
                    self._free.append(ctxs)


class Stream:
    """One step at a time through a unidirectional :class:`LSTM` (``LSTM.stream``): the state
    is carried between calls, and the packed weights are kept (packed again only when the
    parameters change). ``step(x_t)`` with x_t (B, I) returns y_t (B, H), the top layer's new
    h; a sequence fed step by step gives the whole-sequence forward's y, h_n and c_n.
    Not for several threads at once (the state is one)."""

    def __init__(self, lstm: LSTM, batch: int, h0: Array | None, c0: Array | None) -> None:
        self._lstm = lstm
        self.batch = _positive_int("batch", batch)
        shape = (lstm.num_layers, self.batch, lstm.hidden_size)
        self._h0 = lstm._check_state("h0", h0, self.batch)
        self._c0 = lstm._check_state("c0", c0, self.batch)
        self.h: Array = np.zeros(shape, dtype=lstm.dtype)  # (L, B, H), updated by step
        self.c: Array = np.zeros(shape, dtype=lstm.dtype)
        self.reset()

    def reset(self) -> None:
        """Back to the initial state (h0, c0 as given, or zeros)."""
        self.h[...] = 0 if self._h0 is None else self._h0
        self.c[...] = 0 if self._c0 is None else self._c0

    def step(self, x_t: Array) -> Array:
        lstm = self._lstm
        want = (self.batch, lstm.input_size)
        if not isinstance(x_t, np.ndarray) or x_t.shape != want or x_t.dtype != lstm.dtype:
            got = f"{x_t.shape} {x_t.dtype}" if isinstance(x_t, np.ndarray) else type(x_t)
            raise ValueError(f"x_t: expected {want} {lstm.dtype}, got {got}")
        if not (x_t.flags.c_contiguous and x_t.flags.aligned):
            x_t = np.require(x_t, requirements=("C", "A"))
        # the per-step overhead is what a stream is for: the core compares the weights'
        # contents with those it packed on every call; here only which arrays they are
        y: Array = lstm._stack().step(x_t, self.h, self.c, lstm._cells())
        return y


MAX_CHRONO = 2**53  # chrono's steps are drawn as float64: larger integers are not exact
# inference runs in slices of this many images: memory stays bounded for any batch, and a slice
# of 512 ran about 30% faster per image than one of 1000, whose buffers are fresh memory
PREDICT_BATCH = 512


class LSTM:
    """torch.nn.LSTM on the lstmcore core: ``num_layers`` layers, one or two directions.

    Parameters live in ``params`` under torch's ``state_dict`` names and shapes
    (``weight_ih_l{k}`` (4H, I or D*H), ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (4H,), suffix ``_reverse`` for the second direction; gates i, f, g, o);
    the optimizers update them in place and ``grads`` holds the last backward's gradients
    under the same names. The core gets the two biases summed once per call.

    Initialisation as torch: every parameter uniform in +-1/sqrt(hidden_size), drawn from
    ``rng`` in torch's parameter order. ``forget_bias`` (not in torch) shifts the effective
    forget-gate bias ``bias_ih + bias_hh`` by that amount, half in each vector's forget block
    (so ``forget_bias=1`` means what it meant in lstmcore 0.1's single bias). ``chrono=T``
    (T >= 2; 0: off) is chrono initialisation (Tallec and Ollivier, 2018) for memories of up
    to T steps: each unit's effective forget-gate bias is drawn as log(u), u uniform in
    [1, T - 1], and its input-gate bias set to the negative, half in each vector, in place of
    ``forget_bias``'s shift. A forget gate near 1 alone lets the cell sum its inputs over
    hundreds of steps and saturate (at forget bias 5, 91% of the cells of an MNIST pixel model
    start with |tanh(c)| > 0.99); the input gate's matching bias keeps the sum small.

    ``dropout``: torch's rule: each layer's output but the last's is multiplied by a mask of
    0 and 1/(1-p) while ``training`` (see :meth:`train`, :meth:`eval`), drawn from the layer's
    own generator ``dropout_rng`` (seeded from ``rng``, so a seeded run is reproducible);
    inference (``eval()``, or ``forward(..., for_backward=False)``) never drops.

    ``device="cuda"``: what the GPU path runs is :data:`lstmcore.cuda.GPU_SUPPORT`; anything
    else raises :class:`lstmcore.cuda.GpuUnsupportedError` (a ValueError) with that table's
    message for the feature (there is no silent fallback to the CPU).

    ``precision``: None (the parameters' dtype, bit for bit as without it), ``"fp32"`` (the
    same) or ``"bf16"`` (float32 layers on the CPU: the GEMM operands rounded to bfloat16,
    see :mod:`lstmcore.ops`); parameters, gradients and states stay float32 either way, so the
    attribute can be changed between calls (a bf16-trained layer evaluates in float32).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
        *,
        forget_bias: float = 0.0,
        chrono: int = 0,
        device: str = "cpu",
        precision: str | None = None,
    ) -> None:
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if not 0.0 <= float(dropout) <= 1.0:  # NaN fails too
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        self.dtype = float_dtype(dtype)
        self.bidirectional, self.batch_first = bool(bidirectional), bool(batch_first)
        self.dropout = float(dropout)
        self.directions = 2 if self.bidirectional else 1
        self.device = ops.check_device(device)
        if device == "cuda" and self.num_layers > 1:
            raise cuda.refuse("layers")
        if device == "cuda" and self.bidirectional:
            raise cuda.refuse("reverse", "bidirectional=True")
        self.precision = precision  # checked by the setter
        rng = rng if rng is not None else np.random.default_rng()
        is_int = isinstance(chrono, int | np.integer) and not isinstance(chrono, bool)
        if not is_int or chrono < 0 or chrono == 1 or chrono > MAX_CHRONO:
            raise ValueError(
                f"chrono: expected 0 (off) or an integer in [2, 2**53], got {chrono!r}"
            )
        self.params: dict[str, Array] = self._init_params(rng, float(forget_bias))
        if chrono:
            self._chrono_biases(rng, int(chrono))
        # the dropout masks' own stream: drawing masks never shifts the caller's generator
        self.dropout_rng = np.random.default_rng(int(rng.integers(2**63)))
        self.training = True
        self.grads: dict[str, Array] = {}
        cells = self.num_layers * self.directions
        self._ctx: list[ops.LstmContext | None] = [None] * cells  # kept for backward
        self._inference = _BufferPool(cells)  # inference's buffers, one set per call
        # training state (the contexts, masks and shape that backward reads) is one per layer:
        # forward(for_backward=True) and backward hold this lock, so calls from several
        # threads never tear it (backward differentiates the last training forward)
        self._training_lock = threading.Lock()
        self._stack_net: Any = None  # the core's StackInference, made on first use
        self._cell_names = [
            self._names(k // self.directions, k % self.directions) for k in range(cells)
        ]
        self._cells_cache: list[tuple[Array, Array, Array, Array]] | None = None
        self._masks: list[Array | None] = []  # the dropout masks of the last training forward
        self._shape: tuple[int, int] | None = None  # (T, B) of the last training forward

    @property
    def precision(self) -> str | None:
        """None, "fp32" or "bf16": the arithmetic of the next calls (see the class docstring)."""
        return self._precision

    @precision.setter
    def precision(self, value: str | None) -> None:
        ops.check_precision(value, self.dtype, self.device)
        self._precision = value

    # ---- parameters ----------------------------------------------------------------------

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for name in ref.param_names(self.num_layers, self.bidirectional):
            layer = int(name.split("_l")[1].split("_")[0])
            inp = self.input_size if layer == 0 else self.directions * h
            kind = name.split("_l")[0]
            shapes[name] = {"weight_ih": (4 * h, inp), "weight_hh": (4 * h, h)}.get(kind, (4 * h,))
        return shapes

    def _init_params(self, rng: np.random.Generator, forget_bias: float) -> dict[str, Array]:
        bound = 1.0 / np.sqrt(self.hidden_size)
        h = self.hidden_size
        params = {}
        for name, shape in self._shapes().items():
            params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
            if name.startswith("bias_"):
                params[name][h : 2 * h] += self.dtype.type(forget_bias / 2)
        return params

    def _chrono_biases(self, rng: np.random.Generator, steps: int) -> None:
        """Chrono initialisation (see the class docstring): forget blocks log U(1, steps - 1),
        input blocks their negative, each split evenly between bias_ih and bias_hh. Drawn
        after every other parameter, so the other parameters are those of chrono=0."""
        h = self.hidden_size
        for layer in range(self.num_layers):
            for direction in range(self.directions):
                _, _, name_ih, name_hh = self._names(layer, direction)
                forget = np.log(rng.uniform(1.0, steps - 1.0, h))
                for name in (name_ih, name_hh):
                    self.params[name][:h] = (-forget / 2).astype(self.dtype)
                    self.params[name][h : 2 * h] = (forget / 2).astype(self.dtype)

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters under torch.nn.LSTM's names, in its order."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copies ``state`` (NumPy arrays under torch's names, e.g. from
        ``{k: v.numpy() for k, v in torch_lstm.state_dict().items()}``) into the parameters.
        Every name, shape and dtype is checked first (ValueError naming the key); on error
        nothing changes. The arrays in ``params`` stay the same objects (optimizers keep them)."""
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if missing or unexpected:
            raise ValueError(
                f"state_dict: missing keys {missing}, unexpected keys {unexpected} "
                f"(num_layers={self.num_layers}, bidirectional={self.bidirectional})"
            )
        for name, want in self.params.items():
            got = state[name]
            if not isinstance(got, np.ndarray):
                raise ValueError(
                    f"{name}: expected a numpy array, got {type(got).__name__} "
                    "(convert torch tensors with .numpy())"
                )
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"{name}: expected {want.shape} {want.dtype}, got {got.shape} {got.dtype}"
                )
        for name, value in self.params.items():
            value[...] = state[name]

    def train(self, mode: bool = True) -> LSTM:
        """Training mode (dropout on) or, with ``mode=False``, inference mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> LSTM:
        return self.train(False)

    @property
    def dropout_masks(self) -> list[Array | None]:
        """The masks the last training forward multiplied into each layer's output but the
        last's: time-major (T, B, D*H), or None where nothing was dropped."""
        return list(self._masks)

    # ---- forward and backward ------------------------------------------------------------

    def _check_x(self, x: Any) -> Array:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"x: expected a numpy array, got {type(x).__name__}")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if x.ndim != 3 or x.shape[2] != self.input_size or x.dtype != self.dtype:
            raise ValueError(
                f"x: expected {layout} with I = {self.input_size}, {self.dtype}; "
                f"got {x.shape} {x.dtype}"
            )
        return x.transpose(1, 0, 2) if self.batch_first else x  # time-major view, no copy

    def _check_state(self, name: str, value: Any, batch: int) -> Array | None:
        """h0/c0/dh_n/dc_n: None or (num_layers * D, B, H) in the layer's dtype."""
        if value is None:
            return None
        want = (self.num_layers * self.directions, batch, self.hidden_size)
        if not isinstance(value, np.ndarray) or value.shape != want or value.dtype != self.dtype:
            got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value)
            raise ValueError(f"{name}: expected {want} {self.dtype}, got {got}")
        return value

    def _cells(self) -> list[tuple[Array, Array, Array, Array]]:
        """(w_ih, w_hh, b_ih, b_hh) of every cell, k = layer * D + direction (the arrays
        themselves: the core compares them with what it packed on every call)."""
        params = self.params
        cached = self._cells_cache
        if cached is not None and all(
            params[n] is a
            for names, arrays in zip(self._cell_names, cached, strict=True)
            for n, a in zip(names, arrays, strict=True)
        ):
            return cached
        cells = [(params[a], params[b], params[c], params[d]) for a, b, c, d in self._cell_names]
        self._cells_cache = cells
        return cells

    def _stack(self) -> Any:
        """The core's StackInference for this layer's shape, dtype and precision."""
        precision = ops.check_precision(self.precision, self.dtype, self.device)
        net = self._stack_net
        if net is None or net.precision != precision:
            kind = _core.StackInferenceF32 if self.dtype == np.float32 else _core.StackInferenceF64
            net = kind(
                self.num_layers, self.directions, self.input_size, self.hidden_size, precision
            )
            self._stack_net = net
        return net

    def stream(self, batch: int, h0: Array | None = None, c0: Array | None = None) -> Stream:
        """A :class:`Stream` over ``batch`` sequences fed one step at a time (real-time use:
        keyword spotting, online speech); h0, c0 (num_layers, B, H) or None (zeros). CPU and
        unidirectional only (a reverse direction needs the whole sequence)."""
        if self.bidirectional:
            raise ValueError("stream: a bidirectional LSTM needs the whole sequence")
        if self.device != "cpu":
            raise cuda.refuse("stream")
        return Stream(self, batch, h0, c0)

    def _names(self, layer: int, direction: int) -> tuple[str, str, str, str]:
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        return f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}"

    def _dropout_mask(self, shape: tuple[int, ...]) -> Array:
        p = self.dropout
        keep = self.dropout_rng.random(shape) >= p
        scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)  # torch: p = 1 drops everything
        mask: Array = keep.astype(self.dtype) * self.dtype.type(scale)
        return mask

    def forward(
        self,
        x: Array,
        h0: Array | None = None,
        c0: Array | None = None,
        lengths: Any = None,
        *,
        need_y: bool = True,
        for_backward: bool = True,
    ) -> tuple[Array | None, Array, Array]:
        """x (T, B, I), or (B, T, I) with batch_first; h0, c0 (num_layers*D, B, H) or None
        (zeros); lengths None or (B,) integers in [1, T]. Returns (y, h_n, c_n): y (T, B, D*H)
        (batch_first: (B, T, D*H)), zero past each sequence's end, forward direction's columns
        first; h_n, c_n (num_layers*D, B, H), entry ``layer * D + direction``.

        ``need_y=False`` returns None for y (the top layer skips it). The layer reuses its
        buffers from call to call; ``for_backward=False`` (inference: no dropout) leaves what
        backward needs untouched.

        Threads: inference calls may run from any number of threads at once (each call has
        its own buffers); training calls (``for_backward=True``) and :meth:`backward` take
        turns on a lock, and backward differentiates the last training forward."""
        xt = self._check_x(x)
        steps, batch = xt.shape[0], xt.shape[1]
        h0 = self._check_state("h0", h0, batch)
        c0 = self._check_state("c0", c0, batch)
        if lengths is not None and self.device == "cuda":
            raise cuda.refuse("lengths")
        if not for_backward:
            with self._inference.borrow() as ctxs:
                _, y, h_n, c_n = self._run(xt, h0, c0, lengths, ctxs, need_y, False)
            return y, h_n, c_n
        with self._training_lock:
            masks, y, h_n, c_n = self._run(xt, h0, c0, lengths, self._ctx, need_y, True)
            self._masks, self._shape = masks, (steps, batch)
        return y, h_n, c_n

    def _run(
        self,
        xt: Array,
        h0: Array | None,
        c0: Array | None,
        lengths: Any,
        ctxs: list[ops.LstmContext | None],
        need_y: bool,
        for_backward: bool,
    ) -> tuple[list[Array | None], Array | None, Array, Array]:
        """The layers over time-major ``xt`` with the contexts ``ctxs`` (updated in place);
        returns (dropout masks, y, h_n, c_n)."""
        drop = for_backward and self.training and self.dropout > 0.0
        masks: list[Array | None] = []
        h_n: list[Array] = []
        c_n: list[Array] = []
        inp: Array | None = xt
        for layer in range(self.num_layers):
            top = layer == self.num_layers - 1
            outs = []
            for d in range(self.directions):
                k = layer * self.directions + d
                w_ih, w_hh, b_ih, b_hh = (self.params[n] for n in self._names(layer, d))
                assert inp is not None
                y_d, h_d, c_d, ctxs[k] = ops.lstm_forward(
                    inp,
                    None if h0 is None else h0[k],
                    None if c0 is None else c0[k],
                    w_ih,
                    w_hh,
                    b_ih + b_hh,
                    device=self.device,
                    reuse=ctxs[k],
                    need_y=need_y or not top,
                    reverse=d == 1,
                    lengths=lengths,
                    for_backward=for_backward,
                    precision=self.precision,
                )
                outs.append(y_d)
                h_n.append(h_d)
                c_n.append(c_d)
            inp = self._join(outs)
            if not top:
                assert inp is not None  # every layer below the top returns y
                mask = self._dropout_mask(inp.shape) if drop else None
                masks.append(mask)
                if mask is not None:
                    inp = inp * mask
        y = inp.transpose(1, 0, 2) if inp is not None and self.batch_first else inp
        return masks, y, np.stack(h_n), np.stack(c_n)

    def _join(self, outs: list[Array | None]) -> Array | None:
        """The directions' outputs side by side: (T, B, D*H), forward first."""
        present = [y for y in outs if y is not None]
        if len(present) < len(outs):
            return None
        return present[0] if len(present) == 1 else np.concatenate(present, axis=2)

    def backward(
        self,
        dy: Array | None,
        dh_n: Array | None = None,
        dc_n: Array | None = None,
        *,
        need_dx: bool = True,
    ) -> tuple[Array | None, Array, Array]:
        """Gradients of the last training forward (``for_backward=True``); fills ``grads``;
        returns (dx, dh0, dc0) in the shapes of (x, h0, c0). None gradients mean zeros; dy
        past a sequence's end is ignored. ``need_dx=False`` skips dx (returns None)."""
        with self._training_lock:
            return self._backward(dy, dh_n, dc_n, need_dx)

    def _backward(
        self, dy: Array | None, dh_n: Array | None, dc_n: Array | None, need_dx: bool
    ) -> tuple[Array | None, Array, Array]:
        if self._shape is None:
            raise RuntimeError("LSTM.backward called before forward")
        steps, batch = self._shape
        dirs, h = self.directions, self.hidden_size
        dh_n = self._check_state("dh_n", dh_n, batch)
        dc_n = self._check_state("dc_n", dc_n, batch)
        grad = self._check_dy(dy, steps, batch)
        dh0: list[Array] = [np.empty(0)] * (self.num_layers * dirs)
        dc0: list[Array] = [np.empty(0)] * (self.num_layers * dirs)
        grads: dict[str, Array] = {}
        for layer in reversed(range(self.num_layers)):
            if layer < self.num_layers - 1 and grad is not None:
                mask = self._masks[layer]
                if mask is not None:
                    grad = grad * mask
            dx: Array | None = None
            for d in range(dirs):
                k = layer * dirs + d
                ctx = self._ctx[k]
                assert ctx is not None
                dy_d = None if grad is None else grad[:, :, d * h : (d + 1) * h]
                dx_d, dh0[k], dc0[k], dw_ih, dw_hh, dbias = ops.lstm_backward(
                    ctx,
                    dy_d,
                    None if dh_n is None else dh_n[k],
                    None if dc_n is None else dc_n[k],
                    need_dx=need_dx or layer > 0,
                )
                dx = dx_d if dx is None or dx_d is None else dx + dx_d  # both directions read x
                n_ih, n_hh, n_bih, n_bhh = self._names(layer, d)
                grads[n_ih], grads[n_hh] = dw_ih, dw_hh
                # the biases enter as a sum: equal gradients, separate arrays (clipping scales
                # gradients in place)
                grads[n_bih], grads[n_bhh] = dbias, dbias.copy()
            grad = dx
        self.grads = {name: grads[name] for name in self.params}
        if grad is not None and self.batch_first:
            grad = grad.transpose(1, 0, 2)
        return grad, np.stack(dh0), np.stack(dc0)

    def _check_dy(self, dy: Any, steps: int, batch: int) -> Array | None:
        """dy: None or like y; returned time-major."""
        if dy is None:
            return None
        width = self.directions * self.hidden_size
        want = (batch, steps, width) if self.batch_first else (steps, batch, width)
        if not isinstance(dy, np.ndarray) or dy.shape != want or dy.dtype != self.dtype:
            got = f"{dy.shape} {dy.dtype}" if isinstance(dy, np.ndarray) else type(dy)
            raise ValueError(f"dy: expected {want} {self.dtype}, got {got}")
        return dy.transpose(1, 0, 2) if self.batch_first else dy


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
        """x W^T + b, keeping x for :meth:`backward`."""
        self._x = x
        return self.apply(x)

    def apply(self, x: Array) -> Array:
        """x W^T + b and nothing kept (inference: safe from several threads at once)."""
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


_V01_NAMES = {"lstm.w_ih": "lstm.weight_ih_l0", "lstm.w_hh": "lstm.weight_hh_l0"}
_V01_BIAS = ("lstm.bias_ih_l0", "lstm.bias_hh_l0")


def upgrade_v01_params(params: Mapping[str, Array]) -> dict[str, Array]:
    """A classifier's parameters as lstmcore 0.1 saved them (``lstm.w_ih``, ``lstm.w_hh``,
    ``lstm.bias``: one layer, one direction, one bias) under today's torch names:
    ``bias_ih_l0`` = the old bias, ``bias_hh_l0`` = 0, so the model computes exactly what it
    did. Parameters already under today's names come back unchanged."""
    if "lstm.bias" not in params:
        return dict(params)
    out = {_V01_NAMES.get(name, name): value for name, value in params.items()}
    bias = out.pop("lstm.bias")
    out[_V01_BIAS[0]], out[_V01_BIAS[1]] = bias, np.zeros_like(bias)
    return out


def upgrade_v01_optim_state(state: Mapping[str, Array]) -> dict[str, Array]:
    """The optimizer state of a 0.1 checkpoint (per-parameter keys ``<kind>:<name>``) under
    today's names. Both new biases take the old bias's state: they receive the same gradient
    as the old single bias did, so their moments and momenta are the old ones."""
    out: dict[str, Array] = {}
    for key, value in state.items():
        kind, sep, name = key.partition(":")
        if sep and name == "lstm.bias":
            for new in _V01_BIAS:
                out[f"{kind}:{new}"] = value.copy()
        elif sep:
            out[f"{kind}:{_V01_NAMES.get(name, name)}"] = value
        else:
            out[key] = value
    return out


class SequenceClassifier:
    """An LSTM over the rows of each input; the top layer's final hidden states (both
    directions side by side when bidirectional) into a Linear layer.

    Input (B, T, I) (an MNIST image: T = 28 rows of I = 28 pixels); output logits (B, classes).
    Parameter names: ``lstm.<torch name>`` and ``head.weight``, ``head.bias``.
    """

    def __init__(
        self,
        input_size: int = 28,
        hidden_size: int = 128,
        num_classes: int = 10,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        forget_bias: float = 1.0,
        chrono: int = 0,
        dtype: Any = np.float32,
        seed: int = 0,
        device: str = "cpu",
        precision: str | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.config: dict[str, Any] = {
            "input_size": input_size,
            "hidden_size": hidden_size,
            "num_classes": num_classes,
            "num_layers": num_layers,
            "bidirectional": bidirectional,
            "dropout": dropout,
        }
        self.lstm = LSTM(
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            dropout=dropout,
            dtype=dtype,
            rng=rng,
            forget_bias=forget_bias,
            chrono=chrono,
            device=device,
            precision=precision,
        )
        self.dtype = self.lstm.dtype
        features = self.lstm.directions * hidden_size
        self.head = Linear(features, num_classes, dtype=self.dtype, rng=rng)
        self._training_lock = threading.Lock()  # one loss_and_grads at a time

    @property
    def precision(self) -> str | None:
        """The LSTM's precision (None, "fp32" or "bf16"); the head's small GEMM is float32."""
        return self.lstm.precision

    @precision.setter
    def precision(self, value: str | None) -> None:
        self.lstm.precision = value

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

    def _features(self, h_n: Array) -> Array:
        """(B, D*H): the top layer's final states, forward direction first."""
        top = h_n[-self.lstm.directions :]
        return np.ascontiguousarray(np.concatenate(list(top), axis=1))

    def logits(self, images: Array) -> Array:
        """Inference: no gradients, no dropout; the training buffers are left alone. Safe to
        call from several threads at once. On the CPU the whole stack and the head run in one
        call into the core, on weights packed once and packed again when they change."""
        x = self._time_major(images)
        if self.lstm.device != "cpu":
            _, h_n, _ = self.lstm.forward(x, need_y=False, for_backward=False)
            return self.head.apply(self._features(h_n))
        out: Array = self.lstm._stack().logits(
            x, self.lstm._cells(), self.head.params["weight"], self.head.params["bias"]
        )
        return out

    def loss_and_grads(self, images: Array, labels: NDArray[np.integer[Any]]) -> tuple[float, int]:
        """Forward and backward on one batch; fills ``grads``; returns (mean loss, correct).
        Calls from several threads take turns (the forward and its backward as one)."""
        with self._training_lock:
            return self._loss_and_grads(images, labels)

    def _loss_and_grads(self, images: Array, labels: NDArray[np.integer[Any]]) -> tuple[float, int]:
        _, h_n, _ = self.lstm.forward(self._time_major(images), need_y=False)
        logits = self.head.forward(self._features(h_n))
        loss, dlogits = softmax_cross_entropy(logits, labels)
        dfeatures = self.head.backward(dlogits)
        dh_n = np.zeros_like(h_n)
        for d in range(self.lstm.directions):  # only the top layer's final states were read
            h = self.lstm.hidden_size
            dh_n[len(dh_n) - self.lstm.directions + d] = dfeatures[:, d * h : (d + 1) * h]
        self.lstm.backward(None, dh_n, None, need_dx=False)
        correct = int((logits.argmax(axis=1) == labels).sum())
        return loss, correct

    def predict(self, images: Array, batch_size: int = PREDICT_BATCH) -> NDArray[np.int64]:
        out = [
            self.logits(images[k : k + batch_size]).argmax(axis=1)
            for k in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
