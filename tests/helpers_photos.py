"""Photos the tests make themselves (used by test_photos, test_imaging, test_serve, test_browser):
digits in several fonts and in MNIST's handwriting put on paper as a phone would see it,
numbers of 2-5 digits, and digits drawn with a round pen as on the page's canvas."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lstmcore.mnist import data, imaging

Image = pytest.importorskip("PIL.Image")
from PIL import ImageDraw, ImageFilter, ImageFont  # noqa: E402  (after the skip)

Array = NDArray[Any]


# (family, file) tried in order; Pillow's own Aileron is always there. Debian: fonts-dejavu-core,
# fonts-liberation (installed by .ci/run; chromium pulls in fonts-liberation too)
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation")
FONT_FILES = {
    "DejaVu Sans": ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-ExtraLight.ttf"],
    "DejaVu Serif": ["DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf"],
    "DejaVu Sans Mono": ["DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"],
    "Liberation Serif": ["LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf"],
    "Liberation Sans Narrow": ["LiberationSansNarrow-Regular.ttf"],
    "Liberation Sans": ["LiberationSans-Italic.ttf"],
}
MIN_FAMILIES = 5


def require_system(what: str) -> None:
    """Skip with ``what`` as the reason, or fail where LSTMCORE_REQUIRE_BROWSER=1 (CI, set by
    .ci/run, which installs chromium, its driver and the fonts)."""
    if os.environ.get("LSTMCORE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (LSTMCORE_REQUIRE_BROWSER=1: required here)")
    pytest.skip(what)


def fonts() -> dict[str, list[str]]:
    """Family -> font files present (Aileron, from Pillow, is the file "")."""
    found: dict[str, list[str]] = {"Aileron": [""]}
    for family, files in FONT_FILES.items():
        paths = [
            os.path.join(d, f)
            for f in files
            for d in FONT_DIRS
            if os.path.exists(os.path.join(d, f))
        ]
        if paths:
            found[family] = paths
    return found


def font(path: str, size: int) -> Any:
    return ImageFont.load_default(size) if path == "" else ImageFont.truetype(path, size)


def text_ink(text: str, font_path: str, height: int, stroke: int = 0) -> Array:
    """(h, w) float32 coverage in [0, 1] of ``text`` drawn with its digits about ``height``
    pixels tall, outlined by ``stroke`` pixels (a bolder pen)."""
    size = round(height / 0.73)  # a digit is about 0.73 em tall
    f = font(font_path, size)
    left, top, right, bottom = f.getbbox(text, stroke_width=stroke)
    img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(img).text(
        (2 - left, 2 - top), text, fill=255, font=f, stroke_width=stroke, stroke_fill=255
    )
    return np.asarray(img, np.float32) / 255.0


def mnist_ink(image: Array, height: int) -> Array:
    """An MNIST digit (28, 28) in [0, 1] as pen ink ``height`` pixels tall for its 28 rows:
    smooth upscaling, then the edge sharpened as a pen's (a steep ramp around 0.35)."""
    big = Image.fromarray((image * 255).astype(np.uint8)).resize((height, height), Image.BICUBIC)
    a = np.asarray(big, np.float32) / 255.0
    return np.clip((a - 0.2) / 0.3, 0.0, 1.0)


def tight(ink: Array) -> Array:
    """``ink`` cut to the columns that hold some."""
    cols = np.nonzero(ink.max(axis=0) > 0.1)[0]
    return ink[:, cols[0] : cols[-1] + 1]


def row_of(inks: list[Array], gaps: list[int]) -> Array:
    """Inks side by side on a common baseline-centred row, ``gaps[i]`` pixels between ink i
    and i+1 (negative: they overlap, touching digits)."""
    height = max(i.shape[0] for i in inks)
    width = sum(i.shape[1] for i in inks) + sum(gaps) + 4
    out = np.zeros((height, width), np.float32)
    x = 0
    for k, ink in enumerate(inks):
        top = (height - ink.shape[0]) // 2
        region = out[top : top + ink.shape[0], x : x + ink.shape[1]]
        np.maximum(region, ink[:, : region.shape[1]], out=region)
        x += ink.shape[1] + (gaps[k] if k < len(gaps) else 0)
    return out


