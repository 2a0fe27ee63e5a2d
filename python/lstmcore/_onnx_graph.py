"""lstmcore's models as ONNX graphs, ONNX's own LSTM operator per layer: the one builder of
``python -m lstmcore.export`` and of the benchmark's onnxruntime contender. Needs the ``onnx``
package, imported when a graph is built (ExportError when it is missing)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]

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


def _lstm(g: Graph, k: int, x: str, layer: LstmLayer, outputs: list[str]) -> None:
    """Layer ``k``'s LSTM node on x (T, N, I); ``outputs``: Y (T, D, N, H), Y_h (D, N, H)."""
    g.node(
        "LSTM",
        [x, *g.lstm_weights(k, layer)],
        outputs,
        hidden_size=layer.w_hh[0].shape[1],
        direction="bidirectional" if len(layer.w_ih) == 2 else "forward",
    )


def lstm_stack(g: Graph, x: str, layers: list[LstmLayer]) -> str:
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


def _transpose(g: Graph) -> str:
    """images (N, T, I), nn.SequenceClassifier's input -> x (T, N, I)."""
    return g.one("Transpose", ["images"], perm=[1, 0, 2])


def sequence_classifier(
    params: dict[str, Array],
    image_shape: tuple[int, int],
    time_major: Callable[[Graph], str] = _transpose,
    doc: str = "",
) -> Any:
    """An nn.SequenceClassifier's parameters (``lstm.<torch name>`` or lstmcore 0.1's
    ``lstm.w_ih``..., and ``head.weight``, ``head.bias``) as an onnx.ModelProto: input
    ``images`` (batch, *image_shape), output ``logits`` (batch, classes). ``time_major(g)``
    adds the nodes from ``images`` to x (T, batch, I); by default a transpose, images being
    (batch, T, I). The head is a Gemm on the top layer's final hidden states."""
    g = Graph()
    features = lstm_stack(g, time_major(g), lstm_layers(params))
    weight = g.const("head_weight", params["head.weight"].astype(np.float32))
    bias = g.const("head_bias", params["head.bias"].astype(np.float32))
    g.node("Gemm", [features, weight, bias], ["logits"], transB=1)
    return g.model(
        "lstmcore_classifier",
        {"images": ["batch", *image_shape]},
        {"logits": ["batch", int(params["head.weight"].shape[0])]},
        doc=doc,
    )
