"""``python -m lstmcore.evaluate CHECKPOINT [--data-dir DIR]``: test accuracy of a checkpoint.

Prints the confusion matrix, then ``test accuracy: XX.XX% (correct/total)`` as the last line.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lstmcore import checkpoint, data
from lstmcore.nn import SequenceClassifier, upgrade_v01_params
from lstmcore.report import accuracy_line, confusion_matrix, format_confusion

_SHAPE_KEYS = {"input_size", "hidden_size", "num_classes"}
_LAYER_KEYS = {"num_layers", "bidirectional", "dropout"}  # absent in lstmcore 0.1's files


def load_model(path: str) -> SequenceClassifier:
    """The classifier stored in a checkpoint (validated before use)."""
    params, _, meta, _ = checkpoint.load(path)
    shape = meta.get("model")
    if not isinstance(shape, dict) or not _SHAPE_KEYS <= set(shape) <= _SHAPE_KEYS | _LAYER_KEYS:
        raise checkpoint.CheckpointError(f"{path}: no model description in its metadata")
    try:
        model = SequenceClassifier(
            int(shape["input_size"]),
            int(shape["hidden_size"]),
            int(shape["num_classes"]),
            num_layers=int(shape.get("num_layers", 1)),
            bidirectional=bool(shape.get("bidirectional", False)),
            dropout=float(shape.get("dropout", 0.0)),
        )
    except (TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path}: bad model description: {err}") from err
    # lstmcore 0.1 wrote one bias under other names: the same model under today's names
    checkpoint.assign_params(path, upgrade_v01_params(params), model.params)
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
        model = load_model(args.checkpoint)
        mnist = data.load_mnist(args.data_dir)
        if mnist.test_images.shape[2] != model.config["input_size"]:
            raise data.DataError(
                f"{args.data_dir}: images are {mnist.test_images.shape[1:]}, "
                f"the model reads rows of {model.config['input_size']}"
            )
    except (checkpoint.CheckpointError, data.DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    predicted = model.predict(mnist.test_images)
    correct = int(np.sum(predicted == mnist.test_labels))
    classes = max(model.config["num_classes"], mnist.num_classes)
    print(format_confusion(confusion_matrix(mnist.test_labels, predicted, classes)))
    print(accuracy_line(correct, len(mnist.test_labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
