"""What predict, export and evaluate read and write: only regular files are read (a FIFO is
refused, never opened for reading), export never replaces its own input or a device, labels are
bounded by the model's classes, oversized images are refused before decoding, and errors name
the user's path, never a temporary file."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from lstmcore import _files
from lstmcore.cli import evaluate
from lstmcore.cli import export as export_cli
from lstmcore.mnist import checkpoint, data, imaging
from lstmcore.mnist.model import Task, task_record
from lstmcore.nn import SequenceClassifier


def small_checkpoint(path: Path, image_shape: tuple[int, int] = (28, 28)) -> Path:
    """An untrained rows classifier of ``image_shape`` images (instant: no training)."""
    net = SequenceClassifier(image_shape[1], 8, 10, seed=3)
    task_meta, arrays = task_record(Task("rows"), image_shape)
    checkpoint.save(path, net.params, {}, {"model": net.config, "task": task_meta}, arrays)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` gray pixels, with almost no data:
    what a decompression bomb looks like before its pixels are decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def digit_png(path: Path) -> Path:
    from PIL import Image

    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255  # a "1"
    Image.fromarray(image).save(path)
    return path


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---- item 8: inputs that are not regular files ----------------------------------------------


@pytest.mark.subprocess
def test_predict_refuses_fifos_directories_and_devices_and_reads_the_files_after_them(
    tmp_path: Path,
) -> None:
    pytest.importorskip("PIL")
    ckpt = small_checkpoint(tmp_path / "model.npz")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # no writer: opening it for reading blocks forever
    folder = tmp_path / "folder.png"
    folder.mkdir()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(13000, 13000))
    good = digit_png(tmp_path / "good.png")
    inputs = [fifo, folder, Path(os.devnull), bomb, good]
    proc = subprocess.run(
        [sys.executable, "-m", "lstmcore.predict", str(ckpt), *map(str, inputs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {fifo}: a FIFO, not a regular file",
        f"error: {folder}: a directory, not a regular file",
        f"error: {os.devnull}: a character device, not a regular file",
        f"error: {bomb}: image too large (13000x13000): more than 40,000,000 pixels",
    ]
    assert one_line(proc.stdout).startswith(f"{good}: ")


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = os.stat(__file__)

    class StatSaysRegular:
        """os, except that the path was a regular file when it was checked: it became a
        FIFO between the check and the open."""

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def stat(self, path: object) -> os.stat_result:
            return regular if path == fifo else os.stat(path)  # type: ignore[arg-type]

    monkeypatch.setattr(_files, "os", StatSaysRegular())
    errors: list[BaseException] = []

    def read() -> None:
        try:
            _files.open_regular(fifo).close()
        except OSError as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open: a writer releases it, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("open_regular blocked on a FIFO")
    assert len(errors) == 1 and isinstance(errors[0], _files.NotRegularFileError)
    assert str(errors[0]) == f"{fifo}: a FIFO, not a regular file"


def test_data_files_that_are_not_regular_files_are_named(tmp_path: Path) -> None:
    fifo = tmp_path / "t10k-labels-idx1-ubyte"
    os.mkfifo(fifo)
    with pytest.raises(data.DataError) as err:
        data.read_idx(fifo)
    assert str(err.value) == f"{fifo}: a FIFO, not a regular file"


# ---- item 9: export never destroys its input or a device ------------------------------------


def _links(tmp_path: Path, ckpt: Path) -> dict[str, Path]:
    symlink, hardlink = tmp_path / "symlink.npz", tmp_path / "hardlink.npz"
    symlink.symlink_to(ckpt)
    os.link(ckpt, hardlink)
    return {"same": ckpt, "symlink": symlink, "hardlink": hardlink}


def test_export_refuses_to_write_over_its_own_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx")
    ckpt = small_checkpoint(tmp_path / "model.npz")
    before = ckpt.read_bytes()
    for out in _links(tmp_path, ckpt).values():
        assert export_cli.main([str(ckpt), str(out)]) == 1
        err = one_line(capsys.readouterr().err)
        assert err == f"error: {out}: the output is the checkpoint {ckpt} itself; not replacing it"
        assert ckpt.read_bytes() == before
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["hardlink.npz", "model.npz", "symlink.npz"]


def _device(path: Path) -> Path:
    try:  # a node like /dev/null's, in the test's own directory
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    return path


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("a FIFO", lambda p: os.mkfifo(p)),
        ("a directory", lambda p: p.mkdir()),
        ("a character device", _device),
    ],
)
def test_export_refuses_an_output_that_is_not_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, make: object
) -> None:
    pytest.importorskip("onnx")
    ckpt = small_checkpoint(tmp_path / "model.npz")
    out = tmp_path / "out.onnx"
    make(out)  # type: ignore[operator]
    mode = os.lstat(out).st_mode
    assert export_cli.main([str(ckpt), str(out)]) == 1
    assert one_line(capsys.readouterr().err) == f"error: {out}: {kind}, not a regular file"
    assert os.lstat(out).st_mode == mode  # still the FIFO, directory or device
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "out.onnx"]


def test_export_errors_name_the_output_never_the_temporary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx")
    ckpt = small_checkpoint(tmp_path / "model.npz")
    out = tmp_path / "missing" / "x.onnx"  # the temporary beside it cannot be created
    assert export_cli.main([str(ckpt), str(out)]) == 1
    err = one_line(capsys.readouterr().err)
    assert str(out) in err and _files.TEMP_SUFFIX not in err, err


def test_atomic_write_errors_name_the_target(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside").write_text("kept\n")
    for target in (folder, tmp_path / "missing" / "file"):  # rename fails; create fails
        with pytest.raises(OSError) as err:
            _files.write_text(target, "new\n")
        assert err.value.filename == str(target) and err.value.filename2 is None
        assert _files.TEMP_SUFFIX not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_a_failed_download_names_the_target_never_the_temporary(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "alpha.gz").write_bytes(gzip.compress(b"not what was expected"))
    with pytest.raises(data.DataError) as err:
        data.download(tmp_path / "cache", mirrors=[mirror.as_uri()], files={"alpha": "0" * 64})
    assert f"{tmp_path / 'cache' / 'alpha.gz'}: checksum mismatch" in str(err.value)
    assert _files.TEMP_SUFFIX not in str(err.value)


# ---- item 11: labels, a None in a message, oversized images ---------------------------------


def idx_file(path: Path, array: np.ndarray, type_code: int) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes(), 1))


def labelled_dataset(directory: Path, train_labels: np.ndarray, test_labels: np.ndarray) -> Path:
    """An MNIST-format data set of random images with these labels (int32 IDX files)."""
    rng = np.random.default_rng(11)
    directory.mkdir()
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        idx_file(directory / f"{prefix}-images-idx3-ubyte.gz", images, 0x08)
        idx_file(directory / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(">i4"), 0x0C)
    return directory


def test_evaluate_refuses_test_labels_beyond_the_models_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = small_checkpoint(tmp_path / "model.npz")
    labels = np.arange(20) % 10
    test = labels.copy()
    test[7] = 10  # one class more than the model's 10: it would be a row of the matrix
    directory = labelled_dataset(tmp_path / "data", labels, test)
    assert evaluate.main([str(ckpt), "--data-dir", str(directory)]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"error: {directory / 't10k-labels-idx1-ubyte.gz'}: label 10 is outside "
        "the model's 10 classes (0..9)"
    )


def test_labels_beyond_the_class_limit_are_refused_naming_the_file(tmp_path: Path) -> None:
    labels = np.arange(20) % 10
    forged = labels.copy()
    forged[3] = 60000  # 60001 classes: a 26.8 GiB confusion matrix
    directory = labelled_dataset(tmp_path / "data", forged, labels)
    with pytest.raises(data.DataError) as err:
        data.load_mnist(directory)
    assert str(err.value) == (
        f"{directory / 'train-labels-idx1-ubyte.gz'}: label 60000 is outside the limit of "
        f"{data.MAX_CLASSES} classes (0..{data.MAX_CLASSES - 1})"
    )


def test_evaluate_on_the_bundled_data_names_its_directory_not_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = small_checkpoint(tmp_path / "small.npz", image_shape=(14, 14))
    assert evaluate.main([str(ckpt)]) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        f"error: {data.bundled_dir()}: images are (28, 28), the model reads (14, 14)"
    ), err
    assert "None" not in err


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((13000, 13000), "image too large (13000x13000): more than 40,000,000 pixels"),
        ((8000, 5001), "image too large (8000x5001): more than 40,000,000 pixels"),
        # beyond twice Pillow's own limit, its error comes before the size is known
        ((20000, 20000), "image too large: more than 40,000,000 pixels"),
    ],
)
def test_oversized_images_are_refused_before_decoding_with_one_line(
    tmp_path: Path, size: tuple[int, int], message: str
) -> None:
    pytest.importorskip("PIL")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(*size))
    # the suite turns warnings into errors: Pillow's DecompressionBombWarning would fail here
    with pytest.raises(imaging.ImageError) as err:
        imaging.prepare(bomb)
    assert str(err.value) == f"{bomb}: {message}"


def test_an_image_at_the_pixel_limit_is_read_one_more_row_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    monkeypatch.setattr(imaging, "MAX_PIXELS", 30 * 20)
    at, over = tmp_path / "at.png", tmp_path / "over.png"
    Image.new("L", (30, 20)).save(at)
    Image.new("L", (30, 21)).save(over)
    assert imaging.load_grayscale(at).shape == (20, 30)
    with pytest.raises(imaging.ImageError, match=r"image too large \(30x21\): more than 600 "):
        imaging.load_grayscale(over)
