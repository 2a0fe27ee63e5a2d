"""The trained classifier as an ONNX model (``python -m lstmcore.export CHECKPOINT OUT.onnx``).

Input ``images``: (batch, rows, cols) float32 in [0, 1] (batch dynamic); output ``logits``:
(batch, classes). The graph holds the task's input transform (rows: a transpose to time-major;
pixels: 784 steps of 1 pixel; permuted: a Gather with the stored permutation), then ONNX's own
LSTM operator per layer (both directions in one node when bidirectional), then the linear head
(Gemm) on the top layer's final hidden states. Needs the ``onnx`` package
(``pip install 'lstmcore[onnx]'``); run it with onnxruntime::

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    logits = session.run(["logits"], {"images": images})[0]   # images float32 in [0, 1]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files
from lstmcore._onnx_graph import (
    OPSET,
    ExportError,
    Graph,
    LstmLayer,
    lstm_layers,
    sequence_classifier,
)
from lstmcore.mnist import model

Array = NDArray[Any]

__all__ = [
    "OPSET",
    "ExportError",
    "LstmLayer",
    "build_onnx",
    "check_output",
    "export",
    "lstm_layers",
]


def _time_major(g: Graph, task: model.Task) -> str:
    """images (N, rows, cols) -> x (T, N, I), as Task.sequences does then the core's layout."""
    if task.name == "rows":
        return g.one("Transpose", ["images"], perm=[1, 0, 2])
    flat = g.one("Reshape", ["images", g.const("flat_shape", np.array([0, -1], np.int64))])
    if task.permutation is not None:
        perm = g.const("permutation", task.permutation.astype(np.int64))
        flat = g.one("Gather", [flat, perm], axis=1)
    steps = g.one("Transpose", [flat], perm=[1, 0])
    return g.one("Unsqueeze", [steps, g.const("step_axes", np.array([2], np.int64))])


def build_onnx(classifier: model.Classifier) -> Any:
    """The classifier as an onnx.ModelProto (checked by onnx.checker)."""
    return sequence_classifier(
        classifier.network.params,
        classifier.image_shape,
        lambda g: _time_major(g, classifier.task),
        doc=f"lstmcore {classifier.task.name} classifier; images float32 in [0, 1]",
    )


def check_output(checkpoint_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """ExportError when ``out`` is the checkpoint itself (the same file under another name, a
    symlink or a hard link: replacing it would destroy the checkpoint); NotRegularFileError
    (an OSError) when it exists and is not a regular file (a device or FIFO would be replaced
    by a regular file, a directory cannot be). A missing ``out`` is fine."""
    try:
        target = os.stat(out)
    except FileNotFoundError:
        return
    if os.path.samestat(target, os.stat(checkpoint_path)):
        raise ExportError(
            f"{out}: the output is the checkpoint {checkpoint_path} itself; not replacing it"
        )
    _files.check_regular(out, target.st_mode)


def export(checkpoint_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Writes the checkpoint's classifier to ``out`` as ONNX, only by an atomic rename over it
    (see :func:`check_output` for the outputs refused)."""
    classifier = model.load(checkpoint_path)
    check_output(checkpoint_path, out)
    proto = build_onnx(classifier)
    with _files.atomic_write(out) as (handle, _):
        handle.write(proto.SerializeToString())
