"""docs/tasks.png: validation accuracy per epoch of the pixel tasks' runs, from their run
directories' metrics.jsonl.

    python tools/task_curves.py docs/tasks.png pixels=runs/pixels permuted=runs/permuted

Each NAME=RUN_DIR is one line; the run's test accuracy (its last row, when it read the test
set) goes in the legend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def label(name: str, history: list[dict[str, Any]]) -> str:
    final = history[-1]
    if "test_accuracy" not in final:
        return name
    return f"{name} (test {100 * final['test_accuracy']:.2f}%)"


def chart(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run_dir in runs.items():
        history = rows(run_dir)
        epochs = [r for r in history if "epoch" in r]
        ax.plot(
            [r["epoch"] for r in epochs],
            [100 * r["val_accuracy"] for r in epochs],
            marker="o",
            label=label(name, history),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(50, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = {name: Path(path) for name, path in (a.split("=", 1) for a in argv[1:])}
    chart(runs, Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