@dataclass
class Look:
    """How a photo is taken."""

    size: tuple[int, int] = (300, 400)  # (height, width)
    paper: float = 0.8  # paper brightness in full light
    ink: float = 0.15  # ink brightness
    tint: tuple[float, float, float] = (1.0, 0.98, 0.93)
    ink_colour: tuple[float, float, float] = (0.6, 0.7, 1.0)  # blue-black pen
    falloff: float = 0.4  # light lost from the bright side to the dark one
    angle_light: float = 0.0  # direction the light falls off, radians
    vignette: float = 0.2
    lines: int = 0  # ruled line spacing in pixels, 0 none
    line_dark: float = 0.25  # how much a ruled line darkens the paper
    table: int = 0  # pixels of dark table along the left and bottom edges
    noise: float = 0.02  # sensor noise (std, of full scale)
    blur: float = 1.0  # lens blur (Gaussian radius)
    rotation: float = 0.0  # degrees
    quality: int = 80  # JPEG quality
    ink_height: float = 0.5  # the ink's height as a fraction of the photo's
    offset: tuple[float, float] = (0.0, 0.0)  # the ink's centre off the photo's, fractions


def random_look(rng: np.random.Generator, size: tuple[int, int] = (300, 400)) -> Look:
    """A phone photo of a sheet: every parameter drawn over the range real photos show."""
    return Look(
        size=size,
        paper=float(rng.uniform(0.6, 0.92)),
        ink=float(rng.uniform(0.05, 0.3)),
        tint=(1.0, float(rng.uniform(0.93, 1.0)), float(rng.uniform(0.82, 0.98))),
        ink_colour=[(0.6, 0.7, 1.0), (1.0, 1.0, 1.0), (0.9, 0.8, 0.8)][int(rng.integers(3))],
        falloff=float(rng.uniform(0.1, 0.55)),
        angle_light=float(rng.uniform(0, 2 * np.pi)),
        vignette=float(rng.uniform(0.0, 0.35)),
        lines=int(rng.choice([0, 0, 28, 36, 48])),
        line_dark=float(rng.uniform(0.12, 0.3)),
        table=int(rng.choice([0, 0, 0, 14, 24])),
        noise=float(rng.uniform(0.005, 0.04)),
        blur=float(rng.uniform(0.3, 1.8)),
        rotation=float(rng.uniform(-10, 10)),
        quality=int(rng.integers(55, 92)),
        ink_height=float(rng.uniform(0.35, 0.65)),
        offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.12, 0.12))),
    )


