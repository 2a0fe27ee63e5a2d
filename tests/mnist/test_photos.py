"""Photos the tests make themselves: digits in several fonts and stroke widths, and MNIST's
handwriting, put on paper as a phone would see it (gray paper, light falling off across the
sheet, ruled lines, a table at the edge, sensor noise, blur, rotation, JPEG); numbers of 2-5
digits; digits drawn with a round pen as on the page's canvas. The preparation must read them
(issue 19's targets: >= 90% of the photos, >= 38 of 40 drawn digits, >= 5 of 6 numbers).

The generators are in helpers_photos.py (test_imaging, test_serve and test_browser use them too).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_photos import (
    MIN_FAMILIES,
    Sample,
    digit_photos,
    drawn_digits,
    fonts,
    mnist_ink,
    number_photos,
    read,
    require_system,
    row_of,
    tight,
)
from numpy.typing import NDArray
from trained import PHOTOS, trained_run

import lstmcore
from lstmcore.cli import predict
from lstmcore.mnist import data, imaging

Image = pytest.importorskip("PIL.Image")

Array = NDArray[Any]


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


@pytest.fixture(scope="module")
def families() -> dict[str, list[str]]:
    found = fonts()
    if len(found) < MIN_FAMILIES:
        require_system(
            f"photos in {MIN_FAMILIES} font families need system fonts, found {sorted(found)}: "
            "apt-get install fonts-dejavu-core fonts-liberation"
        )
    return found


# issue 19's targets hold for the default model (99% on MNIST's test set): point
# LSTMCORE_PHOTO_MODEL at its best.npz to check them. The suite's own reader (trained.PHOTOS,
# about 98%) misreads a few more font digits and numbers: trained with seeds 0-9 (and 0-3 on a
# build whose float32 gradients differed in the last bits) it read 52-57 of the 60 photos,
# 39-40 of 40 drawn digits and 8-11 of 12 numbers, so it is held to a little below the worst of
# those. The preparation's part is checked apart from the model: the photo must read as the
# same ink written cleanly on white reads.
ISSUE_TARGETS = {"photos": 0.90, "drawn": 38, "numbers": 10}  # numbers: of 12 (5 of 6)
SUITE_MODEL = {"photos": 0.83, "drawn": 38, "numbers": 7}


@pytest.fixture(scope="module")
def targets() -> dict[str, float]:
    return ISSUE_TARGETS if os.environ.get("LSTMCORE_PHOTO_MODEL") else SUITE_MODEL


@pytest.fixture(scope="module")
def reader_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # trained here, not inside a test: the trainer's result line would land in its capsys
    path = os.environ.get("LSTMCORE_PHOTO_MODEL")
    return Path(path) if path else trained_run(tmp_path_factory, PHOTOS) / "best.npz"


@pytest.fixture(scope="module")
def reader(reader_checkpoint: Path) -> Any:
    return lstmcore.load(reader_checkpoint)


@pytest.fixture(scope="module")
def photos(mnist: data.MnistData, families: dict[str, list[str]]) -> list[Sample]:
    return digit_photos(mnist, 60)


def test_photos_of_digits_in_five_fonts_and_handwriting_are_read(
    photos: list[Sample], reader: Any, targets: dict[str, float]
) -> None:
    assert len({s.name.split("-")[2].split(":")[0] for s in photos}) >= MIN_FAMILIES + 1
    wrong = [(s.name, got) for s in photos if (got := read(reader, s)) != s.answer]
    assert len(photos) - len(wrong) >= targets["photos"] * len(photos), wrong


def test_a_photo_reads_as_the_same_ink_written_cleanly_reads(
    photos: list[Sample], reader: Any
) -> None:
    # the preparation's own share: the light, paper, lines, table, noise, blur, rotation and
    # JPEG around the ink must not change what the model takes it for
    seen = reader.predict(
        np.stack([imaging.fit_like_mnist(imaging.decode(s.image, s.name, 640)) for s in photos])
    )
    clean = reader.predict(
        np.stack([imaging.fit_like_mnist(np.pad(s.ink, 30)) for s in photos if s.ink is not None])
    )
    differ = [
        (s.name, int(c), int(p)) for s, c, p in zip(photos, clean, seen, strict=True) if c != p
    ]
    # over those 14 models 0-5 of the 60 differed; a flat background in place of the paper's
    # level makes it 11, ruled lines left in the ink 25
    assert len(differ) <= 0.10 * len(photos), differ


def test_digits_drawn_with_a_pen_as_on_the_page_are_read(
    mnist: data.MnistData, reader: Any, targets: dict[str, float]
) -> None:
    drawn = drawn_digits(mnist)
    wrong = [(s.name, got) for s in drawn if (got := read(reader, s)) != s.answer]
    assert len(drawn) - len(wrong) >= targets["drawn"], wrong


def test_numbers_of_two_to_five_digits_are_cut_into_their_digits_and_read(
    mnist: data.MnistData, reader: Any, families: dict[str, list[str]], targets: dict[str, float]
) -> None:
    numbers = number_photos(mnist)
    assert {len(s.answer) for s in numbers} == {2, 3, 4, 5}
    read_as = [read(reader, s, number=True) for s in numbers]
    # finding the digits is the preparation's job alone: every count right
    assert [len(r) for r in read_as] == [len(s.answer) for s in numbers], read_as
    exact = sum(r == s.answer for r, s in zip(read_as, numbers, strict=True))
    assert exact >= targets["numbers"], list(zip(read_as, [s.answer for s in numbers], strict=True))


def test_touching_digits_are_cut_at_their_thinnest_column(
    mnist: data.MnistData, reader: Any
) -> None:
    # MNIST's 7, 2, 1 overlapping by 8 pixels at 120 pixels tall: one group of ink
    inks = [tight(mnist_ink(mnist.test_images[i], 120)) for i in (0, 1, 2)]
    row = row_of(inks, [-8, -8])
    assert imaging.label(row > 0.5).count == 1
    fields = imaging.fit_number(np.pad(1.0 - row, 40, constant_values=1.0))
    assert "".join(map(str, reader.predict(fields))) == "721"


def test_a_phone_sized_photo_is_read_as_its_small_copy(
    mnist: data.MnistData, reader: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    sample = digit_photos(mnist, 3)[2]  # MNIST handwriting
    small = Image.open(io.BytesIO(sample.image))
    big = tmp_path / "phone.jpg"
    small.resize((4032, 3024), Image.BICUBIC).save(big, quality=90)  # 12 MP, as a phone's
    fields = imaging.prepare(big)
    assert int(reader.predict(fields[None])[0]) == int(sample.answer)
    del rng


def test_predict_number_prints_the_number_and_the_product_of_its_probabilities(
    mnist: data.MnistData, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reader_checkpoint: Path, reader: Any,
) -> None:  # fmt: skip
    sample = number_photos(mnist)[6]  # "2026" in MNIST's handwriting
    path = tmp_path / "number.jpg"
    path.write_bytes(sample.image)
    blank = tmp_path / "blank.png"
    Image.new("L", (60, 40), 230).save(blank)
    assert predict.main(["--number", str(reader_checkpoint), str(path), str(blank)]) == 1
    out, err = capsys.readouterr()
    fields = imaging.prepare_number(path)
    probs = reader.predict_proba(fields)
    expected = "".join(str(d) for d in probs.argmax(axis=1))
    product = float(np.prod(probs.max(axis=1).astype(np.float64)))
    assert out == f"{path}: {expected} ({100 * product:.1f}%)\n"
    assert err == f"error: {blank}: no digit found (the image has no contrast)\n"
