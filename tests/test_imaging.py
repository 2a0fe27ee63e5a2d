"""Image preparation (lstmcore.imaging): MNIST's own digits survive it, either polarity, any
format; the documented rules (inversion, 20x20 box, centre of mass) hold on constructed images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trained import trained_run

import lstmcore
from lstmcore import data, imaging

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
    bar[20:180, 100:140] = 1.0  # 160 x 40: becomes 20 x 5
    out = imaging.fit_like_mnist(bar)
    rows = np.nonzero(out.max(axis=1) > 0.5)[0]
    cols = np.nonzero(out.max(axis=0) > 0.5)[0]
    assert rows.size == 20 and cols.size == 5


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
