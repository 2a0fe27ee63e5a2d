"""``python -m lstmcore.predict CHECKPOINT IMAGE...``: the digit in each image.

Each image (any format Pillow reads) is prepared as MNIST's digits were (see
:mod:`lstmcore.imaging`: grayscale, light backgrounds inverted, the digit scaled into 20x20 and
centred by its centre of mass in 28x28). One line per image on stdout, in the order given:
``PATH: DIGIT (PP.P%)``, the probability of that digit. An image that cannot be read gets one
``error:`` line on stderr; the others are still predicted, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from numpy.typing import NDArray

from lstmcore import checkpoint, imaging, model


def result_line(path: str, probs: NDArray[np.float32]) -> str:
    digit = int(np.argmax(probs))
    return f"{path}: {digit} ({100.0 * float(probs[digit]):.1f}%)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.predict",
        description="Classify your own digit images with a trained checkpoint "
        "(needs Pillow: pip install 'lstmcore[image]').",
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, ... files")
    args = parser.parse_args(argv)
    try:
        imaging.require_pillow()
        classifier = model.load(args.checkpoint)
        if classifier.image_shape != (imaging.FIELD, imaging.FIELD):
            raise checkpoint.CheckpointError(
                f"{args.checkpoint}: the model reads {classifier.image_shape} images; "
                f"predict prepares images as MNIST's {imaging.FIELD}x{imaging.FIELD}"
            )
    except (imaging.ImageError, checkpoint.CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = 0
    for path in args.images:
        try:
            probs = classifier.predict_proba(imaging.prepare(path)[None])[0]
        except imaging.ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(result_line(path, probs), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
