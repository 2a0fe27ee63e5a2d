"""Your own digits as MNIST prepared its digits: ``prepare(path)`` -> (28, 28) float32 in [0, 1],
``prepare_number(path)`` -> (n, 28, 28), the digits of a number left to right.

MNIST's digits are white on black, their bounding box scaled (aspect ratio kept, anti-aliased)
to fit 20x20, then placed in a 28x28 field with their centre of mass at its centre. This module
does the same to any image Pillow reads (``pip install 'lstmcore[image]'``), drawn or
photographed (gray paper, light falling off across the sheet, ruled lines, noise, blur, JPEG):

0. Only regular files are read (a FIFO or device is refused, never opened for reading), and
   an image whose header declares more than ``MAX_PIXELS`` pixels is refused before its
   pixels are decoded (a 37 KB PNG can declare 13000x13000: gigabytes once decoded).
1. EXIF rotation applied; transparent pixels laid over white (a digit drawn on a transparent
   canvas reads as drawn on paper); converted to grayscale (ITU-R 601-2 luma), scaled to
   [0, 1]; an image larger than ``WORK_SIDE`` on its longer side is reduced to it (area
   average): the digits' strokes keep several pixels, the work stays a few milliseconds.
2. **Polarity**: the paper is the median gray (ink covers less than half of any digit image).
   When the median lies nearer the bright end (99th percentile) than the dark end (1st), the
   ink is dark on light paper and the image is inverted, so ink is bright on dark as in MNIST.
3. **Background removed**: the paper's level is estimated per block (the shorter side in
   about ``GRID`` blocks, each block's darkest pixel after a 3x3 mean against noise), opened
   over 5x5 blocks (strokes narrower than about a third of the shorter side vanish from it;
   the slow change of light across the sheet stays), and interpolated back to every pixel.
   The ink is what stands above it, relative to the paper's brightness there (``1 -
   pixel/paper`` for dark ink: a stroke in the shade counts as much as one in the light).
4. **Ink from paper**: Otsu's threshold on that ink (raised above the noise: the median plus
   six robust standard deviations), and connected groups of ink pixels (8-connected).
   Dropped: ruled lines (a group that touches both sides of the image loses its vertical
   runs no thicker than the line, 1.5x its median run, where those runs cover 60% of the
   width: the strokes that cross the line stay), the frame (a thin group along the border
   spanning 90% of a side), and specks (under 2% of the largest group's area).
5. **The digit**: the largest group and the groups within half its size of it (broken
   strokes, a 5's detached bar); for a number, every group, merged when they overlap in x,
   left to right, and touching digits cut (see :func:`digit_boxes`). Each digit keeps its
   ink values (the anti-aliased edge within a few pixels of its core, never dropped ink),
   scaled so its strokes' 90th percentile is 1, values under 0.1 set to 0.
6. **MNIST's normalisation**: the bounding box scaled so its longer side is 20 pixels
   (Lanczos), pasted into 28x28 with its centre of mass on pixel (14, 14) (kept inside).
   **Stroke width**: MNIST's strokes are 1.9 pixels wide (median of ``2 * ink / perimeter``,
   5% / 95% at 1.3 / 2.9). A digit outside ``STROKE_BAND`` (a thin font, a marker) is redrawn
   at four times the size, grown or thinned to the median width, and scaled down again.

A clean image comes back almost as it was: MNIST's own digits saved as PNG have a background
of 0, strokes that saturate and a 20-pixel box already (of the 10,000 test digits, 9,985 keep
the default model's answer; those that change lose a speck or a far stroke, or had a stroke
width outside the band).
"""

from __future__ import annotations

import io
import itertools
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files

Array = NDArray[Any]
Float = NDArray[np.float32]

__all__ = [
    "ImageError",
    "NoDigitError",
    "TooLargeError",
    "decode",
    "digit_boxes",
    "fit_like_mnist",
    "fit_number",
    "load_grayscale",
    "prepare",
    "prepare_number",
    "require_pillow",
]

