"""Training augmentation: random whole-pixel shifts of MNIST images (``train --shift``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore._native import core as _core

Array = NDArray[Any]

__all__ = ["random_shift", "shifted_batch"]


def random_shift(images: Array, max_shift: int, rng: np.random.Generator) -> Array:
    """Training augmentation: each image (B, rows, cols), float32 or float64, moved by its own
    random whole-pixel offset in [-max_shift, max_shift] along each axis, the uncovered edge
    filled with 0 (MNIST's background). MNIST centres digits by their centre of mass, so small
    shifts are the errors a real digit's preparation makes. Returns ``images`` itself when
    ``max_shift`` <= 0, else :func:`shifted_batch` of every image."""
    if max_shift <= 0:
        return images
    return shifted_batch(images, np.arange(len(images)), max_shift, rng)


def shifted_batch(
    images: Array, idx: NDArray[np.integer[Any]], max_shift: int, rng: np.random.Generator
) -> Array:
    """``images[idx]``, each moved as :func:`random_shift` moves it (offsets drawn from ``rng``,
    rows first), gathered and moved by the core in one pass straight into its time-major
    layout. Returns a (B, rows, cols) view of a (rows, B, cols) C-contiguous array, so the
    model's conversion to time-major copies nothing."""
    n = len(idx)
    s = max(max_shift, 0)
    if s > 0:
        dy = rng.integers(-s, s + 1, n)
        dx = rng.integers(-s, s + 1, n)
    else:
        dy = dx = np.zeros(n, dtype=np.int64)
    time_major: Array = _core.shifted_batch(
        np.require(images, requirements=("C", "A")),
        np.asarray(idx, dtype=np.int64),
        np.asarray(dy, dtype=np.int64),
        np.asarray(dx, dtype=np.int64),
    )
    batch: Array = time_major.transpose(1, 0, 2)
    return batch
