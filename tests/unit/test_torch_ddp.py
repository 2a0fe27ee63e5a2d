"""lstmcore.torch.LSTM inside torch.nn.parallel.DistributedDataParallel: two processes on
127.0.0.1 (gloo) train a model with a switched LSTM on halves of each batch; afterwards their
parameters agree with each other and with one process training on the whole batches. Skipped
where PyTorch is not installed. Bounded: every wait has a timeout.

Run as a script, this file is one DDP worker: ``python test_torch_ddp.py RANK PORT OUT``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORLD = 2
STEPS = 4
BATCH = 8  # per step, split evenly between the ranks
TIMEOUT_S = 240  # the whole run, both workers


def make_model(torch: Any) -> Any:
    import lstmcore.torch as lt

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.lstm = lt.LSTM(8, 12, 2, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(24, 5)

        def forward(self, tokens: Any, lengths: Any) -> Any:
            seq = torch.nn.utils.rnn.pack_padded_sequence(
                self.embed(tokens), lengths, batch_first=True, enforce_sorted=False
            )
            _, (h_n, _) = self.lstm(seq)
            return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))

    torch.manual_seed(0)  # every rank starts from the same weights (DDP checks and syncs)
    return Model().double()


def batches(torch: Any) -> list[tuple[Any, Any, Any]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        tokens = torch.randint(0, 20, (BATCH, 9), generator=gen)
        lengths = torch.randint(1, 10, (BATCH,), generator=gen)
        labels = torch.randint(0, 5, (BATCH,), generator=gen)
        out.append((tokens, lengths, labels))
    return out


def train(torch: Any, model: Any, rank: int | None) -> None:
    """Adam on every batch; ``rank`` takes its half of each (None: one process, all of it)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    share = BATCH // WORLD
    for tokens, lengths, labels in batches(torch):
        part = slice(None) if rank is None else slice(rank * share, (rank + 1) * share)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens[part], lengths[part]), labels[part])
        loss.backward()
        opt.step()


def worker(rank: int, port: int, out: Path) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model(torch))
        train(torch, model, rank)
        torch.save(model.module.state_dict(), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.subprocess
def test_ddp_two_processes_agree_with_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    dist = pytest.importorskip("torch.distributed", reason="torch.distributed is missing")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    env = dict(os.environ)  # the lstmcore under test: installed, or the tree on PYTHONPATH
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, (
            f"rank {rank} failed:\n{logs[rank] if rank < len(logs) else ''}"
        )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.set_num_threads(1)
    alone = make_model(torch)
    train(torch, alone, None)
    before = make_model(torch).state_dict()
    for name, want in alone.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # the ranks agree exactly
        err = float((ranks[0][name] - want).norm() / want.norm())
        assert err <= 1e-10, (name, err)  # and train as one process on the whole batches
        assert not torch.equal(want, before[name]), name  # every parameter moved


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