def photograph(ink: Array, look: Look, rng: np.random.Generator) -> bytes:
    """JPEG bytes of ``ink`` (coverage in [0, 1]) written on paper and photographed."""
    h, w = look.size
    # the ink scaled to its height in the photo (at most 90% of the width)
    scale = min(look.ink_height * h / ink.shape[0], 0.9 * w / ink.shape[1])
    ih, iw = max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))
    ink_img = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize(
        (iw, ih), Image.LANCZOS
    )
    coverage = np.zeros((h, w), np.float32)
    top = int(np.clip((h - ih) / 2 + look.offset[0] * h, 0, max(0, h - ih)))
    left = int(np.clip((w - iw) / 2 + look.offset[1] * w, 0, max(0, w - iw)))
    patch = np.asarray(ink_img, np.float32)[: h - top, : w - left] / 255.0
    coverage[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    # the sheet: paper, ruled lines under the ink, the ink
    sheet = np.full((h, w), 1.0, np.float32)
    if look.lines:
        ys = np.arange(h)
        phase = rng.uniform(0, look.lines)
        dist = np.abs(((ys - phase) % look.lines) - look.lines / 2) - (look.lines / 2 - 1.2)
        sheet -= look.line_dark * np.clip(dist, 0, 1.2)[:, None] / 1.2
    ink_rgb = (look.ink / look.paper) * np.asarray(look.ink_colour, np.float32)
    cov = coverage[..., None]
    rgb = sheet[..., None] * (1 - cov) + ink_rgb * cov
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    img = img.rotate(look.rotation, resample=Image.BILINEAR, fillcolor=(255, 255, 255))
    arr = np.asarray(img, np.float32) / 255.0
    if look.table:
        arr = arr.copy()
        arr[:, : look.table] = (0.25, 0.2, 0.15)  # the table the sheet lies on
        arr[h - look.table :, :] = (0.25, 0.2, 0.15)
    # the light: paper brightness, a ramp across the sheet, a vignette, the paper's tint
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx / w - 0.5) * np.cos(look.angle_light) + (yy / h - 0.5) * np.sin(look.angle_light)
    light = 1.0 - look.falloff * (u + 0.5)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5
    light *= 1.0 - look.vignette * r2
    arr = arr * (look.paper * light)[..., None] * np.asarray(look.tint, np.float32)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(look.blur))
    arr = np.asarray(img, np.float32) / 255.0
    arr += look.noise * rng.standard_normal(arr.shape, dtype=np.float32)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=look.quality)
    return out.getvalue()


def skeleton(image: Array) -> Array:
    """Zhang-Suen thinning of ``image > 0.5``: the one-pixel-wide centre lines of the strokes."""
    m = np.pad(image > 0.5, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(m, -dy, 0), -dx, 1) for dy, dx in NEIGHBOURS]
            b = sum(p)
            a = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.uint8) for k in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                c1, c2 = p2 * p4 * p6, p4 * p6 * p8
            else:
                c1, c2 = p2 * p4 * p8, p2 * p6 * p8
            remove = (m == 1) & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if remove.any():
                m[remove] = 0
                changed = True
        if not changed:
            return m[1:-1, 1:-1].astype(bool)


# P2..P9 clockwise from north, as Zhang and Suen number them
NEIGHBOURS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def strokes(image: Array) -> list[list[tuple[int, int]]]:
    """An MNIST digit as pen strokes: its skeleton walked from the ends, each stroke a list of
    (row, col) pixels; strokes starting beside a pixel already drawn start from it (joined)."""
    sk = skeleton(image)
    todo = {(int(r), int(c)) for r, c in zip(*np.nonzero(sk), strict=True)}
    drawn: set[tuple[int, int]] = set()

    def around(p: tuple[int, int]) -> list[tuple[int, int]]:
        # 4-neighbours first: a walk along a diagonal staircase takes its corners
        order = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]
        return [(p[0] + dy, p[1] + dx) for dy, dx in order]

    def degree(p: tuple[int, int]) -> int:
        return sum(q in todo or q in drawn for q in around(p))

    out = []
    while todo:
        ends = sorted(p for p in todo if degree(p) == 1)
        start = ends[0] if ends else min(todo)
        path = [start]
        joined = [q for q in around(start) if q in drawn]
        if joined:
            path.insert(0, joined[0])
        todo.discard(start)
        cur = start
        while True:
            nxt = [q for q in around(cur) if q in todo]
            if not nxt:
                back = [q for q in around(cur) if q in drawn and q not in path[-3:]]
                if back and len(path) > 2:
                    path.append(back[0])  # close a loop or meet a stroke drawn before
                break
            cur = nxt[0]
            todo.discard(cur)
            path.append(cur)
        drawn.update(path)
        out.append(path)
    return [s for s in out if len(s) >= 2]


CANVAS = 280  # the page's canvas (10 canvas pixels per MNIST pixel)


PEN = 22  # the page's pen width on it


