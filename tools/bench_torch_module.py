"""Training-step timings of torch.nn.LSTM, lstmcore.torch.LSTM and lstmcore's NumPy API.

Each measurement runs one contender alone in a fresh process (no other library's thread pool
spinning beside it), the contenders alternated over rounds; a process warms up, then times
every step, and reports its median; the table shows the median over rounds.

Cases (float32, a Linear head on the top layer's final hidden state, cross-entropy):
- varlen: T=100, B=64, I=64, H=128, lengths uniform in [1, T]; PackedSequence
  (enforce_sorted=False) for both torch contenders, ``lengths=`` for the NumPy API
- padded: the same shape, every sequence T long, a plain tensor
- mnist:  MNIST rows, T=28, B=128, I=28, H=128, 10 classes

Modes: ``step`` is forward, loss, backward and an Adam step; ``lstm`` is the LSTM alone
(forward, then backward from the gradient of h_n), the part where lstmcore.torch's adapter
differs from the NumPy API. lstmcore.torch always returns y (torch's contract), so the NumPy
contender asks for y too (``need_y=True``); neither computes dx (the input needs no gradient).

Threads: torch's OpenMP workers (libgomp) spin for milliseconds after each parallel op and
take a core from whatever runs next in the process, lstmcore's threads included;
``--omp-passive`` runs every contender with OMP_WAIT_POLICY=PASSIVE (workers sleep at once).

    PYTHONPATH=python python tools/bench_torch_module.py [--rounds 3] [--threads 1 2]
        [--cases varlen padded mnist] [--modes step lstm] [--steps 20] [--warmup 3]
        [--omp-passive]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("torch", "lstmcore.torch", "numpy")
CASES = {  # (T, B, I, H, classes, variable lengths)
    "varlen": (100, 64, 64, 128, 10, True),
    "padded": (100, 64, 64, 128, 10, False),
    "mnist": (28, 128, 28, 128, 10, False),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---- one contender in its own process -----------------------------------------------------


def make_data(case: str) -> dict[str, Any]:
    import numpy as np

    steps, batch, inp, _, classes, varlen = CASES[case]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, steps + 1, batch) if varlen else np.full(batch, steps)
    x = rng.standard_normal((steps, batch, inp)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[n:, b] = 0.0
    labels = rng.integers(0, classes, batch)
    return {"x": x, "lengths": lengths.astype(np.int64), "labels": labels, "varlen": varlen}


def torch_step(contender: str, case: str, mode: str, threads: int) -> Any:
    import torch

    import lstmcore
    import lstmcore.torch as lt

    torch.set_num_threads(threads)
    lstmcore.set_num_threads(threads)
    _, _, inp, hidden, classes, _ = CASES[case]
    data = make_data(case)
    torch.manual_seed(0)
    kind = torch.nn.LSTM if contender == "torch" else lt.LSTM
    lstm = kind(inp, hidden)
    head = torch.nn.Linear(hidden, classes)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.from_numpy(data["x"])
    labels = torch.from_numpy(data["labels"])
    lengths = torch.from_numpy(data["lengths"])
    dh = torch.randn(1, x.shape[1], hidden)

    def step() -> None:
        seq = x
        if data["varlen"]:
            seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, (h_n, _) = lstm(seq)
        if mode == "lstm":
            h_n.backward(dh)
            return
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(h_n[-1]), labels)
        loss.backward()
        opt.step()

    return step


def numpy_step(case: str, mode: str, threads: int) -> Any:
    import numpy as np

    import lstmcore
    from lstmcore import nn, optim

    lstmcore.set_num_threads(threads)
    _, _, inp, hidden, classes, _ = CASES[case]
    data = make_data(case)
    rng = np.random.default_rng(0)
    lstm = nn.LSTM(inp, hidden, dtype=np.float32, rng=rng)
    head = nn.Linear(hidden, classes, dtype=np.float32, rng=rng)
    opt = optim.Adam({**lstm.params, **{f"head.{k}": v for k, v in head.params.items()}})
    lengths = data["lengths"] if data["varlen"] else None
    dh = rng.standard_normal((1, data["x"].shape[1], hidden)).astype(np.float32)

    def step() -> None:
        _, h_n, _ = lstm.forward(data["x"], lengths=lengths)  # y too: lstmcore.torch makes it
        if mode == "lstm":
            lstm.backward(None, dh, None, need_dx=False)
            return
        logits = head.forward(h_n[-1])
        _, dlogits = nn.softmax_cross_entropy(logits, data["labels"])
        dfeat = head.backward(dlogits)
        lstm.backward(None, dfeat[None], None, need_dx=False)
        opt.step({**lstm.grads, **{f"head.{k}": v for k, v in head.grads.items()}})

    return step


def worker(args: argparse.Namespace) -> None:
    if args.contender == "numpy":
        step = numpy_step(args.case, args.mode, args.threads)
    else:
        step = torch_step(args.contender, args.case, args.mode, args.threads)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": 1e3 * statistics.median(times)}))


# ---- the driver ---------------------------------------------------------------------------


def measure(contender: str, case: str, mode: str, threads: int, args: argparse.Namespace) -> float:
    env = dict(os.environ)  # the lstmcore this process imports: installed, or PYTHONPATH's
    env["OMP_NUM_THREADS"] = str(threads)
    env["LSTMCORE_NUM_THREADS"] = str(threads)
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--worker", "--contender", contender, "--case", case,
           "--mode", mode, "--threads", str(threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} {case} {mode} {threads}: {done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["median_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("step", "lstm"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--modes", nargs="+", choices=("step", "lstm"), default=["step", "lstm"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0] if isinstance(args.threads, list) else args.threads
        worker(args)
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; load average {load:.1f}")
    print(f"{args.rounds} rounds, {args.warmup} warm-up + {args.steps} timed steps a process")
    policy = "PASSIVE" if args.omp_passive else os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"OMP_WAIT_POLICY {policy}; adapter = lstmcore.torch's step over the NumPy API's - 1")
    header = (
        f"{'case':7} {'mode':5} {'thr':>3} | {'torch':>9} {'lstmcore.torch':>14} "
        f"{'numpy API':>9} | {'speedup':>7} {'adapter':>8}"
    )
    print(header)
    print("-" * len(header))
    for case in args.cases:
        for mode in args.modes:
            for threads in args.threads:
                runs: dict[str, list[float]] = {c: [] for c in CONTENDERS}
                for r in range(args.rounds):
                    order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
                    for contender in order:
                        runs[contender].append(measure(contender, case, mode, threads, args))
                ms = {c: statistics.median(v) for c, v in runs.items()}
                speedup = ms["torch"] / ms["lstmcore.torch"]
                adapter = ms["lstmcore.torch"] / ms["numpy"] - 1.0
                print(
                    f"{case:7} {mode:5} {threads:>3} | {ms['torch']:7.2f}ms "
                    f"{ms['lstmcore.torch']:12.2f}ms {ms['numpy']:7.2f}ms | {speedup:6.2f}x "
                    f"{100 * adapter:+7.1f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
