"""``python -m lstmcore.export CHECKPOINT OUT.onnx``: the trained classifier as an ONNX model.

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

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files, checkpoint, model

Array = NDArray[Any]

__all__ = [
    "IR_VERSION",
    "OPSET",
    "Graph",
    "LstmLayer",
    "build_onnx",
    "check_output",
    "export",
    "lstm_layers",
]

OPSET = 17  # LSTM, Gather, Gemm as used here are unchanged since; onnxruntime runs 7..23+
# opset 17's own IR version, not the newest the onnx package knows: every onnxruntime since
# 1.12 loads the model, whichever onnx wrote it
IR_VERSION = 8

# torch's gate blocks are i, f, g, o; ONNX's are i, o, f, c (c is torch's g)
_TORCH_TO_ONNX_GATES = [0, 3, 1, 2]


class ExportError(ValueError):
    """The model cannot be exported (or onnx is missing); the message says why."""


@dataclass(frozen=True)
class LstmLayer:
    """One layer's weights, one entry per direction (forward first), torch's gate order."""

    w_ih: list[Array]  # (4H, I) each
    w_hh: list[Array]  # (4H, H) each
    b_ih: list[Array]  # (4H,) each
    b_hh: list[Array]  # (4H,) each


def lstm_layers(params: dict[str, Array], prefix: str = "lstm.") -> list[LstmLayer]:
    """The LSTM's layers from a classifier's parameters, in either naming: lstmcore 0.1's one
    layer (``w_ih``, ``w_hh``, one ``bias``) or torch's state_dict names (``weight_ih_l{k}``,
    ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, each also with ``_reverse``)."""
    if f"{prefix}w_ih" in params:
        bias = params[f"{prefix}bias"]
        return [
            LstmLayer(
                [params[f"{prefix}w_ih"]], [params[f"{prefix}w_hh"]], [bias], [np.zeros_like(bias)]
            )
        ]
    layers = []
    pattern = re.compile(re.escape(prefix) + r"weight_ih_l(\d+)$")
    count = sum(1 for name in params if pattern.match(name))
    for k in range(count):
        suffixes = [f"_l{k}"] + (
            [f"_l{k}_reverse"] if f"{prefix}weight_ih_l{k}_reverse" in params else []
        )
        layer = LstmLayer([], [], [], [])
        for s in suffixes:
            w_ih = params[f"{prefix}weight_ih{s}"]
            zeros = np.zeros(w_ih.shape[0], dtype=w_ih.dtype)
            layer.w_ih.append(w_ih)
            layer.w_hh.append(params[f"{prefix}weight_hh{s}"])
            layer.b_ih.append(params.get(f"{prefix}bias_ih{s}", zeros))
            layer.b_hh.append(params.get(f"{prefix}bias_hh{s}", zeros))
        layers.append(layer)
    if not layers:
        raise ExportError("no LSTM weights found in the checkpoint's parameters")
    return layers


def _onnx_gates(w: Array) -> NDArray[np.float32]:
    """Rows (4H, ...) from torch's gate order to ONNX's."""
    h = w.shape[0] // 4
    blocks = w.reshape(4, h, *w.shape[1:])[_TORCH_TO_ONNX_GATES]
    out: NDArray[np.float32] = blocks.reshape(w.shape).astype(np.float32)
    return out


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ExportError(
            "exporting needs the onnx package: pip install 'lstmcore[onnx]' (or pip install onnx)"
        ) from err
    return onnx


class Graph:
    """An ONNX graph being built: nodes and initializers, then :meth:`model`. Generated names
    never collide. ExportError when the onnx package is missing."""

    def __init__(self) -> None:
        self.onnx = _require_onnx()
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: Array) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any
    ) -> list[str]:
        """Adds one node; ``outputs``: how many (named here) or their names ("" omits one)."""
        if isinstance(outputs, int):
            self._n += 1
            outputs = [f"{op.lower()}_{self._n}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, **attrs))
        return outputs

    def one(self, op: str, inputs: list[str], **attrs: Any) -> str:
        return self.node(op, inputs, 1, **attrs)[0]

    def lstm_weights(self, k: int, layer: LstmLayer) -> list[str]:
        """Layer ``k``'s inputs W (D, 4H, I), R (D, 4H, H) and B (D, 8H) = [Wb, Rb] of ONNX's
        LSTM operator, its gates in ONNX's order."""
        biases = [
            np.concatenate([_onnx_gates(bi), _onnx_gates(bh)])
            for bi, bh in zip(layer.b_ih, layer.b_hh, strict=True)
        ]
        return [
            self.const(f"W_l{k}", np.stack([_onnx_gates(m) for m in layer.w_ih])),
            self.const(f"R_l{k}", np.stack([_onnx_gates(m) for m in layer.w_hh])),
            self.const(f"B_l{k}", np.stack(biases)),
        ]

    def model(
        self,
        name: str,
        inputs: dict[str, list[str | int]],
        outputs: dict[str, list[str | int]],
        doc: str = "",
    ) -> Any:
        """The graph as an onnx.ModelProto (checked by onnx.checker); ``inputs`` and
        ``outputs``: float32 tensors, name -> shape (a str: a dynamic dimension)."""
        helper, tensor = self.onnx.helper, self.onnx.TensorProto.FLOAT
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(k, tensor, shape) for k, shape in inputs.items()],
            [helper.make_tensor_value_info(k, tensor, shape) for k, shape in outputs.items()],
            self.inits,
        )
        proto = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="lstmcore",
        )
        proto.doc_string = doc
        self.onnx.checker.check_model(proto, full_check=True)
        return proto


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


