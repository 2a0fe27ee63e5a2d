"""Training on the GPU: the whole step (gather, forward, loss, backward, clipping, optimizer)
runs in ``lstmcore._cuda.Trainer`` with everything resident on the device. The host model and
optimizer are brought up to date only when a checkpoint is written (``pull``) and written to
the device on start and resume (``push``).

The device trains lstmcore 0.1's model: one unidirectional layer with ONE bias vector, the sum
of the host's two (torch's ``bias_ih_l0 + bias_hh_l0``); its flat vector holds
:data:`DEVICE_NAMES` in that order (the offsets in train_cuda.cu). So on the GPU the summed
bias takes one optimizer step per update, where the CPU trainer steps both biases (as torch
does)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import cuda, optim
from lstmcore.nn import SequenceClassifier

Array = NDArray[Any]

DEVICE_NAMES = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias", "head.weight", "head.bias"]
BIASES = ("lstm.bias_ih_l0", "lstm.bias_hh_l0")


def device_arrays(host: dict[str, Array], *, combine: str) -> dict[str, Array]:
    """Host arrays (parameters, or one kind of per-parameter optimizer state) under the
    device's names: ``lstm.bias`` is the two biases' ``sum`` (parameters) or ``mean`` (state:
    both biases receive the same gradient, so their moments and momenta agree)."""
    out = {n: host[n] for n in DEVICE_NAMES if n != "lstm.bias"}
    total = host[BIASES[0]] + host[BIASES[1]]
    out["lstm.bias"] = total if combine == "sum" else total / 2
    return out


def split_bias(device_bias: Array, host: dict[str, Array]) -> tuple[Array, Array]:
    """The device's summed bias back into the host's two: the change since the host's values
    is shared equally, as the two biases' own (equal) updates would share it."""
    half = (device_bias - (host[BIASES[0]] + host[BIASES[1]])) / 2
    return host[BIASES[0]] + half, host[BIASES[1]] + half


def param_layout(device: dict[str, Array]) -> list[tuple[str, int]]:
    """[(name, size), ...] in the order the flat device buffer holds them: DEVICE_NAMES'."""
    return [(name, int(device[name].size)) for name in DEVICE_NAMES]


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
        module = cuda.require()
        if model.dtype != np.float32:
            raise ValueError("the CUDA trainer runs in float32")
        expected = {*DEVICE_NAMES, *BIASES} - {"lstm.bias"}
        if set(model.params) != expected:
            raise ValueError(
                "the CUDA trainer runs one unidirectional LSTM layer; the model has "
                f"parameters {sorted(model.params)}"
            )
        # handed across with the flat buffer and checked against the trainer's own layout:
        # a renamed or reordered parameter raises instead of scrambling the weights
        self.layout = param_layout(device_arrays(model.params, combine="sum"))
        self.names = [name for name, _ in self.layout]
        self.sizes = [size for _, size in self.layout]
        if isinstance(opt, optim.Adam):
            kind = "adamw" if opt.decoupled else "adam"
            beta1, beta2, eps, momentum = opt.betas[0], opt.betas[1], opt.eps, 0.0
        elif isinstance(opt, optim.SGD):
            if opt.nesterov or opt.dampening != 0.0:
                raise ValueError("the CUDA trainer's SGD has no Nesterov or dampening")
            kind, beta1, beta2, eps, momentum = "sgd", 0.9, 0.999, 1e-8, opt.momentum
        else:
            raise ValueError(f"the CUDA trainer cannot run {type(opt).__name__}")
        self.kind = kind
        config = model.config
        self.trainer = module.Trainer(
            np.ascontiguousarray(images, dtype=np.float32),
            np.ascontiguousarray(labels, dtype=np.int32),
            self._flat(device_arrays(model.params, combine="sum")),
            self.layout,
            config["hidden_size"],
            config["num_classes"],
            max_batch,
            kind,
            momentum,
            opt.weight_decay,
            beta1,
            beta2,
            eps,
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
        self.trainer.apply(lr)

    def predict(self, images: Array) -> NDArray[np.int64]:
        return np.asarray(
            self.trainer.predict(np.ascontiguousarray(images, dtype=np.float32)), dtype=np.int64
        )

    def pull(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        """Device parameters and optimizer state into the host model and optimizer."""
        host = model.params
        params = self._split(self.trainer.get_params())
        for name in self.names:
            if name != "lstm.bias":
                host[name][...] = params[name].reshape(host[name].shape)
        host[BIASES[0]][...], host[BIASES[1]][...] = split_bias(params["lstm.bias"], host)
        m, v, step = self.trainer.get_state()
        m_by, v_by = self._host_names(self._split(m)), self._host_names(self._split(v))
        state: dict[str, Array] = {}
        for name, p in host.items():
            if self.kind == "sgd":
                if step > 0 and isinstance(opt, optim.SGD) and opt.momentum != 0.0:
                    state[f"momentum:{name}"] = m_by[name].reshape(p.shape).copy()
            else:
                state[f"exp_avg:{name}"] = m_by[name].reshape(p.shape).copy()
                state[f"exp_avg_sq:{name}"] = v_by[name].reshape(p.shape).copy()
        if self.kind != "sgd":
            state["step"] = np.asarray(step, dtype=np.int64)
        opt.load_state_dict(state)

    @staticmethod
    def _host_names(device: dict[str, Array]) -> dict[str, Array]:
        """Per-parameter state under the host's names: both biases take the device bias's."""
        out = {n: a for n, a in device.items() if n != "lstm.bias"}
        out[BIASES[0]], out[BIASES[1]] = device["lstm.bias"], device["lstm.bias"]
        return out

    def push(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        """The host model and optimizer state onto the device (start and resume)."""
        self.trainer.set_params(self._flat(device_arrays(model.params, combine="sum")))
        names = list(model.params)
        zeros = {n: np.zeros_like(p) for n, p in model.params.items()}
        if self.kind == "sgd":
            m = {n: opt.state.get(f"momentum:{n}", zeros[n]) for n in names}
            step = 1 if any(f"momentum:{n}" in opt.state for n in names) else 0
            v = zeros
        else:
            m = {n: opt.state.get(f"exp_avg:{n}", zeros[n]) for n in names}
            v = {n: opt.state.get(f"exp_avg_sq:{n}", zeros[n]) for n in names}
            step = int(opt.state.get("step", 0))
        m, v = device_arrays(m, combine="mean"), device_arrays(v, combine="mean")
        self.trainer.set_state(self._flat(m), self._flat(v), step)
