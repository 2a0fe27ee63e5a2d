"""The trainer's layer flags (--layers, --bidirectional, --dropout), checkpoints under torch's
names, lstmcore 0.1 checkpoints, and the GPU trainer's parameter layout (checked on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstmcore import cuda, optim
from lstmcore.mnist import checkpoint
from lstmcore.mnist.cuda_train import CudaSession, param_layout
from lstmcore.mnist.model import load_network
from lstmcore.mnist.run import Config, Run
from lstmcore.nn import SequenceClassifier

SMALL = Config(
    iters=6,
    batch_size=50,
    hidden=12,
    train_subset=200,
    val_size=100,
    layers=2,
    bidirectional=True,
    dropout=0.3,
)  # fmt: skip  (4 steps an epoch: 6 steps end mid-epoch 2)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lstmcore.train", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.subprocess
def test_layer_flags_train_and_save_torch_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = cli(
        "--layers", "2", "--bidirectional", "--dropout", "0.2", "--iters", "3",
        "--train-subset", "150", "--val-size", "50", "--hidden", "8", "--batch-size", "50",
        "--threads", "1", "--quiet", "--out", str(run),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    params, _, meta, _ = checkpoint.load(run / "best.npz")
    assert params["lstm.weight_ih_l1_reverse"].shape == (32, 16)  # reads both directions
    assert params["head.weight"].shape == (10, 16)  # both final states
    assert meta["model"]["num_layers"] == 2 and meta["model"]["bidirectional"] is True
    config = json.loads((run / "config.json").read_text())
    assert (config["layers"], config["bidirectional"], config["dropout"]) == (2, True, 0.2)
    model = load_network(str(run / "best.npz"))
    assert model.lstm.num_layers == 2 and model.lstm.bidirectional
    # a forged description is refused as a bad checkpoint, before any model is built
    params, opt_state, meta, other = checkpoint.load(run / "best.npz")
    for forged in ({"dropout": 7.0}, {"num_layers": 3}, {"bidirectional": False}):
        checkpoint.save(run / "forged.npz", params, opt_state,
                        {**meta, "model": {**meta["model"], **forged}}, other)  # fmt: skip
        with pytest.raises(checkpoint.CheckpointError, match=r"forged\.npz"):
            load_network(str(run / "forged.npz"))


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("flags", "status", "message"),
    [
        (["--dropout", "1"], 2, "expected a probability in [0, 1)"),
        (["--dropout", "nan"], 2, "expected a probability in [0, 1)"),
        (["--layers", "0"], 2, "expected an integer >= 1"),
        (
            ["--device", "cuda", "--layers", "2"],
            1,
            "error: " + cuda.gpu_feature("layers").refusal("--layers 2", command_line=True),
        ),
        (
            ["--device", "cuda", "--bidirectional"],
            1,
            "error: " + cuda.gpu_feature("reverse").refusal("--bidirectional", command_line=True),
        ),
    ],
)
def test_bad_layer_flags_are_one_clear_error(flags: list[str], status: int, message: str) -> None:
    done = cli(*flags)
    assert done.returncode == status
    assert message in done.stderr and "Traceback" not in done.stderr


def final_params(run: Run) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in run.model.params.items()}


def test_interrupted_dropout_run_resumes_exactly(tmp_path: Path) -> None:
    """The dropout masks come from a generator saved in last.npz: a resumed run draws the
    masks the uninterrupted run drew, and ends at the same parameters bit for bit."""
    with Run.create(SMALL, tmp_path / "whole") as whole:
        assert whole.train()
    with Run.create(SMALL, tmp_path / "cut") as cut:
        assert not cut.train(lambda: cut.prog.step == 2)
    with Run.resume(tmp_path / "cut") as resumed:
        assert resumed.prog.step == 2
        assert resumed.train()
    want, got = final_params(whole), final_params(resumed)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def as_v01(path: Path) -> None:
    """Rewrites ``path`` as lstmcore 0.1 wrote checkpoints: one bias under lstm.w_ih,
    lstm.w_hh, lstm.bias; optimizer state under those names; a three-key model description;
    no dropout generator."""
    params, opt_state, meta, other = checkpoint.load(path)
    rename = {"lstm.weight_ih_l0": "lstm.w_ih", "lstm.weight_hh_l0": "lstm.w_hh"}
    old = {rename.get(k, k): v for k, v in params.items() if "bias_" not in k}
    old["lstm.bias"] = params["lstm.bias_ih_l0"] + params["lstm.bias_hh_l0"]
    old_state: dict[str, Any] = {}
    for key, value in opt_state.items():
        kind, _, name = key.partition(":")
        if name == "lstm.bias_hh_l0":
            continue
        name = "lstm.bias" if name == "lstm.bias_ih_l0" else rename.get(name, name)
        old_state[f"{kind}:{name}" if name else key] = value
    meta = {k: v for k, v in meta.items() if k != "dropout_rng"}
    meta["model"] = {k: meta["model"][k] for k in ("input_size", "hidden_size", "num_classes")}
    checkpoint.save(path, old, old_state, meta, other)


def test_a_v01_run_evaluates_and_resumes(tmp_path: Path) -> None:
    cfg = replace(SMALL, layers=1, bidirectional=False, dropout=0.0)
    with Run.create(cfg, tmp_path / "old") as run:
        assert not run.train(lambda: run.prog.step == 5)  # best.npz after epoch 1, last at 5
    images = run.data.test_x[:50]
    want = run.model.logits(images)
    for name in ("best.npz", "last.npz"):
        as_v01(tmp_path / "old" / name)
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("layers", "bidirectional", "dropout"):  # 0.1's config.json had none of them
        del saved[key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    params, _, _, _ = checkpoint.load(tmp_path / "old" / "last.npz")
    assert "lstm.bias" in params  # really the old layout
    with Run.resume(tmp_path / "old") as resumed:
        np.testing.assert_array_equal(resumed.model.logits(images), want)
        assert resumed.train() and resumed.prog.step == 6
    model = load_network(str(tmp_path / "old" / "best.npz"))
    assert set(model.params) == set(run.model.params)


class FakeDeviceTrainer:
    """Stands in for lstmcore._cuda.Trainer's state calls: holds the flat vectors."""

    def set_params(self, flat: np.ndarray) -> None:
        self.params = flat.copy()

    def get_params(self) -> np.ndarray:
        return self.params.copy()

    def set_state(self, m: np.ndarray, v: np.ndarray, step: int) -> None:
        self.m, self.v, self.step = m.copy(), v.copy(), step

    def get_state(self) -> tuple[np.ndarray, np.ndarray, int]:
        return self.m.copy(), self.v.copy(), self.step