def _lstm(g: Graph, k: int, x: str, layer: LstmLayer, outputs: list[str]) -> None:
    """Layer ``k``'s LSTM node on x (T, N, I); ``outputs``: Y (T, D, N, H), Y_h (D, N, H)."""
    g.node(
        "LSTM",
        [x, *g.lstm_weights(k, layer)],
        outputs,
        hidden_size=layer.w_hh[0].shape[1],
        direction="bidirectional" if len(layer.w_ih) == 2 else "forward",
    )


def _lstm_stack(g: Graph, x: str, layers: list[LstmLayer]) -> str:
    """x (T, N, I) through every layer; returns the top layer's final states (N, D*H)."""
    *below, top = layers
    for k, layer in enumerate(below):
        y = f"y_l{k}"
        _lstm(g, k, x, layer, [y])
        # Y (T, D, N, H) -> (T, N, D*H): the next layer reads both directions concatenated
        merge = g.const(f"merge_dirs_l{k}", np.array([0, 0, -1], np.int64))
        x = g.one("Reshape", [g.one("Transpose", [y], perm=[0, 2, 1, 3]), merge])
    h_n = f"h_n_l{len(below)}"
    _lstm(g, len(below), x, top, ["", h_n])  # the top layer's Y is not computed
    if len(top.w_ih) == 1:  # Y_h (1, N, H) -> (N, H)
        return g.one("Squeeze", [h_n, g.const("direction_axis", np.zeros(1, np.int64))])
    # Y_h (D, N, H) -> (N, D*H), forward then reverse as torch concatenates them
    batch_major = g.one("Transpose", [h_n], perm=[1, 0, 2])
    return g.one("Reshape", [batch_major, g.const("feature_shape", np.array([0, -1], np.int64))])


def build_onnx(classifier: model.Classifier) -> Any:
    """The classifier as an onnx.ModelProto (checked by onnx.checker)."""
    g = Graph()
    params = classifier.network.params
    features = _lstm_stack(g, _time_major(g, classifier.task), lstm_layers(params))
    weight = g.const("head_weight", params["head.weight"].astype(np.float32))
    bias = g.const("head_bias", params["head.bias"].astype(np.float32))
    g.node("Gemm", [features, weight, bias], ["logits"], transB=1)
    rows, cols = classifier.image_shape
    return g.model(
        "lstmcore_classifier",
        {"images": ["batch", rows, cols]},
        {"logits": ["batch", classifier.num_classes]},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.export",
        description="Export a trained checkpoint to ONNX (needs: pip install 'lstmcore[onnx]').",
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument("out", help="the .onnx file to write")
    args = parser.parse_args(argv)
    try:
        export(args.checkpoint, args.out)
    except (ExportError, checkpoint.CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