FIELD = 28  # MNIST's image side
BOX = 20  # the side of the box the digit is scaled into
NOISE_FLOOR = 0.1  # after the ink is scaled to 1; below it is background
# the largest image read, in pixels: more than a phone camera's photo, and its float copies
# already take about 1 GB; below Pillow's own bomb limits (it warns at 89 MP, raises at 179 MP)
MAX_PIXELS = 40_000_000
WORK_SIDE = 640  # longer side an image is reduced to before its ink is found
GRID = 16  # background blocks along the shorter side
OPENING = 2  # background opening radius in blocks: 5x5 blocks
MIN_CONTRAST = 0.08  # ink this much darker (relative) than the paper, or it is no digit
LINE_SPAN = 0.6  # thin runs across this fraction of the width are a ruled line
FRAME_SPAN = 0.9  # a thin group along the border spanning this much of a side is the frame
SPECK = 0.02  # a group under this fraction of the largest group's area is a speck
NEAR = 0.5  # groups this fraction of its size from the largest one are the same digit
STROKE_TARGET = 1.9  # MNIST's median stroke width in the 28x28 field (2 * ink / perimeter)
STROKE_BAND = (1.2, 3.3)  # digits outside it are redrawn at STROKE_TARGET
DETAIL = 4  # stroke corrections are made at this many times the box size


class ImageError(ValueError):
    """An image cannot be read or holds no digit; the message names the file."""


class TooLargeError(ImageError):
    """The image declares more than ``MAX_PIXELS`` pixels (refused before decoding)."""


class NoDigitError(ImageError):
    """The image was read but holds no ink that could be a digit."""


def require_pillow() -> Any:
    """(PIL.Image, PIL.ImageOps); ImageError saying how to install Pillow when it is missing."""
    try:
        from PIL import Image, ImageOps
    except ImportError as err:
        raise ImageError(
            "reading images needs Pillow: pip install 'lstmcore[image]' (or pip install pillow)"
        ) from err
    return Image, ImageOps


# ---- reading ---------------------------------------------------------------------------------


def load_grayscale(path: str | os.PathLike[str], max_side: int | None = None) -> Float:
    """Any image Pillow reads as (height, width) float32 in [0, 1], reduced (area average) to
    ``max_side`` on its longer side when given; ImageError if unreadable, not a regular file,
    or larger than ``MAX_PIXELS``."""
    return _read(path, max_side)


def decode(data: bytes, name: str = "image", max_side: int | None = None) -> Float:
    """Image bytes (any format Pillow reads) as :func:`load_grayscale` reads a file, reduced
    to ``max_side`` on its longer side when given; ImageError naming ``name``."""
    return _read(name, max_side, io.BytesIO(data))


def _read(path: str | os.PathLike[str], max_side: int | None, stream: Any = None) -> Float:
    image_mod, image_ops = require_pillow()
    try:
        if stream is None:
            with _files.open_regular(path) as opened:
                gray = _decode(image_mod, image_ops, opened, path, max_side)
        else:
            gray = _decode(image_mod, image_ops, stream, path, max_side)
    except ImageError:
        raise
    except _files.NotRegularFileError as err:  # its line names the file already
        raise ImageError(str(err)) from err
    # Pillow raises any of these on bad files
    except (OSError, ValueError, SyntaxError) as err:
        reason = str(err) if stream is None else str(err).replace(f" {stream!r}", "")
        raise ImageError(f"{path}: cannot read image: {reason}") from err
    return gray


def _decode(
    image_mod: Any, image_ops: Any, stream: Any, path: str | os.PathLike[str], max_side: int | None
) -> Float:
    with _open_bounded(image_mod, stream, path) as img:
        if max_side is not None and img.format == "JPEG":
            # decode at 1/2, 1/4 or 1/8 scale where that still leaves twice max_side
            img.draft("L", (2 * max_side, 2 * max_side))
        img = image_ops.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            paper = image_mod.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = image_mod.alpha_composite(paper, rgba)
        img = img.convert("L")
        if max_side is not None and max(img.size) > max_side:
            scale = max_side / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, image_mod.Resampling.BOX)
        gray: Float = np.asarray(img, dtype=np.float32)
    scaled: Float = gray / np.float32(255.0)
    return scaled


