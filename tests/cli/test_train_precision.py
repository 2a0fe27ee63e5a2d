"""python -m lstmcore.train --precision bf16: it trains, it is saved, resumed and checked like
every other setting, and its checkpoints are float32 like every other run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lstmcore.cli import evaluate, train
from lstmcore.mnist import checkpoint
from lstmcore.mnist.model import load

QUICK = [
    "--train-subset", "3000", "--val-size", "500", "--hidden", "32", "--batch-size", "50",
    "--threads", "1", "--quiet", "--epochs", "2",
]  # fmt: skip


def final_test_accuracy(run: Path) -> float:
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return float(row["test_accuracy"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same quick run in each precision (same seed, data and order)."""
    out = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path_factory.mktemp(precision) / "run"
        assert train.main([*QUICK, "--precision", precision, "--out", str(run)]) == 0
        out[precision] = run
    return out


def test_bf16_training_learns_as_float32_does(runs: dict[str, Path]) -> None:
    fp32, bf16 = (final_test_accuracy(runs[p]) for p in ("fp32", "bf16"))
    assert bf16 > 0.5, bf16  # it learns (chance is 0.1; float32 reaches ~0.62 here)
    assert abs(bf16 - fp32) < 0.03, (fp32, bf16)
    # and it really ran another arithmetic: the trained weights differ
    a = checkpoint.load(runs["fp32"] / "last.npz")[0]
    b = checkpoint.load(runs["bf16"] / "last.npz")[0]
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_precision_is_saved_and_the_checkpoint_is_float32(runs: dict[str, Path]) -> None:
    config = json.loads((runs["bf16"] / "config.json").read_text())
    assert config["precision"] == "bf16"
    params = checkpoint.load(runs["bf16"] / "best.npz")[0]
    assert all(v.dtype == np.float32 for v in params.values())
    # a bf16-trained model evaluates in float32 (the default) and in bf16
    assert load(runs["bf16"] / "best.npz").network.precision is None
    assert evaluate.main([str(runs["bf16"] / "best.npz")]) == 0


def test_a_resumed_run_keeps_its_precision_and_refuses_another(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["bf16"], run)
    assert train.main(["--resume", str(run), "--quiet", "--precision", "fp32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --precision "), err
    assert train.main(["--resume", str(run), "--quiet", "--epochs", "3"]) == 0
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"


def test_bad_precisions_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err
    assert train.main(["--precision", "bf16", "--device", "cuda", "--quiet"]) != 0
    assert "--precision" in capsys.readouterr().err
