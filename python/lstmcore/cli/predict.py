"""``python -m lstmcore.predict [--number] CHECKPOINT IMAGE...``: the digit, or the number, in
each image.

Each image (any format Pillow reads, drawn or photographed) is prepared as MNIST's digits were
(see :mod:`lstmcore.imaging`: ink separated from the paper under uneven light, ruled lines,
specks and the frame dropped, the digit scaled into 20x20 and centred by its centre of mass in
28x28). One line per image on stdout, in the order given: ``PATH: DIGIT (PP.P%)``, the
probability of that digit; with ``--number``, the image holds one row of digits, found as groups
of ink left to right, and the line is ``PATH: 2026 (91.3%)``, the probability that every digit
is right (the product of the digits' probabilities). An image that cannot be read, or holds no
digit, gets one ``error:`` line on stderr; the others are still predicted, and the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lstmcore.mnist import checkpoint, imaging, model


@dataclass
class Reading:
    """What the model reads in one image: ``text`` (one digit, or a number's digits),
    ``probability`` (of that digit, or the product over the number's digits) and
    ``probabilities`` ((n, 10) float32: each digit's ten class probabilities, left to right)."""

    text: str
    probability: float
    probabilities: NDArray[np.float32]


def load_classifier(path: str | os.PathLike[str]) -> model.Classifier:
    """A checkpoint whose model reads MNIST's 28x28 images; CheckpointError otherwise."""
    classifier = model.load(path)
    if classifier.image_shape != (imaging.FIELD, imaging.FIELD):
        raise checkpoint.CheckpointError(
            f"{path}: the model reads {classifier.image_shape} images; "
            f"predict prepares images as MNIST's {imaging.FIELD}x{imaging.FIELD}"
        )
    return classifier


def read_digit(classifier: model.Classifier, gray: NDArray[np.float32], name: str) -> Reading:
    """The one digit in a grayscale image (its largest); ImageError when it holds none."""
    probs = classifier.predict_proba(imaging.fit_like_mnist(gray, name)[None])
    digit = int(np.argmax(probs[0]))
    return Reading(str(digit), float(probs[0, digit]), probs)


def read_number(classifier: model.Classifier, gray: NDArray[np.float32], name: str) -> Reading:
    """The row of digits in a grayscale image, left to right; ImageError when it holds none."""
    probs = classifier.predict_proba(imaging.fit_number(gray, name))
    digits = probs.argmax(axis=1)
    chosen = probs[np.arange(len(digits)), digits].astype(np.float64)
    return Reading("".join(str(int(d)) for d in digits), float(np.prod(chosen)), probs)


def result_line(path: str, reading: Reading) -> str:
    return f"{path}: {reading.text} ({100.0 * reading.probability:.1f}%)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.predict",
        description="Classify your own digit images with a trained checkpoint "
        "(needs Pillow: pip install 'lstmcore[image]').",
    )
    parser.add_argument(
        "--number",
        action="store_true",
        help="each image holds one row of digits (a number): print them all, with the "
        "probability that every digit is right",
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, ... files")
    args = parser.parse_args(argv)
    try:
        imaging.require_pillow()
        classifier = load_classifier(args.checkpoint)
    except (imaging.ImageError, checkpoint.CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    read = read_number if args.number else read_digit
    status = 0
    for path in args.images:
        try:
            gray = imaging.load_grayscale(path, imaging.WORK_SIDE)
            reading = read(classifier, gray, path)
        except imaging.ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(result_line(path, reading), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