def _too_large(path: str | os.PathLike[str], size: str = "") -> ImageError:
    return TooLargeError(f"{path}: image too large{size}: more than {MAX_PIXELS:,} pixels")


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


# ---- small image operations on NumPy arrays (Pillow's rank filters are O(k^2) a pixel) --------


def _shift_reduce(a: Array, radius: int, op: Any) -> Array:
    """``op`` (np.maximum or np.minimum) over the (2r+1)^2 square around each pixel, edges
    replicated: two separable passes over 2r+1 shifted views."""
    if radius <= 0:
        return a
    out = a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.moveaxis(np.pad(out, pad, mode="edge"), axis, 0)
        n = out.shape[axis]
        acc = padded[0:n].copy()
        for k in range(1, 2 * radius + 1):
            op(acc, padded[k : k + n], out=acc)
        out = np.moveaxis(acc, 0, axis)
    return out


def _dilate(a: Array, radius: int) -> Array:
    return _shift_reduce(a, radius, np.maximum)


def _erode(a: Array, radius: int) -> Array:
    return _shift_reduce(a, radius, np.minimum)


def _mean3(a: Float) -> Float:
    """3x3 mean, edges replicated: sensor noise averaged before levels are estimated."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    out: Float = ((rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / np.float32(9.0)).astype(np.float32)
    return out


LEVELS = 256  # histogram bins over [0, 1]


def _histogram(values: Float) -> NDArray[np.int64]:
    """Counts of values in [0, 1] in LEVELS bins (bin k holds k/255 +- half a bin): quantiles,
    the noise's spread and Otsu's threshold all come from it (sorting a photo's pixels took
    most of the preparation's time)."""
    bins = (np.clip(values, 0.0, 1.0) * (LEVELS - 1) + 0.5).astype(np.intp)
    return np.bincount(bins.ravel(), minlength=LEVELS)


def _quantile(hist: NDArray[np.int64], q: float) -> float:
    """The q-quantile (0..1) of the values counted in ``hist``, to a bin."""
    cdf = np.cumsum(hist)
    return float(np.searchsorted(cdf, q * (cdf[-1] - 1), side="right")) / (LEVELS - 1)


def _spread(hist: NDArray[np.int64], centre: float) -> float:
    """A robust standard deviation: 1.4826 x the median absolute deviation from ``centre``,
    from the histogram folded at the centre's bin."""
    c = round(centre * (LEVELS - 1))
    folded = np.zeros(LEVELS, np.int64)
    folded[: LEVELS - c] += hist[c:]
    folded[1 : c + 1] += hist[:c][::-1]
    return 1.4826 * _quantile(folded, 0.5)


def _otsu(hist: NDArray[np.int64]) -> float:
    """Otsu's threshold from a histogram: the level that maximises the variance between the
    two classes it makes (values at or above it are ink)."""
    p = hist.astype(np.float64) / hist.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(LEVELS))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = 0.0
    return (float(np.argmax(between)) + 0.5) / (LEVELS - 1)


def _perimeter(mask: Array) -> int:
    """Pixel edges between ink and background (the outline's length in pixel sides)."""
    m = np.pad(mask, 1).astype(np.int8)
    return int(np.count_nonzero(np.diff(m, axis=0)) + np.count_nonzero(np.diff(m, axis=1)))


def stroke_width(image: Float) -> float:
    """``2 * ink / perimeter`` of the pixels above 0.5: a stroke of width w and length L has
    ink w*L and an outline 2L long. MNIST's 28x28 digits: median 1.9, 5% 1.3, 95% 2.9."""
    perimeter = _perimeter(image > 0.5)
    return 2.0 * float(image.sum()) / perimeter if perimeter else 0.0


# ---- connected ink -----------------------------------------------------------------------------


