"""lstmcore.load, Classifier.predict / predict_proba, and python -m lstmcore.predict."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from trained import final_metrics, trained_run

import lstmcore
from lstmcore.cli import predict
from lstmcore.mnist import checkpoint, data
from lstmcore.mnist.model import Classifier


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def test_load_predict_and_predict_proba_shapes_and_dtypes(run: Path, mnist: data.MnistData) -> None:
    model = lstmcore.load(run / "best.npz")
    assert isinstance(model, Classifier)
    images = mnist.test_images[:37]
    labels = model.predict(images)
    probs = model.predict_proba(images)
    assert labels.shape == (37,) and labels.dtype == np.int64
    assert probs.shape == (37, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(probs >= 0.0)
    np.testing.assert_array_equal(probs.argmax(axis=1), labels)
    assert model.predict(images[:0]).shape == (0,)
    assert model.predict_proba(images[:0]).shape == (0, 10)


def test_predictions_agree_with_the_trainers_test_accuracy(
    run: Path, mnist: data.MnistData
) -> None:
    model = lstmcore.load(run / "best.npz")
    correct = int(np.sum(model.predict(mnist.test_images) == mnist.test_labels))
    assert correct == final_metrics(run)["test_correct"]  # evaluate's: see test_export
    assert correct > 9000  # a real model, so agreement is not between two constant outputs


def test_uint8_images_are_scaled_as_the_training_data(run: Path, mnist: data.MnistData) -> None:
    model = lstmcore.load(run / "last.npz")
    as_bytes = np.round(mnist.test_images[:50] * 255).astype(np.uint8)
    np.testing.assert_array_equal(model.predict(as_bytes), model.predict(mnist.test_images[:50]))
    np.testing.assert_allclose(
        model.predict_proba(as_bytes), model.predict_proba(mnist.test_images[:50]), atol=1e-6
    )
    # float64 and non-contiguous inputs are converted once, with the same result
    twice = np.repeat(mnist.test_images[:50].astype(np.float64), 2, axis=2)[:, :, ::2]
    np.testing.assert_array_equal(model.predict(twice), model.predict(mnist.test_images[:50]))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 28, 27), np.float32), r"images: expected shape \(B, 28, 28\), got \(2,"),
        (np.zeros((28, 28), np.float32), r"expected shape .*got \(28, 28\)"),
        (np.zeros((2, 28, 28), np.int64), r"uint8 \(0\.\.255\) or float in \[0, 1\], got dtype i"),
        (np.full((1, 28, 28), 255.0), r"in \[0, 1\], got values in \[255, 255\] \(divide 0\.\.255"),
        (np.full((1, 28, 28), np.nan), r"pixels must be finite and in \[0, 1\], got NaN or inf"),
        ([["a"]], r"images:"),
    ],
)  # fmt: skip
def test_bad_images_raise_one_clear_value_error(run: Path, images: object, message: str) -> None:
    model = lstmcore.load(run / "best.npz")
    with pytest.raises(ValueError, match=message):
        model.predict(images)


def test_a_file_that_is_not_a_checkpoint_gives_one_clear_error(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    for path in (pickled, text, foreign):
        with pytest.raises(checkpoint.CheckpointError) as err:
            lstmcore.load(path)
        message = str(err.value)
        assert "not an lstmcore checkpoint" in message and str(path) in message
        assert "\n" not in message and "allow_pickle" not in message
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        lstmcore.load(tmp_path / "missing.npz")


# ---- python -m lstmcore.predict ------------------------------------------------------------

LINE = re.compile(r"^(.+): (\d) \((\d{1,3}\.\d)%\)$")


def _save_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


def test_predict_cli_prints_one_exact_line_per_image_and_reports_bad_files_last(
    run: Path, mnist: data.MnistData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    good = [_save_png(tmp_path / f"digit{i}.png", mnist.test_images[i]) for i in range(3)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status = predict.main([str(run / "best.npz"), str(good[0]), str(broken), *map(str, good[1:])])
    out, err = capsys.readouterr()
    assert status == 1
    lines = out.splitlines()
    assert [LINE.match(line).group(1) for line in lines] == [str(p) for p in good]  # type: ignore[union-attr]
    model = lstmcore.load(run / "best.npz")
    probs = model.predict_proba(mnist.test_images[:3])
    for line, p in zip(lines, probs, strict=True):
        _, digit, percent = LINE.match(line).groups()  # type: ignore[union-attr]
        assert int(digit) == int(p.argmax())
        assert abs(float(percent) - 100 * float(p.max())) < 2.0  # same digit, prepared afresh
    assert err.splitlines() == [err.splitlines()[0]]
    assert err.startswith(f"error: {broken}: cannot read image")


def test_predict_cli_without_pillow_says_how_to_install_it(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert predict.main([str(run / "best.npz"), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: reading images needs Pillow: pip install 'lstmcore[image]'")
    assert len(err.splitlines()) == 1


def test_predict_cli_with_a_bad_checkpoint_gives_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    bogus = tmp_path / "best.npz"
    bogus.write_text("not a zip")
    assert predict.main([str(bogus), str(tmp_path / "x.png")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
