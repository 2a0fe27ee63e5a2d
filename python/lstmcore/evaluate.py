"""``python -m lstmcore.evaluate CHECKPOINT [--data-dir DIR]``: test accuracy of a checkpoint.

Prints the confusion matrix, then ``test accuracy: XX.XX% (correct/total)`` as the last line.
"""

from __future__ import annotations

import argparse
import operator
import sys
from typing import Any

import numpy as np

from lstmcore import checkpoint, data
from lstmcore.nn import SequenceClassifier, upgrade_v01_params
from lstmcore.report import accuracy_line, confusion_matrix, format_confusion

_SHAPE_KEYS = ("input_size", "hidden_size", "num_classes")
_LAYER_KEYS = {"num_layers", "bidirectional", "dropout"}  # absent in lstmcore 0.1's files


def model_description(path: str, params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """SequenceClassifier's arguments from the checkpoint's metadata, checked against its
    arrays (under today's names: ``params`` already upgraded from 0.1) before anything is
    built: the model then allocates no more than the checkpoint already holds, whatever the
    metadata claims."""
    shape = meta.get("model")
    if not isinstance(shape, dict) or not set(_SHAPE_KEYS) <= set(shape) <= {
        *_SHAPE_KEYS,
        *_LAYER_KEYS,
    }:
        raise checkpoint.CheckpointError(f"{path}: no model description in its metadata")
    try:
        described = tuple(operator.index(shape[k]) for k in _SHAPE_KEYS)
        layers = operator.index(shape.get("num_layers", 1))
        bidirectional = shape.get("bidirectional", False)
        dropout = float(shape.get("dropout", 0.0))
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be true or false, got {bidirectional!r}")
        if not 0.0 <= dropout <= 1.0:  # NaN fails too
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
    except (TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path}: bad model description: {err}") from err
    w_ih, head = params.get("lstm.weight_ih_l0"), params.get("head.weight")
    if w_ih is None or head is None or w_ih.ndim != 2 or head.ndim != 2:
        raise checkpoint.CheckpointError(f"{path}: no lstm.weight_ih_l0 and head.weight matrices")
    held = (w_ih.shape[1], w_ih.shape[0] // 4, head.shape[0])
    directions = 2 if bidirectional else 1
    stored_layers = sum(name.startswith("lstm.weight_ih_l") for name in params) // directions
    if described != held or min(held) < 1 or layers != stored_layers or layers < 1:
        raise checkpoint.CheckpointError(
            f"{path}: model description {shape} does not match its arrays "
            f"(lstm.weight_ih_l0 {w_ih.shape}, head.weight {head.shape}, "
            f"{stored_layers} layer(s) of {directions} direction(s))"
        )
    return {
        "input_size": held[0],
        "hidden_size": held[1],
        "num_classes": held[2],
        "num_layers": layers,
        "bidirectional": bidirectional,
        "dropout": dropout,
    }


def load_model(path: str) -> SequenceClassifier:
    """The classifier stored in a checkpoint (validated before use)."""
    stored, _, meta, _ = checkpoint.load(path)
    # lstmcore 0.1 wrote one bias under other names: the same model under today's names
    params = upgrade_v01_params(stored)
    described = model_description(path, params, meta)
    model = SequenceClassifier(
        described["input_size"],
        described["hidden_size"],
        described["num_classes"],
        num_layers=described["num_layers"],
        bidirectional=described["bidirectional"],
        dropout=described["dropout"],
    )
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
