"""``python -m lstmcore.evaluate CHECKPOINT [--data-dir DIR]``: test accuracy of a checkpoint.

Prints the confusion matrix, then ``test accuracy: XX.XX% (correct/total)`` as the last line.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lstmcore import checkpoint, data
from lstmcore.nn import SequenceClassifier
from lstmcore.report import accuracy_line, confusion_matrix, format_confusion


def load_model(path: str) -> SequenceClassifier:
    """The classifier stored in a checkpoint (validated before use)."""
    params, _, meta, _ = checkpoint.load(path)
    shape = meta.get("model")
    if not isinstance(shape, dict) or set(shape) != {"input_size", "hidden_size", "num_classes"}:
        raise checkpoint.CheckpointError(f"{path}: no model description in its metadata")
    try:
        model = SequenceClassifier(
            int(shape["input_size"]), int(shape["hidden_size"]), int(shape["num_classes"])
        )
    except (TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path}: bad model description: {err}") from err
    checkpoint.assign_params(path, params, model.params)
    return model


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
    args = parser.parse_args(argv)
    try:
        from lstmcore.model import load

        classifier = load(args.checkpoint)  # the network and its task (rows, pixels, permuted)
        mnist = data.load_mnist(args.data_dir)
        try:
            classifier.check_images(mnist.test_images[:1])
        except ValueError as err:
            raise data.DataError(
                f"{args.data_dir}: images are {mnist.test_images.shape[1:]}, the model reads "
                f"{classifier.image_shape} ({err})"
            ) from err
    except (checkpoint.CheckpointError, data.DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    predicted = classifier.predict(mnist.test_images)
    model = classifier.network
    correct = int(np.sum(predicted == mnist.test_labels))
    classes = max(model.config["num_classes"], mnist.num_classes)
    print(format_confusion(confusion_matrix(mnist.test_labels, predicted, classes)))
    print(accuracy_line(correct, len(mnist.test_labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
