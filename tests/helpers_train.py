"""Small training runs for the tests: the quick flags, the command line, the metrics file
without its timings, and a small IDX data set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from helpers import run_module

QUICK = [
    "--train-subset",
    "1500",
    "--val-size",
    "500",
    "--hidden",
    "32",
    "--batch-size",
    "50",
    "--threads",
    "1",
    "--quiet",
]


TIMING_KEYS = {"seconds", "epoch_seconds", "samples_per_s", "peak_rss_mb"}  # measurements


def cli(
    *args: str, module: str = "lstmcore.train", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run_module(module, *args, timeout=timeout)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def small_dataset(directory: Path, rng: np.random.Generator, cols: int = 28) -> Path:
    """An MNIST-format set: 40 training and 10 test images of 28 x cols."""
    import gzip

    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 40), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, cols), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            (directory / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return directory
