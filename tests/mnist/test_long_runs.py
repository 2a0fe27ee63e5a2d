"""What the long (784-step) tasks need: their own recipes, early stopping, checkpoints within an
epoch, and an ETA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lstmcore.cli import train
from lstmcore.mnist import checkpoint, run

TINY = [
    "--train-subset", "200", "--val-size", "100", "--hidden", "8", "--batch-size", "50",
    "--threads", "1", "--quiet",
]  # fmt: skip


def new_config(*argv: str) -> run.Config:
    args = train.build_parser().parse_args(list(argv))
    return train.config_from_args(args, train.given_flags(list(argv)))


@pytest.mark.parametrize("task", ["pixels", "permuted"])
def test_a_task_alone_runs_its_own_recipe_and_flags_override_it(task: str) -> None:
    cfg = new_config("--task", task)
    for name, value in run.TASK_DEFAULTS[task].items():
        assert getattr(cfg, name) == value, name
    assert cfg.chrono == 784 and cfg.shift == 0  # the long tasks' essentials
    again = new_config("--task", task, "--lr", "5e-4", "--shift", "1", "--epochs", "3")
    assert (again.lr, again.shift, again.epochs, again.chrono) == (5e-4, 1, 3, 784)


def test_the_rows_default_is_unchanged() -> None:
    assert new_config() == run.Config()
    assert new_config("--task", "rows") == run.Config()


def test_the_recipes_are_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task, values in run.TASK_DEFAULTS.items():
        assert f"--task {task}:" in text
        for name, value in values.items():
            assert f"{run.flag(name)} {value}" in text


def test_the_recipe_is_saved_in_config_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train.main([*TINY, "--task", "pixels", "--iters", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    for name, value in run.TASK_DEFAULTS["pixels"].items():
        given = run.flag(name) in TINY  # TINY's own --batch-size overrides the recipe's
        expected = type(value)(TINY[TINY.index(run.flag(name)) + 1]) if given else value
        assert config[name] == expected, name


def epoch_rows(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "epoch" in r and "test_accuracy" not in r]


def test_patience_stops_when_validation_stops_improving(tmp_path: Path) -> None:
    """lr 0: the model never changes, so epoch 1 stays the best; patience 2 stops after
    epoch 3 of 6, and the test set is still read once, by best.npz."""
    out = tmp_path / "run"
    argv = [*TINY, "--lr", "0", "--epochs", "6", "--patience", "2", "--out", str(out)]
    assert train.main(argv) == 0
    rows = epoch_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "test_accuracy" in final
    # a resume of a stopped run finds it finished: nothing more is trained
    assert train.main(["--resume", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in epoch_rows(out)] == [1, 2, 3]


def test_last_npz_is_saved_within_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--checkpoint-minutes: last.npz after every step once the interval has passed (here a
    tiny one: every step), each a resumable mid-epoch state."""
    saved: list[tuple[str, int]] = []
    real_save = checkpoint.save

    def spy(path: Any, params: Any, optim_state: Any, meta: Any, extra: Any = None) -> None:
        saved.append((Path(path).name, meta["progress"]["epoch_pos"]))
        real_save(path, params, optim_state, meta, extra)

    monkeypatch.setattr(checkpoint, "save", spy)
    out = tmp_path / "run"
    argv = [*TINY, "--epochs", "1", "--checkpoint-minutes", "1e-9", "--out", str(out)]
    assert train.main(argv) == 0
    mid = [pos for name, pos in saved if name == "last.npz" and pos > 0]
    assert mid == [1, 2, 3, 4]  # 200 training images in batches of 50: after each step
    assert [name for name, _ in saved[-2:]] == ["best.npz", "last.npz"]  # the epoch's end
    assert saved[-1] == ("last.npz", 0)
    assert train.CHECKPOINT_SECONDS == 300.0  # the default: every 5 minutes


def test_bad_checkpoint_minutes_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--checkpoint-minutes", value])
        assert exit_info.value.code == 2
        assert "--checkpoint-minutes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (float("inf"), "?"), (0.4, "0s"), (59.4, "59s"), (61, "1m01s"),
     (3599, "59m59s"), (3600 * 2 + 7 * 60 + 30, "2h07m")],
)  # fmt: skip
def test_eta_reads_as_a_duration(seconds: float | None, text: str) -> None:
    assert run.duration(seconds) == text


def test_epoch_lines_carry_the_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(and with the default --patience 0, every epoch runs although lr 0 never improves)"""
    argv = [a for a in TINY if a != "--quiet"]
    assert train.main([*argv, "--lr", "0", "--epochs", "3", "--out", str(tmp_path / "r")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3 and all(" eta " in ln for ln in lines)
    assert lines[-1].endswith("eta 0s")  # nothing left after the last epoch