def test_gpu_session_carries_both_biases_through_push_and_pull(
    rng: np.random.Generator,
) -> None:
    """The device's flat buffer holds the host's parameters in the host's order, torch's two
    biases included (the trainer sums them for the core): push then pull gives back the same
    parameters and optimizer state. No GPU here: a stand-in holds the device's vectors."""
    model = SequenceClassifier(28, 8, 10, seed=int(rng.integers(1 << 30)))
    opt = optim.Adam(model.params, 1e-3)
    x, y = rng.random((4, 28, 28), dtype=np.float32), rng.integers(0, 10, 4)
    model.loss_and_grads(x, y)
    opt.step(model.grads)  # some optimizer state to carry
    layout = param_layout(model.params)
    assert [name for name, _ in layout] == [
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "head.weight",
        "head.bias",
    ]  # fmt: skip  (train_cuda.cu's param_layout: the same names, order and sizes)
    assert [size for _, size in layout] == [32 * 28, 32 * 8, 32, 32, 80, 10]
    session = CudaSession.__new__(CudaSession)  # the layout logic alone
    session.names = [name for name, _ in layout]
    session.sizes = [size for _, size in layout]
    session.kind, session.trainer = "adam", FakeDeviceTrainer()
    session.push(model, opt)
    before = {k: v.copy() for k, v in model.params.items()}
    state_before = opt.state_dict()
    for p in model.params.values():
        p[...] = 0.0  # the pull must bring every value back
    session.pull(model, opt)
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(value, state_before[key], err_msg=key)


def test_chrono_reaches_the_model_and_the_saved_config(tmp_path: Path) -> None:
    with Run.create(replace(SMALL, chrono=28), tmp_path / "run") as run:
        for name in ("bias_ih_l1", "bias_hh_l0_reverse"):
            b, h = run.model.lstm.params[name], SMALL.hidden
            np.testing.assert_allclose(b[:h], -b[h : 2 * h], rtol=1e-6)
            assert b[h : 2 * h].max() <= np.log(27) / 2 * (1 + 1e-6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["chrono"] == 28
