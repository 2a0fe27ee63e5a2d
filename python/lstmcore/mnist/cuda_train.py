"""Training on the GPU: the whole step (gather, forward, loss, backward, clipping, optimizer)
runs in ``lstmcore._cuda.Trainer`` with everything resident on the device. The host model and
optimizer are brought up to date only when a checkpoint is written (``pull``) and written to
the device on start and resume (``push``).

The device trains one unidirectional LSTM layer (what else it runs and refuses:
:data:`lstmcore.cuda.GPU_SUPPORT`) with torch's parameters, the host model's own
names and order (``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``, ``lstm.bias_ih_l0``,
``lstm.bias_hh_l0``, ``head.weight``, ``head.bias``): the two biases are summed for the core
on the device and both receive the sum's gradient, so clipping, Adam/AdamW/SGD and weight
decay see what the CPU sees. The update itself is the CPU's arithmetic: its scalars are formed
in double on the host exactly as the CPU forms them and every float operation rounds once, as
on the CPU (cuda/optim_cuda.h), so from the same gradients a GPU update gives the CPU's bits
(denormals aside: the CPU flushes them). The gradients themselves differ from the CPU's in the
last bits (cuBLAS and OpenBLAS sum in different orders, about 1e-6 relative in float32), and
those differences compound over steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from lstmcore import cuda, optim
from lstmcore.nn import SequenceClassifier

Array = NDArray[Any]


def param_layout(params: dict[str, Array]) -> list[tuple[str, int]]:
    """[(name, size), ...] in the order the flat device buffer holds them."""
    return [(name, int(value.size)) for name, value in params.items()]


class TrainerOptimizer(NamedTuple):
    """The device optimizer's settings, in the order ``_cuda.Trainer`` takes them (SGD
    ignores the betas and eps, Adam the momentum)."""

    kind: str  # adam, adamw or sgd
    momentum: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float


def trainer_optimizer(model: SequenceClassifier, opt: optim.Optimizer) -> TrainerOptimizer:
    """The trainer's optimizer for ``model`` and ``opt``; :class:`lstmcore.cuda.
    GpuUnsupportedError`, with the GPU table's message, for what the trainer cannot run.
    No device work."""
    if model.dtype != np.float32:
        raise cuda.refuse("float64_training", f"a {model.dtype} model")
    if model.lstm.num_layers > 1:
        raise cuda.refuse("layers", f"num_layers={model.lstm.num_layers}")
    if model.lstm.bidirectional:
        raise cuda.refuse("reverse", "bidirectional=True")
    if isinstance(opt, optim.Adam):
        kind = "adamw" if opt.decoupled else "adam"
        return TrainerOptimizer(kind, 0.0, opt.weight_decay, *opt.betas, opt.eps)
    if not isinstance(opt, optim.SGD):
        raise cuda.refuse("other_optimizers", f"optimizer {type(opt).__name__}")
    if opt.nesterov or opt.dampening != 0.0:
        given = f"optim.SGD(nesterov={opt.nesterov}, dampening={opt.dampening:g})"
        raise cuda.refuse("sgd_variants", given)
    return TrainerOptimizer("sgd", opt.momentum, opt.weight_decay, 0.9, 0.999, 1e-8)


class CudaSession:
    def __init__(
        self,
        model: SequenceClassifier,
        opt: optim.Optimizer,
        images: Array,
        labels: Array,
        *,
        max_batch: int,
        clip: float,
        tf32: bool = False,
    ) -> None:
        settings = trainer_optimizer(model, opt)
        module = cuda.require()
        # handed across with the flat buffer and checked against the trainer's own layout:
        # a renamed or reordered parameter raises instead of scrambling the weights
        self.layout = param_layout(model.params)
        self.names = [name for name, _ in self.layout]
        self.sizes = [size for _, size in self.layout]
        self.shapes = [model.params[name].shape for name in self.names]
        self.kind = settings.kind
        config = model.config
        self.trainer = module.Trainer(
            np.ascontiguousarray(images, dtype=np.float32),
            np.ascontiguousarray(labels, dtype=np.int32),
            self._flat(model.params),
            self.layout,
            config["hidden_size"],
            config["num_classes"],
            max_batch,
            *settings,
            clip,
            tf32,
        )

    def _flat(self, arrays: dict[str, Array]) -> Array:
        return np.concatenate([arrays[n].ravel() for n in self.names]).astype(np.float32)

    def _split(self, flat: Array) -> dict[str, Array]:
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = flat[start : start + size]
            start += size
        return out

    def compute(self, indices: Array) -> tuple[float, int, float]:
        """Gradients of the batch ``indices`` on the device; (mean loss, correct, gradient
        norm). No parameter changes until :meth:`apply`."""
        loss, correct, grad_norm = self.trainer.compute(
            np.ascontiguousarray(indices, dtype=np.int32)
        )
        return float(loss), int(correct), float(grad_norm)

    def apply(self, lr: float) -> None:
        """The optimizer update from the last :meth:`compute`'s gradients."""
        self.trainer.apply(float(lr))

    def grads(self) -> dict[str, Array]:
        """The last :meth:`compute`'s gradients (before clipping), by parameter name, in the
        parameters' shapes."""
        split = self._split(self.trainer.get_grads())
        pairs = zip(self.names, self.shapes, strict=True)
        return {name: split[name].reshape(shape) for name, shape in pairs}

    def predict(self, images: Array) -> NDArray[np.int64]:
        return np.asarray(
            self.trainer.predict(np.ascontiguousarray(images, dtype=np.float32)), dtype=np.int64
        )

    def pull(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        """Device parameters and optimizer state into the host model and optimizer."""
        params = self._split(self.trainer.get_params())
        for name, value in params.items():
            model.params[name][...] = value.reshape(model.params[name].shape)
        m, v, step = self.trainer.get_state()
        m_by, v_by = self._split(m), self._split(v)
        state: dict[str, Array] = {}
        for name in self.names:
            shape = model.params[name].shape
            if self.kind == "sgd":
                if step > 0 and isinstance(opt, optim.SGD) and opt.momentum != 0.0:
                    state[f"momentum:{name}"] = m_by[name].reshape(shape).copy()
            else:
                state[f"exp_avg:{name}"] = m_by[name].reshape(shape).copy()
                state[f"exp_avg_sq:{name}"] = v_by[name].reshape(shape).copy()
        if self.kind != "sgd":
            state["step"] = np.asarray(step, dtype=np.int64)
        opt.load_state_dict(state)

    def push(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        """The host model and optimizer state onto the device (start and resume)."""
        self.trainer.set_params(self._flat(model.params))
        zeros = {n: np.zeros_like(model.params[n]) for n in self.names}
        if self.kind == "sgd":
            m = {n: opt.state.get(f"momentum:{n}", zeros[n]) for n in self.names}
            step = 1 if any(f"momentum:{n}" in opt.state for n in self.names) else 0
            v = zeros
        else:
            m = {n: opt.state.get(f"exp_avg:{n}", zeros[n]) for n in self.names}
            v = {n: opt.state.get(f"exp_avg_sq:{n}", zeros[n]) for n in self.names}
            step = int(opt.state.get("step", 0))
        self.trainer.set_state(self._flat(m), self._flat(v), step)
