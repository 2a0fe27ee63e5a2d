"""Your own digit as MNIST prepared its digits: ``prepare(path)`` -> (28, 28) float32 in [0, 1].

MNIST's digits are white on black, their bounding box scaled (aspect ratio kept, anti-aliased)
to fit 20x20, then placed in a 28x28 field with their centre of mass at its centre. This module
does the same to any image Pillow reads (``pip install 'lstmcore[image]'``):

0. Only regular files are read (a FIFO or device is refused, never opened for reading), and
   an image whose header declares more than ``MAX_PIXELS`` pixels is refused before its
   pixels are decoded (a 37 KB PNG can declare 13000x13000: gigabytes once decoded).
1. EXIF rotation applied; transparent pixels laid over white (a digit drawn on a transparent
   canvas reads as drawn on paper); converted to grayscale (ITU-R 601-2 luma), scaled to [0, 1].
2. **Light backgrounds are inverted**: when the mean of the border (the outer 5% of each side,
   at least one pixel) is brighter than the mean of the whole image, the ink is darker than
   the paper, and the image is inverted so the digit is bright on dark, as in MNIST.
3. Contrast: the border's median becomes 0 (background) and the brightest pixel 1; values
   below 0.1 after that (paper texture, JPEG noise) become 0.
4. The bounding box of the remaining pixels is scaled so its longer side is 20 pixels
   (Lanczos resampling), then pasted into 28x28 so its centre of mass falls on pixel (14, 14)
   (kept inside the field).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files
from lstmcore._native import core as _core

Array = NDArray[Any]

__all__ = [
    "ImageError",
    "fit_like_mnist",
    "load_grayscale",
    "prepare",
    "random_shift",
    "require_pillow",
]

FIELD = 28  # MNIST's image side
BOX = 20  # the side of the box the digit is scaled into
NOISE_FLOOR = 0.1  # after contrast stretching; below it is background
BORDER_FRACTION = 0.05
# the largest image read, in pixels: more than a phone camera's photo, and its float copies
# already take about 1 GB; below Pillow's own bomb limits (it warns at 89 MP, raises at 179 MP)
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image cannot be read or holds no digit; the message names the file."""


def require_pillow() -> Any:
    """(PIL.Image, PIL.ImageOps); ImageError saying how to install Pillow when it is missing."""
    try:
        from PIL import Image, ImageOps
    except ImportError as err:
        raise ImageError(
            "reading images needs Pillow: pip install 'lstmcore[image]' (or pip install pillow)"
        ) from err
    return Image, ImageOps


def load_grayscale(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """Any image Pillow reads as (height, width) float32 in [0, 1]; ImageError if unreadable,
    not a regular file, or larger than ``MAX_PIXELS``."""
    image_mod, image_ops = require_pillow()
    try:
        with _files.open_regular(path) as stream, _open_bounded(image_mod, stream, path) as img:
            img = image_ops.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                paper = image_mod.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = image_mod.alpha_composite(paper, rgba)
            gray: NDArray[np.float32] = np.asarray(img.convert("L"), dtype=np.float32)
    except ImageError:
        raise
    except _files.NotRegularFileError as err:  # its line names the file already
        raise ImageError(str(err)) from err
    # Pillow raises any of these on bad files
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{path}: cannot read image: {err}") from err
    scaled: NDArray[np.float32] = gray / np.float32(255.0)
    return scaled


def _too_large(path: str | os.PathLike[str], size: str = "") -> ImageError:
    return ImageError(f"{path}: image too large{size}: more than {MAX_PIXELS:,} pixels")


def _open_bounded(image_mod: Any, stream: Any, path: str | os.PathLike[str]) -> Any:
    """Image.open on ``stream``, its pixels not decoded yet; ImageError when the header declares
    more than MAX_PIXELS. Pillow's own bomb check runs inside open: its warning (multi-line, on
    stderr) is silenced, since every image it warns about is refused here with its size, and
    its error (twice its limit, raised before the size is known) becomes the same line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", image_mod.DecompressionBombWarning)
            img = image_mod.open(stream)
    except image_mod.DecompressionBombError as err:
        raise _too_large(path) from err
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise _too_large(path, f" ({width}x{height})")
    return img


def _border(gray: NDArray[np.float32]) -> NDArray[np.float32]:
    """The pixels of the outer frame (5% of the shorter side, at least 1 pixel)."""
    width = max(1, int(BORDER_FRACTION * min(gray.shape)))
    mask = np.ones(gray.shape, dtype=bool)
    mask[width:-width, width:-width] = False
    frame: NDArray[np.float32] = gray[mask]
    return frame


def _bright_on_dark(gray: NDArray[np.float32]) -> NDArray[np.float32]:
    """The digit bright on a dark background, contrast stretched to [0, 1]."""
    if float(_border(gray).mean()) > float(gray.mean()):
        gray = 1.0 - gray
    background = float(np.median(_border(gray)))
    peak = float(gray.max())
    if peak - background < 1e-3:
        return np.zeros(gray.shape, np.float32)
    stretched = (gray - background) / (peak - background)
    out: NDArray[np.float32] = np.clip(stretched, 0.0, 1.0).astype(np.float32)
    out[out < NOISE_FLOOR] = 0.0
    return out


def _centre_of_mass(img: NDArray[np.float32]) -> tuple[float, float]:
    total = float(img.sum())
    rows = np.arange(img.shape[0], dtype=np.float64)
    cols = np.arange(img.shape[1], dtype=np.float64)
    return float(img.sum(axis=1) @ rows) / total, float(img.sum(axis=0) @ cols) / total


def fit_like_mnist(gray: NDArray[np.float32], name: str = "image") -> NDArray[np.float32]:
    """(H, W) grayscale in [0, 1], either polarity -> (28, 28) float32 as MNIST's digits."""
    image_mod, _ = require_pillow()
    digit = _bright_on_dark(np.asarray(gray, dtype=np.float32))
    ys, xs = np.nonzero(digit)
    if ys.size == 0:
        raise ImageError(f"{name}: no digit found (the image has no contrast)")
    crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (w, h)
    # a float32 array is Pillow mode "F" (no rounding to bytes); Lanczos anti-aliases
    resized = np.asarray(
        image_mod.fromarray(np.ascontiguousarray(crop)).resize(size, image_mod.Resampling.LANCZOS),
        dtype=np.float32,
    )
    resized = np.clip(resized, 0.0, 1.0)  # Lanczos overshoots at sharp edges
    cy, cx = _centre_of_mass(resized)
    top = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - resized.shape[0]))
    left = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - resized.shape[1]))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return field


def prepare(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """An image file -> (28, 28) float32 in [0, 1], ready for ``Classifier.predict``."""
    return fit_like_mnist(load_grayscale(path), str(path))


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
