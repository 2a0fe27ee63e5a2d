"""onnxruntime, inference only: graphs from lstmcore's one ONNX builder (the one
``python -m lstmcore.export`` writes with: ONNX's own LSTM operator, the same weights as
lstmcore's model), checked against lstmcore at start-up: a max abs difference over
ONNX_TOLERANCE refuses it. One session a contender, intra_op_num_threads = the row's threads,
inter_op 1."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _onnx_graph, nn
from lstmcore.bench.cases import CLASSES, FORGET_BIAS, Case
from lstmcore.bench.contenders.common import Builder, RefusedError, Step
from lstmcore.nn import SequenceClassifier

REQUIRES = ("onnx", "onnxruntime")
ONNX_TOLERANCE = 1e-4  # max abs difference of float32 logits, onnxruntime vs lstmcore

Array = NDArray[Any]


def onnx_session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_model(network: SequenceClassifier, case: Case) -> bytes:
    """The classifier as lstmcore.export writes a checkpoint of the rows task: images
    (B, T, I) -> Transpose to time-major, ONNX's LSTM op, its final state into a Gemm."""
    proto = _onnx_graph.sequence_classifier(network.params, (case.T, case.I))
    return bytes(proto.SerializeToString())


def lstmcore_logits(network: SequenceClassifier, images: Array) -> Array:
    """lstmcore's logits for the same weights: the oracle onnxruntime is checked against."""
    return network.logits(images)


def onnx_checked(case: Case, rng: np.random.Generator, threads: int) -> tuple[Any, Array, float]:
    """(onnxruntime session, input images, max abs logit difference against lstmcore)."""
    network = SequenceClassifier(case.I, case.H, CLASSES, seed=0)
    images = rng.random((case.B, case.T, case.I), dtype=np.float32)
    session = onnx_session(onnx_model(network, case), threads)
    (logits,) = session.run(["logits"], {"images": images})
    return session, images, float(np.max(np.abs(logits - lstmcore_logits(network, images))))


def infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    session, images, diff = onnx_checked(case, rng, threads)
    if not diff <= ONNX_TOLERANCE:  # NaN refuses too
        raise RefusedError(
            f"onnxruntime refused for {case.name}: its logits differ from lstmcore's on the "
            f"same weights by {diff:.3g} (tolerance {ONNX_TOLERANCE:g})"
        )
    feed = {"images": images}

    def step() -> None:
        session.run(["logits"], feed)

    return step


def onnx_stream_model(lstm: nn.LSTM, case: Case) -> bytes:
    """ONNX's LSTM op on one step: inputs x (1, B, I), h, c (1, B, H); outputs h, c."""
    (layer,) = _onnx_graph.lstm_layers(lstm.params, prefix="")
    g = _onnx_graph.Graph()
    g.node(
        "LSTM",
        ["x", *g.lstm_weights(0, layer), "", "h", "c"],
        ["", "h_out", "c_out"],
        hidden_size=case.H,
    )
    state: list[str | int] = [1, "B", case.H]
    proto = g.model(
        "lstm_step",
        {"x": [1, "B", case.I], "h": state, "c": state},
        {"h_out": state, "c_out": state},
    )
    return bytes(proto.SerializeToString())


def stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    """onnxruntime's LSTM op on a T=1 graph, the state fed back in; checked against
    lstmcore's stream over a few steps first."""
    lstm = nn.LSTM(case.I, case.H, rng=np.random.default_rng(0), forget_bias=FORGET_BIAS)
    session = onnx_session(onnx_stream_model(lstm, case), threads)
    x = rng.random((1, case.B, case.I), dtype=np.float32)
    state = {
        "h": np.zeros((1, case.B, case.H), np.float32),
        "c": np.zeros((1, case.B, case.H), np.float32),
    }
    ours = lstm.stream(case.B)
    for _ in range(3):
        theirs, c = session.run(["h_out", "c_out"], {"x": x, **state})
        state = {"h": theirs, "c": c}
        diff = float(np.max(np.abs(theirs[0] - ours.step(x[0]))))
        if diff > ONNX_TOLERANCE:
            raise RefusedError(f"onnxruntime refused for {case.name}: state differs by {diff:.2e}")

    def step() -> None:
        h, c = session.run(["h_out", "c_out"], {"x": x, **state})
        state["h"], state["c"] = h, c

    return step


BUILDERS: dict[str, dict[str, Builder]] = {
    "infer": {"onnxruntime": infer},
    "stream": {"onnxruntime": stream},
}
