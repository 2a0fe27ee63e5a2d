"""SGD and Adam/AdamW with exactly PyTorch's update rules, gradient clipping, lr schedules.

Optimizers update the parameter arrays in place. Their state (momentum buffers, moments, step
count) is exposed as a flat dict of arrays for checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore._native import core as _core

Array = NDArray[Any]
_CORE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["SGD", "Adam", "Optimizer", "clip_grad_norm", "lr_at"]


class Optimizer:
    def __init__(self, params: dict[str, Array], lr: float) -> None:
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.params = params
        self.lr = float(lr)
        self.state: dict[str, Array] = {}

    def step(self, grads: dict[str, Array]) -> None:
        missing = set(self.params) - set(grads)
        if missing:
            raise ValueError(f"grads: missing {sorted(missing)}")
        for name, p in self.params.items():
            self._update(name, p, grads[name])

    def _update(self, name: str, p: Array, g: Array) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Array]:
        return {k: v.copy() for k, v in self.state.items()}

    required: tuple[str, ...] = ()  # state keys every saved state must have

    def check_state(self, state: dict[str, Array]) -> None:
        """ValueError unless every per-parameter array matches its parameter's shape and dtype
        and every required key is there."""
        for key in self.required:
            if key not in state:
                raise ValueError(f"optimizer state: missing {key!r}")
        for key, value in state.items():
            _, _, name = key.partition(":")
            if not name:
                if key not in self.required:
                    raise ValueError(f"optimizer state: unexpected {key!r}")
                continue
            if name not in self.params:
                raise ValueError(f"optimizer state {key}: no parameter {name!r}")
            p = self.params[name]
            if value.shape != p.shape or value.dtype != p.dtype:
                raise ValueError(
                    f"optimizer state {key}: {value.shape} {value.dtype} does not "
                    f"match the parameter's {p.shape} {p.dtype}"
                )

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Replaces the state after :meth:`check_state`; nothing changes if that fails."""
        self.check_state(state)
        # C order: the core's update takes C-contiguous moments
        self.state = {k: np.array(v, copy=True, order="C") for k, v in state.items()}


class SGD(Optimizer):
    """torch.optim.SGD: weight decay, momentum (first step: buf = g), dampening, Nesterov."""

    def __init__(
        self,
        params: dict[str, Array],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def _update(self, name: str, p: Array, g: Array) -> None:
        if self.weight_decay != 0.0:
            g = g + self.weight_decay * p
        if self.momentum != 0.0:
            key = f"momentum:{name}"
            buf = self.state.get(key)
            if buf is None:
                buf = self.state[key] = g.copy()
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient), or AdamW with ``decoupled``
    (weight decay applied to the parameter: p *= 1 - lr * weight_decay)."""

    def __init__(
        self,
        params: dict[str, Array],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.required = ("step",)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas, self.eps = betas, eps
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.state["step"] = np.zeros((), dtype=np.int64)

    def step(self, grads: dict[str, Array]) -> None:
        self.state["step"] = self.state["step"] + 1
        super().step(grads)

    def _moment(self, key: str, p: Array) -> Array:
        """The state array ``key``, zeros on first use (allocated only then)."""
        moment = self.state.get(key)
        if moment is None:
            moment = self.state[key] = np.zeros(p.shape, p.dtype)
        return moment

    def _update(self, name: str, p: Array, g: Array) -> None:
        if p.dtype not in _CORE_DTYPES:
            raise ValueError(f"{name}: Adam updates float32 or float64 parameters, got {p.dtype}")
        # the core updates p, m and v in one pass (NumPy's arithmetic, operation by operation;
        # see cpp/include/lstmcore/optim.h); a parameter that is a strided view is updated
        # through a contiguous copy
        m, v = self._moment(f"exp_avg:{name}", p), self._moment(f"exp_avg_sq:{name}", p)
        work = np.require(p, requirements=("C", "A"))  # p itself unless a copy is needed
        _core.adam_update(
            work,
            np.require(g, p.dtype, ("C", "A")),
            m,
            v,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled=self.decoupled,
            step=int(self.state["step"]),
        )
        if work is not p:
            p[...] = work


def clip_grad_norm(grads: dict[str, Array], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_: scales every gradient by max_norm / (norm + 1e-6) when
    the global L2 norm exceeds max_norm; returns the norm before clipping. The sum of squares
    is accumulated in float64 whatever the gradients' dtype (as the GPU trainer does)."""
    total = math.sqrt(sum(_sum_of_squares(g) for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total


def _sum_of_squares(g: Array) -> float:
    # in float64 (a float32 sum would accumulate in float32), one pass in the core; not
    # through np.dot: numpy's BLAS threads keep spinning after a call and would compete with
    # the core's pool for the cores at every training step
    if g.dtype in _CORE_DTYPES:
        return float(_core.sum_of_squares(np.require(g, requirements=("C", "A"))))
    return float(np.square(g, dtype=np.float64).sum())


def lr_at(
    schedule: str,
    base_lr: float,
    step: int,
    total_steps: int,
    *,
    min_lr: float = 0.0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    ``constant``; ``cosine``: min_lr + (base_lr - min_lr) (1 + cos(pi step / total)) / 2;
    ``step``: base_lr * gamma ** (step // step_size).
    """
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        frac = min(max(step, 0), total_steps) / max(total_steps, 1)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return base_lr * gamma ** (step // max(step_size, 1))
    raise ValueError(f"unknown schedule {schedule!r}: expected constant, cosine or step")