@dataclass
class Groups:
    """8-connected groups of a mask: ``labels`` (H, W) int32, 0 outside, 1..n inside; per group
    (index g-1 for label g): ``area`` (pixels), ``top``, ``bottom``, ``left``, ``right``
    (inclusive bounding box)."""

    labels: NDArray[np.int32]
    area: NDArray[np.int64]
    top: NDArray[np.int64]
    bottom: NDArray[np.int64]
    left: NDArray[np.int64]
    right: NDArray[np.int64]

    @property
    def count(self) -> int:
        return int(self.area.size)


def _runs(mask: Array) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The horizontal runs of True in a 2-D mask, row-major: (row, first column, end column)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, cols = np.nonzero(step)
    rising = step[rows, cols] == 1  # starts and ends alternate along each row
    return (
        rows[rising].astype(np.int64),
        cols[rising].astype(np.int64),
        cols[~rising].astype(np.int64),
    )


def label(mask: Array) -> Groups:
    """8-connected groups of ``mask`` (H, W) bool. Runs of each row are joined to the runs
    they touch in the row above (found by binary search: runs are sorted), the joins are
    resolved by hooking each root to the smaller one and halving paths until no join spans
    two roots; then each run's pixels get its group's number."""
    width = mask.shape[1]
    rows, starts, ends = _runs(mask)
    n = rows.size
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Groups(np.zeros(mask.shape, np.int32), empty, empty, empty, empty, empty)
    stride = width + 4  # keys of different rows never interleave, even at columns -1, width
    first = rows * stride + starts  # sorted
    last = rows * stride + ends - 1  # sorted
    # run j (row r) touches runs i of row r-1 with first_i <= end_j and last_i >= start_j - 1
    lo = np.searchsorted(last, (rows - 1) * stride + starts - 1, side="left")
    hi = np.searchsorted(first, (rows - 1) * stride + ends, side="right")
    counts = np.maximum(hi - lo, 0)
    below = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    above = np.repeat(lo, counts) + offsets
    parent = np.arange(n)
    while below.size:
        a, b = parent[above], parent[below]
        if np.array_equal(a, b):
            break
        low = np.minimum(a, b)
        np.minimum.at(parent, a, low)
        np.minimum.at(parent, b, low)
        while True:  # path halving until every run points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots, group = np.unique(parent, return_inverse=True)
    lengths = ends - starts
    labels = _paint(mask.shape, rows, starts, ends, group + 1)
    k = roots.size
    big = np.iinfo(np.int64).max
    top, bottom = np.full(k, big), np.full(k, -1)
    left, right = np.full(k, big), np.full(k, -1)
    np.minimum.at(top, group, rows)
    np.maximum.at(bottom, group, rows)
    np.minimum.at(left, group, starts)
    np.maximum.at(right, group, ends - 1)
    area = np.bincount(group, weights=lengths, minlength=k).astype(np.int64)
    return Groups(labels, area, top, bottom, left, right)


