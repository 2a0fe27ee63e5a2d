"""One training step on either device, and the one rule that decides whether it is applied.

A stepper computes the loss and gradients of a batch, asks :func:`divergence` whether the run
has diverged, and applies the optimizer update only when it has not. The rule is the same for
both devices and lives only here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from lstmcore import cuda, optim
from lstmcore.nn import SequenceClassifier

Array = NDArray[Any]

__all__ = [
    "CpuStepper",
    "CudaStepper",
    "DeviceSession",
    "Stepper",
    "divergence",
    "make_stepper",
    "nonfinite_gradient",
]


def divergence(loss: float, gradient_problem: str | None, max_loss: float) -> str | None:
    """Why this step must not be applied (the run has diverged), or None. The one rule for
    both devices: a non-finite loss, then a non-finite gradient (``gradient_problem``, as
    each device detects it), then a loss above ``max_loss``."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if gradient_problem is not None:
        return gradient_problem
    if loss > max_loss:
        return f"loss {loss:.4g} exceeds --max-loss {max_loss:g} (diverging)"
    return None


def nonfinite_gradient(grads: dict[str, Array]) -> str | None:
    """The first gradient holding a NaN or Inf, by name, or None."""
    for name, g in grads.items():
        if not np.all(np.isfinite(g)):
            return f"gradient of {name} is not finite"
    return None


class Stepper(Protocol):
    def step(self, idx: Array, lr: float) -> tuple[float, int, str | None]:
        """Trains on the batch ``idx``; (mean loss, correct, why it was not applied or None)."""
        ...

    def sync(self) -> None:
        """Brings the stepper's state into the host model and optimizer."""
        ...

    def predict(self, images: Array) -> NDArray[np.int64]: ...


class CpuStepper:
    """One training step on the CPU core; the host model and optimizer are the state."""

    def __init__(
        self,
        model: SequenceClassifier,
        opt: optim.Optimizer,
        images: Array,
        labels: Array,
        *,
        clip: float,
        max_loss: float,
        batch: Callable[[Array], Array] | None = None,
    ) -> None:
        self.model, self.opt = model, opt
        self.images, self.labels = images, labels
        self.clip, self.max_loss = clip, max_loss
        self.batch = batch  # idx -> the batch's inputs (augmentation), else images[idx]

    def step(self, idx: Array, lr: float) -> tuple[float, int, str | None]:
        self.opt.lr = lr
        # non-finite values are caught just below, by name: no numpy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            x = self.images[idx] if self.batch is None else self.batch(idx)
            loss, correct = self.model.loss_and_grads(x, self.labels[idx])
        grads = self.model.grads
        problem = divergence(loss, nonfinite_gradient(grads), self.max_loss)
        if problem is None:
            if self.clip > 0:
                optim.clip_grad_norm(grads, self.clip)
            self.opt.step(grads)
        return loss, correct, problem

    def sync(self) -> None:
        """Nothing to do: the host arrays are the state."""

    def predict(self, images: Array) -> NDArray[np.int64]:
        return self.model.predict(images)


class DeviceSession(Protocol):
    """What CudaStepper needs of lstmcore.cuda_train.CudaSession."""

    def compute(self, indices: Array) -> tuple[float, int, float]: ...

    def apply(self, lr: float) -> None: ...

    def push(self, model: SequenceClassifier, opt: optim.Optimizer) -> None: ...

    def pull(self, model: SequenceClassifier, opt: optim.Optimizer) -> None: ...

    def predict(self, images: Array) -> NDArray[np.int64]: ...


class CudaStepper:
    """One training step on the GPU (lstmcore.cuda_train): the device computes the gradients,
    :func:`divergence` decides on the host, and only then does the device apply the update.
    sync() brings the device state to the host model and optimizer before they are evaluated
    or saved."""

    def __init__(
        self,
        model: SequenceClassifier,
        opt: optim.Optimizer,
        session: DeviceSession,
        *,
        max_loss: float,
    ) -> None:
        self.model, self.opt, self.session, self.max_loss = model, opt, session, max_loss
        self.session.push(model, opt)

    def step(self, idx: Array, lr: float) -> tuple[float, int, str | None]:
        self.opt.lr = lr
        loss, correct, grad_norm = self.session.compute(idx)
        # the norm (accumulated in float64) is finite exactly when every gradient is
        gradient_problem = None if math.isfinite(grad_norm) else "a gradient is not finite"
        problem = divergence(loss, gradient_problem, self.max_loss)
        if problem is None:
            self.session.apply(lr)
        return loss, correct, problem

    def sync(self) -> None:
        self.session.pull(self.model, self.opt)

    def predict(self, images: Array) -> NDArray[np.int64]:
        """Validation on the device, with the device's parameters."""
        return self.session.predict(images)


def make_stepper(
    device: str,
    model: SequenceClassifier,
    opt: optim.Optimizer,
    images: Array,
    labels: Array,
    *,
    clip: float,
    max_loss: float,
    max_batch: int,
    tf32: bool,
    batch: Callable[[Array], Array] | None = None,
) -> Stepper:
    """``batch``: idx -> the batch's inputs, when they are not ``images[idx]`` (CPU only: the
    GPU keeps the training set on the device)."""
    if device == "cuda":
        if batch is not None:
            raise cuda.refuse("shift", command_line=True)
        from lstmcore.mnist.cuda_train import CudaSession

        session = CudaSession(model, opt, images, labels, max_batch=max_batch, clip=clip, tf32=tf32)
        return CudaStepper(model, opt, session, max_loss=max_loss)
    return CpuStepper(model, opt, images, labels, clip=clip, max_loss=max_loss, batch=batch)
