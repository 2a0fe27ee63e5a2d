"""Image preparation (lstmcore.imaging): MNIST's own digits survive it, either polarity, any
format; the documented rules (inversion, 20x20 box, centre of mass) hold on constructed images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_photos import drawn_digit
from trained import trained_run

import lstmcore
from lstmcore.mnist import data, imaging

Image = pytest.importorskip("PIL.Image")

DIGITS = range(20)  # the first 20 test digits: every class at least once


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def _to_bytes(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_an_mnist_digit_comes_back_almost_unchanged(mnist: data.MnistData, tmp_path: Path) -> None:
    # MNIST's digits already went through this preparation: redoing it moves little
    errors = []
    for i in DIGITS:
        prepared = imaging.prepare(_save(tmp_path / "d.png", _to_bytes(mnist.test_images[i])))
        assert prepared.shape == (28, 28) and prepared.dtype == np.float32
        assert prepared.min() >= 0.0 and prepared.max() <= 1.0
        errors.append(np.abs(prepared - mnist.test_images[i]).mean())
    assert np.median(errors) < 0.03, errors


def test_black_on_white_and_white_on_black_give_the_same_digit(
    mnist: data.MnistData, tmp_path: Path
) -> None:
    for i in DIGITS:
        pixels = _to_bytes(mnist.test_images[i])
        normal = imaging.prepare(_save(tmp_path / "w.png", pixels))
        inverted = imaging.prepare(_save(tmp_path / "b.png", 255 - pixels))
        np.testing.assert_allclose(inverted, normal, atol=1e-6)


def test_known_test_digits_saved_as_images_predict_their_labels(
    mnist: data.MnistData, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = lstmcore.load(trained_run(tmp_path_factory) / "best.npz")
    photos_right = 0
    for i in DIGITS:
        pixels = _to_bytes(mnist.test_images[i])
        files = [
            _save(tmp_path / "white_on_black.png", pixels),
            _save(tmp_path / "black_on_white.png", 255 - pixels),
        ]
        predicted = model.predict(np.stack([imaging.prepare(f) for f in files]))
        assert list(predicted) == [mnist.test_labels[i]] * 2, (i, predicted)
        # 4x larger, JPEG, colour: resampled twice, so a borderline digit may flip
        big = np.asarray(Image.fromarray(pixels).resize((112, 112), Image.Resampling.BICUBIC))
        photo = imaging.prepare(_save(tmp_path / "photo.jpg", 255 - big, "RGB"))
        photos_right += int(model.predict(photo[None])[0] == mnist.test_labels[i])
    assert photos_right >= len(DIGITS) - 2


def test_light_backgrounds_are_inverted_dark_ones_kept() -> None:
    stroke = np.zeros((40, 30), np.float32)
    stroke[8:32, 12:18] = 1.0
    bright = imaging.fit_like_mnist(stroke)
    dark_ink = imaging.fit_like_mnist(1.0 - stroke)
    np.testing.assert_allclose(bright, dark_ink, atol=1e-6)
    assert bright.max() == pytest.approx(1.0, abs=0.05) and bright[0, 0] == 0.0


def test_the_bounding_box_is_scaled_into_20x20_keeping_its_aspect_ratio() -> None:
    bar = np.zeros((200, 300), np.float32)
    bar[20:180, 100:124] = 1.0  # 160 x 24: becomes 20 x 3 (a stroke as wide as MNIST's)
    out = imaging.fit_like_mnist(bar)
    rows = np.nonzero(out.max(axis=1) > 0.5)[0]
    cols = np.nonzero(out.max(axis=0) > 0.5)[0]
    assert rows.size == 20 and cols.size == 3


def test_the_centre_of_mass_lands_on_the_centre() -> None:
    blob = np.zeros((60, 60), np.float32)
    blob[5:20, 40:52] = 1.0  # far off centre
    blob[5:8, 40:44] = 0.5  # and lopsided
    out = imaging.fit_like_mnist(blob)
    ys, xs = np.indices(out.shape)
    cy, cx = (ys * out).sum() / out.sum(), (xs * out).sum() / out.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_transparent_canvas_reads_as_paper(tmp_path: Path) -> None:
    rgba = np.zeros((50, 50, 4), np.uint8)  # transparent black everywhere...
    rgba[10:40, 22:28] = (0, 0, 0, 255)  # ...and an opaque black stroke
    path = tmp_path / "drawn.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = imaging.prepare(path)
    assert out[14, 14] > 0.9 and out[0, 0] == 0.0


def test_unreadable_and_empty_images_raise_image_error_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    with pytest.raises(imaging.ImageError, match=r"garbage\.png: cannot read image"):
        imaging.prepare(garbage)
    with pytest.raises(imaging.ImageError, match=r"missing\.png: cannot read image"):
        imaging.prepare(tmp_path / "missing.png")
    blank = _save(tmp_path / "blank.png", np.full((28, 28), 200, np.uint8))
    with pytest.raises(imaging.ImageError, match=r"blank\.png: no digit found"):
        imaging.prepare(blank)
    tiny = _save(tmp_path / "tiny.png", np.array([[255]], np.uint8))
    with pytest.raises(imaging.ImageError, match="no digit"):
        imaging.prepare(tiny)


# ---- photos: light, paper, lines, frame, specks, stroke width, numbers ------------------------


def _flood_labels(mask: np.ndarray) -> np.ndarray:
    """A plain reference for imaging.label: breadth-first flood fill, 8-connected."""
    out = np.zeros(mask.shape, np.int32)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if out[start]:
            continue
        count += 1
        out[start] = count
        queue = [start]
        while queue:
            r, c = queue.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    q = (r + dr, c + dc)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1]:
                        if mask[q] and not out[q]:
                            out[q] = count
                            queue.append(q)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (7, 33), (40, 29)])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.55, 1.0])
def test_label_finds_the_same_groups_as_a_flood_fill(
    rng: np.random.Generator, shape: tuple[int, int], density: float
) -> None:
    mask = rng.random(shape) < density
    groups = imaging.label(mask)
    reference = _flood_labels(mask)
    assert groups.count == reference.max()
    # the same partition: each reference group is exactly one of ours
    pairs = set(zip(reference.ravel().tolist(), groups.labels.ravel().tolist(), strict=True))
    assert len(pairs) == groups.count + int((~mask).any())
    assert np.array_equal(groups.labels > 0, mask)
    for g in range(groups.count):
        ys, xs = np.nonzero(groups.labels == g + 1)
        assert (groups.area[g], groups.top[g], groups.bottom[g]) == (ys.size, ys.min(), ys.max())
        assert (groups.left[g], groups.right[g]) == (xs.min(), xs.max())


def _paper(digit: np.ndarray, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """An MNIST digit written dark on white paper, 8x larger, in the middle of the sheet."""
    big = np.asarray(
        Image.fromarray(_to_bytes(digit)).resize((224, 224), Image.Resampling.BICUBIC),
        np.float32,
    )
    sheet = np.zeros(size, np.float32)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    sheet[top : top + 224, left : left + 224] = big / 255.0
    return 1.0 - sheet


def _same_digit(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_light_falling_off_across_the_sheet_and_gray_paper_are_removed(
    mnist: data.MnistData,
) -> None:
    for i in range(5):
        clean = _paper(mnist.test_images[i])
        ys, xs = np.mgrid[0 : clean.shape[0], 0 : clean.shape[1]]
        light = 0.85 - 0.45 * xs / clean.shape[1] - 0.15 * ys / clean.shape[0]  # 0.85 -> 0.25
        photo = clean * light
        assert _same_digit(imaging.fit_like_mnist(photo), imaging.fit_like_mnist(clean)) < 0.02


def test_a_dark_vignette_does_not_turn_the_paper_into_ink(mnist: data.MnistData) -> None:
    clean = _paper(mnist.test_images[0])
    ys, xs = np.mgrid[0 : clean.shape[0], 0 : clean.shape[1]]
    r2 = ((ys / clean.shape[0] - 0.5) ** 2 + (xs / clean.shape[1] - 0.5) ** 2) / 0.5
    photo = clean * (0.9 - 0.6 * r2)  # corners at 30% of the centre's light
    assert _same_digit(imaging.fit_like_mnist(photo), imaging.fit_like_mnist(clean)) < 0.03


def test_ruled_lines_are_dropped_and_the_strokes_across_them_kept(mnist: data.MnistData) -> None:
    for i in range(5):
        clean = _paper(mnist.test_images[i])
        ruled = clean.copy()
        for y in range(14, ruled.shape[0], 36):  # lines through the digit, 2 pixels thick
            ruled[y : y + 2, :] = np.minimum(ruled[y : y + 2, :], 0.45)
        assert _same_digit(imaging.fit_like_mnist(ruled), imaging.fit_like_mnist(clean)) < 0.03


def test_the_table_at_the_edge_and_specks_of_dirt_are_dropped(
    mnist: data.MnistData, rng: np.random.Generator
) -> None:
    for i in range(5):
        clean = _paper(mnist.test_images[i])
        photo = clean.copy()
        photo[:, :10] = 0.1  # the table beside the sheet, and along the bottom
        photo[-8:, :] = 0.1
        for y, x in zip(rng.integers(5, 235, 12), rng.integers(12, 315, 12), strict=True):
            photo[y : y + 2, x : x + 2] = 0.2  # dust
        assert _same_digit(imaging.fit_like_mnist(photo), imaging.fit_like_mnist(clean)) < 0.03


def test_noise_blur_and_jpeg_leave_the_digit(
    mnist: data.MnistData, rng: np.random.Generator
) -> None:
    import io

    from PIL import ImageFilter

    clean = _paper(mnist.test_images[3])
    noisy = np.clip(0.8 * clean + rng.normal(0, 0.04, clean.shape), 0, 1)
    img = Image.fromarray(_to_bytes(noisy)).filter(ImageFilter.GaussianBlur(1.5))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=60)
    photo = imaging.decode(buffer.getvalue(), "photo.jpg")
    assert _same_digit(imaging.fit_like_mnist(photo), imaging.fit_like_mnist(clean)) < 0.04


@pytest.mark.parametrize("pen", [3, 22, 60])
def test_strokes_far_thinner_or_thicker_than_mnists_are_brought_to_its_width(
    mnist: data.MnistData, pen: int
) -> None:
    # the same strokes drawn on the page's 280x280 canvas with a hairline, the page's pen and
    # a marker: after preparation all are within MNIST's 5-95% stroke widths
    lo, hi = imaging.STROKE_BAND
    for i in range(3):
        drawn = imaging.decode(drawn_digit(mnist.test_images[i], pen=pen))
        assert lo <= imaging.stroke_width(imaging.fit_like_mnist(drawn)) <= hi


def test_number_digits_are_found_left_to_right_with_detached_parts_kept(
    mnist: data.MnistData,
) -> None:
    # 5 (MNIST test digit 15, whose bar is detached), 7, 1 side by side with gaps
    fives = [i for i in range(200) if mnist.test_labels[i] == 5]
    parts = [mnist.test_images[i] for i in (fives[0], 0, 2)]  # 5, 7, 1
    row = np.concatenate([np.pad(p, ((0, 0), (2, 2))) for p in parts], axis=1)
    fields = imaging.fit_number(row)
    assert fields.shape == (3, 28, 28)
    for field, part in zip(fields, parts, strict=True):
        assert _same_digit(field, imaging.fit_like_mnist(part)) < 0.02


def test_decode_reads_bytes_as_files_are_read_and_bounds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / "x.png", np.arange(600, dtype=np.uint8).reshape(20, 30))
    np.testing.assert_array_equal(imaging.decode(path.read_bytes()), imaging.load_grayscale(path))
    assert imaging.decode(path.read_bytes(), max_side=15).shape == (10, 15)
    monkeypatch.setattr(imaging, "MAX_PIXELS", 599)
    with pytest.raises(imaging.TooLargeError, match=r"^upload: image too large \(30x20\)"):
        imaging.decode(path.read_bytes(), "upload")
    with pytest.raises(imaging.ImageError, match=r"^upload: cannot read image: cannot identify"):
        imaging.decode(b"not an image", "upload")


def test_no_digit_is_its_own_error(tmp_path: Path) -> None:
    blank = _save(tmp_path / "blank.png", np.full((80, 80), 200, np.uint8))
    with pytest.raises(imaging.NoDigitError):
        imaging.prepare(blank)
    with pytest.raises(imaging.NoDigitError):
        imaging.prepare_number(blank)