def _paint(shape: tuple[int, int], rows: Array, starts: Array, ends: Array, values: Array) -> Array:
    """An array of ``shape`` (0 elsewhere) holding ``values[k]`` along run k (row, [start,
    end)), int32."""
    out = np.zeros(shape[0] * shape[1], np.int32)
    lengths = ends - starts
    pixels = np.repeat(rows * shape[1] + starts, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    out[pixels] = np.repeat(values, lengths)
    return out.reshape(shape)


def _line_pixels(part: Array) -> Array:
    """The pixels of ``part`` (bool) in vertical runs no longer than a ruled line is thick
    (its median vertical run, times 1.5, at least one more pixel): the line's, not those of
    the strokes that cross it."""
    cols, starts, ends = _runs(part.T)  # vertical runs: runs along the rows of the transpose
    if cols.size == 0:
        return np.zeros_like(part)
    lengths = ends - starts
    thick = float(np.median(lengths))
    thin = lengths <= max(thick * 1.5, thick + 1.0)
    painted = _paint(part.T.shape, cols[thin], starts[thin], ends[thin], np.ones(int(thin.sum())))
    line: Array = painted.T > 0
    return line


def _clean(mask: Array) -> Groups:
    """Groups of ink without ruled lines, the frame and specks (step 4)."""
    height, width = mask.shape
    groups = label(mask)
    if groups.count == 0:
        return groups
    # a ruled line crosses the whole sheet: its group touches both sides
    across = (groups.left == 0) & (groups.right == width - 1) & (width >= 3 * FIELD)
    if np.any(across):
        mask = mask.copy()
        for g in np.nonzero(across)[0]:
            box = (slice(groups.top[g], groups.bottom[g] + 1), slice(0, width))
            line = _line_pixels(groups.labels[box] == g + 1)
            cols = np.nonzero(line.any(axis=0))[0]
            if cols.size >= LINE_SPAN * width:  # the thin runs do make a line
                mask[box] &= ~line
        groups = label(mask)
        if groups.count == 0:
            return groups
    keep = groups.area >= SPECK * groups.area.max()
    # the frame: thin, along a border, nearly as long as that side; unless it is all there is
    long_x = groups.right - groups.left + 1 >= FRAME_SPAN * width
    long_y = groups.bottom - groups.top + 1 >= FRAME_SPAN * height
    thin_x = groups.bottom - groups.top + 1 < 0.25 * height
    thin_y = groups.right - groups.left + 1 < 0.25 * width
    at_edge = (
        (groups.top == 0)
        | (groups.left == 0)
        | (groups.bottom == height - 1)
        | (groups.right == width - 1)
    )
    frame = at_edge & ((long_x & thin_x) | (long_y & thin_y))
    if np.any(keep & ~frame):
        keep &= ~frame
    return _subset(groups, keep)


def _subset(groups: Groups, keep: NDArray[np.bool_]) -> Groups:
    """Only the groups where ``keep`` is True, renumbered 1..k in their order."""
    remap = np.zeros(groups.count + 1, np.int32)
    remap[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return Groups(
        remap[groups.labels],
        groups.area[keep],
        groups.top[keep],
        groups.bottom[keep],
        groups.left[keep],
        groups.right[keep],
    )


# ---- from gray to ink ----------------------------------------------------------------------


@dataclass
class Ink:
    """Step 2-4's result on the working image: ``soft`` (H, W) float32 ink in [0, 1] (bright on
    dark, background removed, not yet scaled per digit), ``core`` (H, W) bool (above the
    threshold), ``groups`` (the kept groups of the core), ``fringe`` (pixels of anti-aliased
    edge kept around the core), ``dropped`` (H, W) bool (ink of the lines, frame and specks
    dropped, and its edge: never a digit's fringe)."""

    soft: Float
    core: NDArray[np.bool_]
    groups: Groups
    fringe: int
    dropped: NDArray[np.bool_]


def _background(x: Float) -> Float:
    """The paper's level under bright ink ``x`` (step 3): block minima, opened, interpolated."""
    image_mod, _ = require_pillow()
    height, width = x.shape
    block = max(1, round(min(height, width) / GRID))
    gh, gw = -(-height // block), -(-width // block)
    padded = np.pad(x, ((0, gh * block - height), (0, gw * block - width)), mode="edge")
    grid = padded.reshape(gh, block, gw, block).min(axis=(1, 3))
    grid = _dilate(_erode(grid, OPENING), OPENING)
    if block == 1:
        return grid.astype(np.float32)
    smooth = image_mod.fromarray(np.ascontiguousarray(grid, dtype=np.float32)).resize(
        (gw * block, gh * block), image_mod.Resampling.BILINEAR
    )
    out: Float = np.asarray(smooth, dtype=np.float32)[:height, :width]
    return out


def find_ink(gray: Float, name: str = "image") -> Ink:
    """Steps 2-4 on an (H, W) grayscale image in [0, 1]; ImageError when it holds no ink."""
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"{name}: expected a 2-D grayscale image, got shape {gray.shape}")
    smooth_needed = min(gray.shape) >= 64  # tiny images are drawings, not noisy photos
    level = _mean3(gray) if smooth_needed else gray
    levels = _histogram(level)
    dark, paper, bright = (_quantile(levels, q) for q in (0.01, 0.5, 0.99))
    dark_ink = paper - dark > bright - paper
    x = 1.0 - gray if dark_ink else gray
    xs = 1.0 - level if dark_ink else level
    background = _background(xs)
    # relative to the paper's brightness there: 1 - pixel/paper for dark ink
    scale = np.maximum(1.0 - background, 0.05) if dark_ink else np.float32(1.0)
    soft = np.clip((x - background) / scale, 0.0, 1.0).astype(np.float32)
    soft_s = np.clip((xs - background) / scale, 0.0, 1.0).astype(np.float32)
    inks = _histogram(soft_s)
    centre = _quantile(inks, 0.5)
    threshold = max(_otsu(inks), centre + 6.0 * _spread(inks, centre), MIN_CONTRAST / 2)
    found = soft_s >= threshold
    groups = _clean(found)
    if groups.count == 0:
        raise NoDigitError(f"{name}: no digit found (the image has no contrast)")
    core = groups.labels > 0
    if float(np.percentile(soft[core], 90)) < MIN_CONTRAST:
        raise NoDigitError(f"{name}: no digit found (the image has no contrast)")
    fringe = 1 + round(min(gray.shape) / 150)
    dropped = _dilate(found & ~core, 1)
    return Ink(soft, core, groups, fringe, dropped)


# ---- digits ------------------------------------------------------------------------------------


@dataclass
class DigitBox:
    """One digit in the working image: the groups it is made of (labels), and the columns
    [left, right) it may take from them (a cut between touching digits)."""

    labels: list[int]
    top: int
    bottom: int  # inclusive
    left: int
    right: int  # exclusive


def _box_of(groups: Groups, members: list[int]) -> DigitBox:
    idx = [m - 1 for m in members]
    return DigitBox(
        members,
        int(groups.top[idx].min()),
        int(groups.bottom[idx].max()),
        int(groups.left[idx].min()),
        int(groups.right[idx].max()) + 1,
    )


def _single_digit(groups: Groups) -> list[DigitBox]:
    """The largest group and the groups within a quarter of its longer side of its box (at
    least 2 pixels): one digit's broken strokes and a 5's detached bar, not a second digit
    further off."""
    main = int(np.argmax(groups.area))
    size = max(groups.bottom[main] - groups.top[main], groups.right[main] - groups.left[main]) + 1
    margin = max(size * NEAR, 2.0)
    dx = np.maximum(
        0, np.maximum(groups.left - groups.right[main], groups.left[main] - groups.right)
    )
    dy = np.maximum(
        0, np.maximum(groups.top - groups.bottom[main], groups.top[main] - groups.bottom)
    )
    near = np.maximum(dx, dy) <= margin
    return [_box_of(groups, [int(g) + 1 for g in np.nonzero(near)[0]])]


def digit_boxes(ink: Ink) -> list[DigitBox]:
    """The digits of a one-row number, left to right.

    The digits' height ``h`` is the median height of the groups at least half as tall as the
    tallest. Groups at least 0.6 h tall are digits, or parts of one when they overlap in x by
    half the narrower one's width (a 4 written in two strokes). A shorter group joins the
    digit it overlaps most or lies nearest to in x, when within 0.25 h (a 5's detached bar,
    a broken stroke); otherwise it is a digit of its own if at least 0.35 h tall, else
    dropped (a dash, a comma, what ruled lines leave). Touching digits arrive as one group
    wider than it should be: one wider than 1.1 h is cut into round(width / 0.62 h) digits
    (at least 2), each cut at the column of least ink within a quarter of a digit's width of
    the even split. Digits joined along a long stretch (more ink at the cut than one stroke)
    may still be misread, and a single digit wider than 1.1 h is cut."""
    groups = ink.groups
    heights = groups.bottom - groups.top + 1
    h = float(np.median(heights[heights >= 0.5 * heights.max()]))
    order = sorted(range(groups.count), key=lambda g: (int(groups.left[g]), int(groups.top[g])))
    tall = [g for g in order if heights[g] >= 0.6 * h]
    digits: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for g in tall:
        lo, hi = int(groups.left[g]), int(groups.right[g]) + 1
        if spans:
            plo, phi = spans[-1]
            if min(hi, phi) - max(lo, plo) >= 0.5 * min(hi - lo, phi - plo):
                digits[-1].append(g + 1)
                spans[-1] = (min(lo, plo), max(hi, phi))
                continue
        digits.append([g + 1])
        spans.append((lo, hi))
    for g in order:
        if heights[g] >= 0.6 * h:
            continue
        lo, hi = int(groups.left[g]), int(groups.right[g]) + 1
        gaps = [max(plo, lo) - min(phi, hi) for plo, phi in spans]  # negative: overlap
        if gaps and min(gaps) <= 0.25 * h:
            k = int(np.argmin(gaps))
            digits[k].append(g + 1)
            spans[k] = (min(lo, spans[k][0]), max(hi, spans[k][1]))
        elif heights[g] >= 0.35 * h:
            digits.append([g + 1])
            spans.append((lo, hi))
    boxes = sorted((_box_of(groups, members) for members in digits), key=lambda b: b.left)
    out: list[DigitBox] = []
    for box in boxes:
        width = box.right - box.left
        if width <= 1.1 * h:
            out.append(box)
        else:
            out.extend(_cut(ink, box, max(2, round(width / (0.62 * h)))))
    return out


def _cut(ink: Ink, box: DigitBox, pieces: int) -> list[DigitBox]:
    """``box`` cut into ``pieces`` digits at the columns of least ink near the even splits."""
    members = np.isin(ink.groups.labels[box.top : box.bottom + 1, box.left : box.right], box.labels)
    profile = members.sum(axis=0)
    width = box.right - box.left
    cuts = [0]
    for k in range(1, pieces):
        centre = k * width / pieces
        reach = max(1, round(width / pieces / 4))
        lo, hi = max(cuts[-1] + 1, round(centre - reach)), min(width - 1, round(centre + reach))
        if lo >= hi:
            continue
        cuts.append(lo + int(np.argmin(profile[lo : hi + 1])))
    cuts.append(width)
    out = []
    for a, b in itertools.pairwise(cuts):
        cols = members[:, a:b]
        rows = np.nonzero(cols.any(axis=1))[0]
        if rows.size == 0:
            continue
        out.append(
            DigitBox(
                box.labels, box.top + int(rows[0]), box.top + int(rows[-1]),
                box.left + a, box.left + b,
            )
        )  # fmt: skip
    return out


def _digit_ink(ink: Ink, box: DigitBox) -> Float:
    """The digit's ink values, cropped: its core plus the anti-aliased edge within
    ``ink.fringe`` pixels of it (never another digit's core, nor dropped ink), scaled so
    the 90th percentile of its core is 1, values under NOISE_FLOOR set to 0."""
    height, width = ink.soft.shape
    f = ink.fringe
    top, bottom = max(0, box.top - f), min(height, box.bottom + 1 + f)
    left, right = max(0, box.left - f), min(width, box.right + f)
    labels = ink.groups.labels[top:bottom, left:right]
    own = np.isin(labels, box.labels)
    cols = np.arange(left, right)
    inside = (cols >= box.left) & (cols < box.right)
    own &= inside[None, :]
    others = ((labels > 0) & ~own) | ink.dropped[top:bottom, left:right]
    region = (_dilate(own, f) & ~others) | own  # a cut digit's neighbour is in `others` too
    crop = ink.soft[top:bottom, left:right]
    level = float(np.percentile(crop[own], 90)) if own.any() else 1.0
    digit = np.where(region, np.clip(crop / max(level, 1e-3), 0.0, 1.0), 0.0).astype(np.float32)
    digit[digit < NOISE_FLOOR] = 0.0
    return digit


def _to_field(digit: Float) -> Float | None:
    """Step 6 without the stroke correction: the ink's bounding box scaled to 20 (longer side)
    and placed by its centre of mass; None when the crop holds no ink."""
    image_mod, _ = require_pillow()
    ys, xs = np.nonzero(digit)
    if ys.size == 0:
        return None
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
    if float(resized.sum()) <= 0.0:
        return None
    cy, cx = _centre_of_mass(resized)
    top = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - resized.shape[0]))
    left = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - resized.shape[1]))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return field


