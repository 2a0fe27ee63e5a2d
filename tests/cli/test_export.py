"""python -m lstmcore.export: the ONNX model, run in onnxruntime, against lstmcore itself (and,
for layers and directions, against torch.nn.LSTM)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trained import trained_run

import lstmcore
from lstmcore.cli import evaluate
from lstmcore.cli import export as export_cli
from lstmcore.mnist import data, export
from lstmcore.mnist.model import Classifier, Task

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # no spinning pool left behind for the next test
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    out = run / "model.onnx"
    assert export_cli.main([str(run / "best.npz"), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def test_onnxruntime_logits_match_lstmcore_and_the_test_accuracy_matches_evaluate(
    run: Path, exported: Path, mnist: data.MnistData, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = _session(exported).run(["logits"], {"images": mnist.test_images})[0]
    expected = lstmcore.load(run / "best.npz").logits(mnist.test_images)
    assert logits.shape == (10000, 10) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() <= 1e-4
    correct = int(np.sum(logits.argmax(axis=1) == mnist.test_labels))
    assert evaluate.main([str(run / "best.npz")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"test accuracy: {correct / 100:.2f}% ({correct}/10000)"


def test_the_batch_is_dynamic_and_the_graph_declares_its_interface(
    exported: Path, mnist: data.MnistData
) -> None:
    proto = onnx.load(str(exported))
    (image_input,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image_input.type.tensor_type.shape.dim]
    assert image_input.name == "images" and dims == ["batch", 28, 28]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert any(node.op_type == "LSTM" for node in proto.graph.node)
    session = _session(exported)
    for batch in (1, 7):
        out = session.run(["logits"], {"images": mnist.test_images[:batch]})[0]
        assert out.shape == (batch, 10)


def test_export_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"PK\x03\x04 truncated")
    assert export_cli.main([str(bogus), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bogus}") and len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert export_cli.main([str(run / "best.npz"), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: exporting needs the onnx package: pip install 'lstmcore[onnx]'")
    assert not (tmp_path / "x.onnx").exists()


class _TorchNetwork:
    """The duck type of nn.SequenceClassifier that build_onnx reads: params and config."""

    def __init__(self, params: dict[str, np.ndarray], num_classes: int) -> None:
        self.params = params
        self.config = {"num_classes": num_classes}


@pytest.mark.parametrize(
    ("task", "layers", "bidirectional"),
    [
        ("rows", 1, False),
        ("rows", 2, False),
        ("rows", 1, True),
        ("rows", 3, True),
        ("pixels", 1, False),
        ("permuted", 2, True),
    ],
)
def test_layers_directions_and_tasks_match_torch(
    task: str, layers: int, bidirectional: bool, tmp_path: Path, rng: np.random.Generator
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(int(rng.integers(1 << 31)))
    side, hidden, classes = 6, 5, 4  # small: a 36-step sequence for pixels and permuted
    size = side if task == "rows" else 1
    lstm = torch.nn.LSTM(size, hidden, num_layers=layers, bidirectional=bidirectional)
    head = torch.nn.Linear(hidden * (2 if bidirectional else 1), classes)
    params = {f"lstm.{k}": v.detach().numpy() for k, v in lstm.state_dict().items()}
    params.update({f"head.{k}": v.detach().numpy() for k, v in head.state_dict().items()})
    perm = rng.permutation(side * side) if task == "permuted" else None
    classifier = Classifier(_TorchNetwork(params, classes), Task(task, perm), (side, side))  # type: ignore[arg-type]
    path = tmp_path / "m.onnx"
    path.write_bytes(export.build_onnx(classifier).SerializeToString())

    images = rng.random((3, side, side), dtype=np.float32)
    seq = classifier.task.sequences(images).transpose(1, 0, 2)  # (T, B, I)
    with torch.no_grad():
        _, (h_n, _) = lstm(torch.from_numpy(np.ascontiguousarray(seq)))
        top = h_n[-2:] if bidirectional else h_n[-1:]  # the top layer's directions
        expected = head(torch.cat(list(top), dim=1)).numpy()
    got = _session(path).run(["logits"], {"images": images})[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_a_trained_stacked_bidirectional_checkpoint_exports_and_matches(
    tmp_path_factory: pytest.TempPathFactory, mnist: data.MnistData
) -> None:
    flags = ("--iters", "3", "--hidden", "8", "--batch-size", "16", "--train-subset", "64")
    flags += ("--val-size", "100", "--layers", "2", "--bidirectional")
    run = trained_run(tmp_path_factory, flags)
    out = run / "stacked.onnx"
    assert export_cli.main([str(run / "best.npz"), str(out)]) == 0
    nodes = [n for n in onnx.load(str(out)).graph.node if n.op_type == "LSTM"]
    assert len(nodes) == 2
    assert all(a.s == b"bidirectional" for n in nodes for a in n.attribute if a.name == "direction")
    images = mnist.test_images[:64]
    logits = _session(out).run(["logits"], {"images": images})[0]
    assert np.abs(logits - lstmcore.load(run / "best.npz").logits(images)).max() <= 1e-4
