"""``python -m lstmcore.evaluate CHECKPOINT [--data-dir DIR] [--precision {fp32,bf16}]``: test
accuracy of a checkpoint.

Prints the confusion matrix, then ``test accuracy: XX.XX% (correct/total)`` as the last line.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lstmcore.mnist import checkpoint, data
from lstmcore.mnist.model import load
from lstmcore.mnist.report import accuracy_line, confusion_matrix, format_confusion
from lstmcore.mnist.run import PRECISIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.evaluate", description="Test accuracy of a trained checkpoint."
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the MNIST-format files (default: bundled MNIST)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="arithmetic of the LSTM's GEMMs: fp32 (default) or bf16 (bf16-rounded operands, "
        "float32 accumulation); any checkpoint evaluates in either",
    )
    args = parser.parse_args(argv)
    try:
        # the network and its task (rows, pixels, permuted)
        classifier = load(args.checkpoint, precision=args.precision)
        # labels beyond the model's classes are refused: they would size the confusion matrix
        mnist = data.load_mnist(args.data_dir, num_classes=classifier.num_classes)
        try:
            classifier.check_images(mnist.test_images[:1])
        except ValueError as err:
            raise data.DataError(
                f"{mnist.directory}: images are {mnist.test_images.shape[1:]}, the model reads "
                f"{classifier.image_shape} ({err})"
            ) from err
    except (checkpoint.CheckpointError, data.DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    predicted = classifier.predict(mnist.test_images)
    correct = int(np.sum(predicted == mnist.test_labels))
    m = confusion_matrix(mnist.test_labels, predicted, classifier.num_classes)
    print(format_confusion(m))
    print(accuracy_line(correct, len(mnist.test_labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