def _centre_of_mass(img: Float) -> tuple[float, float]:
    total = float(img.sum())
    rows = np.arange(img.shape[0], dtype=np.float64)
    cols = np.arange(img.shape[1], dtype=np.float64)
    return float(img.sum(axis=1) @ rows) / total, float(img.sum(axis=0) @ cols) / total


def _restroke(digit: Float, width_now: float) -> Float:
    """The digit redrawn at DETAIL x the box size, its strokes grown or thinned by whole
    pixels there towards STROKE_TARGET (2 pixels there are half a pixel in the field)."""
    image_mod, _ = require_pillow()
    ys, xs = np.nonzero(digit)
    crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = crop.shape
    scale = DETAIL * BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    big = np.clip(
        np.asarray(
            image_mod.fromarray(np.ascontiguousarray(crop)).resize(
                size, image_mod.Resampling.LANCZOS
            ),
            dtype=np.float32,
        ),
        0.0,
        1.0,
    )
    # a width change of d field pixels is d * DETAIL pixels here, half on each side
    radius = round((STROKE_TARGET - width_now) * DETAIL / 2)
    pad = max(radius, 0) + 1
    big = np.pad(big, pad)
    if radius > 0:
        big = _dilate(big, radius)
    elif radius < 0:
        thinned = _erode(big, -radius)
        if (thinned > 0.5).sum() >= 0.25 * (big > 0.5).sum():  # never erase the digit
            big = thinned
    big[big < NOISE_FLOOR] = 0.0
    return big