def drawn_digit(image: Array, pen: int = PEN) -> bytes:
    """PNG bytes of ``image``'s strokes drawn on a white 280x280 canvas with a round black pen,
    as the page's canvas draws them."""
    img = Image.new("L", (CANVAS, CANVAS), 255)
    draw = ImageDraw.Draw(img)
    for stroke in strokes(image):
        pts = [(10 * c + 5, 10 * r + 5) for r, c in stroke]
        draw.line(pts, fill=0, width=pen, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=0)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@dataclass
class Sample:
    name: str
    image: bytes  # the file's bytes
    answer: str
    ink: Array | None = None  # what was written, before the camera


def digit_photos(mnist: data.MnistData, count: int = 60, seed: int = 19) -> list[Sample]:
    """``count`` photos of single digits: two in three in a font (each family in turn, regular,
    bold, light and outlined), one in three MNIST's handwriting (test digits)."""
    rng = np.random.default_rng(seed)
    families = fonts()
    names = sorted(families)
    out = []
    for k in range(count):
        digit = k % 10
        look = random_look(rng)
        if k % 3 == 2:
            i = int(np.nonzero(mnist.test_labels == digit)[0][k // 10 + 5])
            ink, source = mnist_ink(mnist.test_images[i], 200), f"mnist{i}"
        else:
            family = names[k % len(names)]
            path = families[family][(k // len(names)) % len(families[family])]
            stroke = int(rng.choice([0, 0, 0, 2, 4]))
            ink = text_ink(str(digit), path, 160, stroke)
            source = f"{family}:{os.path.basename(path) or 'default'}:+{stroke}"
        image = photograph(ink, look, rng)
        out.append(Sample(f"photo{k:02d}-{digit}-{source}", image, str(digit), ink))
    return out


NUMBERS = ["2026", "47", "315", "90817", "58", "6342"]


def number_photos(mnist: data.MnistData, seed: int = 7) -> list[Sample]:
    """Numbers of 2-5 digits: each of NUMBERS once in a font, once in MNIST's handwriting
    (neighbouring digits' boxes overlapping a little, as handwriting does)."""
    rng = np.random.default_rng(seed)
    families = fonts()
    names = sorted(families)
    out = []
    for k, number in enumerate(NUMBERS):
        look = random_look(rng, (300, 640))
        look.ink_height = float(rng.uniform(0.3, 0.45))
        look.rotation = float(rng.uniform(-5, 5))
        family = names[k % len(names)]
        path = families[family][0]
        ink = text_ink(number, path, 120, int(rng.choice([0, 2])))
        out.append(Sample(f"number{k}-{family}", photograph(ink, look, rng), number))
    for k, number in enumerate(NUMBERS):
        look = random_look(rng, (300, 640))
        look.ink_height = float(rng.uniform(0.3, 0.45))
        look.rotation = float(rng.uniform(-5, 5))
        inks = []
        for d in number:
            i = int(rng.choice(np.nonzero(mnist.test_labels == int(d))[0][:50]))
            inks.append(tight(mnist_ink(mnist.test_images[i], 120)))
        gaps = [int(rng.integers(-2, 24)) for _ in number[1:]]
        out.append(Sample(f"number{k}-mnist", photograph(row_of(inks, gaps), look, rng), number))
    return out


def drawn_digits(mnist: data.MnistData, per_class: int = 4) -> list[Sample]:
    """The first ``per_class`` test digits of each class, drawn as strokes on the canvas."""
    out = []
    for digit in range(10):
        for i in np.nonzero(mnist.test_labels == digit)[0][:per_class]:
            out.append(Sample(f"drawn{i}", drawn_digit(mnist.test_images[i]), str(digit)))
    return out


def read(model: Any, sample: Sample, number: bool = False) -> str:
    gray = imaging.decode(sample.image, sample.name, imaging.WORK_SIDE)
    if number:
        fields = imaging.fit_number(gray, sample.name)
        return "".join(str(d) for d in model.predict(fields))
    return str(int(model.predict(imaging.fit_like_mnist(gray, sample.name)[None])[0]))