def _fit(digit: Float, name: str) -> Float:
    """Step 6 with the stroke width corrected where it is far from MNIST's. The width is
    measured on the crop before scaling (a hairline keeps its pixels there) and expressed in
    field pixels."""
    field = _to_field(digit)
    if field is None:
        raise NoDigitError(f"{name}: no digit found (the image has no contrast)")
    ys, xs = np.nonzero(digit)
    crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    width = stroke_width(crop) * BOX / max(crop.shape)
    lo, hi = STROKE_BAND
    if not lo <= width <= hi:
        redrawn = _to_field(_restroke(digit, width))
        if redrawn is not None:
            field = redrawn
    return field


def fit_like_mnist(gray: Float, name: str = "image") -> Float:
    """(H, W) grayscale in [0, 1], either polarity -> (28, 28) float32 as MNIST's digits: the
    largest digit of the image (steps 2-6 of the module's description)."""
    ink = find_ink(gray, name)
    (box,) = _single_digit(ink.groups)
    return _fit(_digit_ink(ink, box), name)


def fit_number(gray: Float, name: str = "image") -> Float:
    """(H, W) grayscale in [0, 1] holding one row of digits -> (n, 28, 28) float32, the digits
    left to right, each as :func:`fit_like_mnist` prepares one."""
    ink = find_ink(gray, name)
    fields = [_fit(_digit_ink(ink, box), name) for box in digit_boxes(ink)]
    return np.stack(fields).astype(np.float32)


def prepare(path: str | os.PathLike[str]) -> Float:
    """An image file -> (28, 28) float32 in [0, 1], ready for ``Classifier.predict``."""
    return fit_like_mnist(load_grayscale(path, WORK_SIDE), str(path))


def prepare_number(path: str | os.PathLike[str]) -> Float:
    """An image file holding one row of digits -> (n, 28, 28) float32, left to right."""
    return fit_number(load_grayscale(path, WORK_SIDE), str(path))
