"""nn.LSTM against torch.nn.LSTM itself: weights loaded from torch (its state_dict, and a
safetensors file written by PyTorch and read with safetensors.numpy), then outputs and every
gradient compared. Skipped where PyTorch is not installed (it is never a dependency).

Tolerances (norm(a-b)/norm(b)): 1e-9 in float64, 2e-5 in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import make_lengths, rel_err
from lstmcore import optim
from lstmcore.nn import LSTM

torch = pytest.importorskip("torch", reason="torch is not installed")

TOL = {np.float64: 1e-9, np.float32: 2e-5}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


@dataclass(frozen=True)
class Case:
    layers: int
    bidirectional: bool
    batch_first: bool
    lengths: str  # "none", "mixed", "ones" (see helpers.make_lengths)
    shape: tuple[int, int, int, int]  # (T, B, I, H)
    load: str = "state_dict"  # or "safetensors"
    dropout: float = 0.0  # compared in eval mode: neither side may drop

    def __str__(self) -> str:
        t, b, i, h = self.shape
        return (
            f"L{self.layers}-{'bi' if self.bidirectional else 'uni'}"
            f"{'-bf' if self.batch_first else ''}-{self.lengths}-T{t}B{b}I{i}H{h}-{self.load}"
            f"{'-drop' if self.dropout else ''}"
        )


CASES = [
    Case(1, False, False, "none", (6, 4, 5, 8)),
    Case(1, True, True, "mixed", (7, 5, 3, 6), load="safetensors"),
    Case(2, False, True, "mixed", (6, 5, 4, 7)),
    Case(2, True, False, "mixed", (8, 6, 5, 9), load="safetensors"),
    Case(2, True, True, "none", (5, 3, 4, 6), dropout=0.4),
    Case(3, True, False, "mixed", (6, 7, 3, 5)),
    Case(3, False, True, "ones", (4, 3, 2, 5), load="safetensors"),
    Case(1, True, False, "none", (1, 1, 3, 7)),  # T=1, B=1, H=7
    Case(2, True, True, "mixed", (9, 1, 2, 7)),  # B=1
    Case(1, False, False, "mixed", (28, 16, 28, 32)),  # the MNIST row shape, smaller
]


def make_torch_lstm(case: Case, dtype: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    _, _, i, h = case.shape
    lstm = torch.nn.LSTM(
        i, h, case.layers, batch_first=case.batch_first, dropout=case.dropout,
        bidirectional=case.bidirectional,
    )  # fmt: skip
    return lstm.to(TORCH_DTYPE[dtype]).eval()


def torch_weights_as_numpy(lstm: Any, case: Case, tmp_path: Path) -> dict[str, np.ndarray]:
    if case.load == "state_dict":
        return {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors missing")
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors missing")
    path = tmp_path / "lstm.safetensors"
    safetensors_torch.save_file(lstm.state_dict(), str(path))
    loaded: dict[str, np.ndarray] = safetensors_numpy.load_file(str(path))
    return loaded


def run_torch(
    lstm: Any, case: Case, x: np.ndarray, h0: np.ndarray, c0: np.ndarray,
    lengths: np.ndarray | None, grads: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:  # fmt: skip
    """torch's outputs and gradients; lengths through pack_padded_sequence(enforce_sorted=
    False) and pad_packed_sequence(total_length=T), its documented way."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    steps = x.shape[1] if case.batch_first else x.shape[0]
    if lengths is None:
        ty, (th_n, tc_n) = lstm(tx, (th0, tc0))
    else:
        packed = pack_padded_sequence(
            tx, torch.from_numpy(lengths), batch_first=case.batch_first, enforce_sorted=False
        )
        out, (th_n, tc_n) = lstm(packed, (th0, tc0))
        ty, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=steps)
    dy, dh_n, dc_n = (torch.from_numpy(g) for g in grads)
    loss = (ty * dy).sum() + (th_n * dh_n).sum() + (tc_n * dc_n).sum()
    loss.backward()
    result = {"y": ty, "h_n": th_n, "c_n": tc_n, "dx": tx.grad, "dh0": th0.grad, "dc0": tc0.grad}
    result.update({f"d{name}": p.grad for name, p in lstm.named_parameters()})
    return {k: v.detach().numpy() for k, v in result.items()}


def parity_errors(
    case: Case, dtype: Any, rng: np.random.Generator, tmp_path: Path
) -> dict[str, float]:
    """Relative error of every output and gradient of nn.LSTM against torch.nn.LSTM."""
    steps, batch, inp, hidden = case.shape
    dirs = 2 if case.bidirectional else 1
    tlstm = make_torch_lstm(case, dtype, int(rng.integers(1 << 30)))
    ours = LSTM(inp, hidden, case.layers, case.bidirectional, case.batch_first, case.dropout,
                dtype, rng).eval()  # fmt: skip
    ours.load_state_dict(torch_weights_as_numpy(tlstm, case, tmp_path))

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    lead = (batch, steps) if case.batch_first else (steps, batch)
    x, dy = normal(*lead, inp), normal(*lead, dirs * hidden)
    h0, c0, dh_n, dc_n = (normal(case.layers * dirs, batch, hidden) for _ in range(4))
    lengths = make_lengths(rng, case.lengths, steps, batch)
    want = run_torch(tlstm, case, x, h0, c0, lengths, (dy, dh_n, dc_n))
    y, h_n, c_n = ours.forward(x, h0, c0, lengths)
    dx, dh0, dc0 = ours.backward(dy, dh_n, dc_n)
    got = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    got.update({f"d{name}": g for name, g in ours.grads.items()})
    assert set(got) == set(want)
    errors = {}
    for name, value in got.items():
        assert value is not None and value.dtype == dtype, name
        errors[name] = rel_err(value, want[name])
    return errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_outputs_and_every_gradient_match_torch(
    case: Case, dtype: Any, rng: np.random.Generator, tmp_path: Path
) -> None:
    errors = parity_errors(case, dtype, rng, tmp_path)
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]:.0e}: {bad}"


def test_weights_move_back_to_torch(rng: np.random.Generator, tmp_path: Path) -> None:
    """Our state_dict loads into torch.nn.LSTM (directly, and through safetensors.numpy ->
    safetensors.torch) and torch then computes our outputs."""
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors missing")
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors missing")
    ours = LSTM(4, 6, 2, True, True, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 5, 4))
    y, h_n, c_n = ours.forward(x)
    path = tmp_path / "ours.safetensors"
    safetensors_numpy.save_file(ours.state_dict(), str(path))
    routes = {
        "state_dict": {k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
        "safetensors": safetensors_torch.load_file(str(path)),
    }
    for route, sd in routes.items():
        tlstm = torch.nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True).double()
        tlstm.load_state_dict(sd)  # strict: names and shapes must be torch's
        with torch.no_grad():
            ty, (th_n, tc_n) = tlstm(torch.from_numpy(x))
        for name, a, b in [("y", y, ty), ("h_n", h_n, th_n), ("c_n", c_n, tc_n)]:
            assert rel_err(a, b.numpy()) <= 1e-9, (route, name)


def test_adam_training_run_matches_torch(rng: np.random.Generator) -> None:
    """Same weights, data and optimizer: the same training run (two biases trained apart)."""
    steps, batch, inp, hidden = 6, 5, 3, 4
    torch.manual_seed(int(rng.integers(1 << 30)))
    tlstm = torch.nn.LSTM(inp, hidden, 2, bidirectional=True).double()
    ours = LSTM(inp, hidden, 2, True, dtype=np.float64, rng=rng)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tlstm.state_dict().items()})
    topt = torch.optim.Adam(tlstm.parameters(), lr=0.05)
    opt = optim.Adam(ours.params, lr=0.05)
    for _ in range(5):
        x = rng.standard_normal((steps, batch, inp))
        target = rng.standard_normal((steps, batch, 2 * hidden))
        y, _, _ = ours.forward(x)
        assert y is not None
        ours.backward(2.0 * (y - target))  # gradient of the summed squared error
        opt.step(ours.grads)
        topt.zero_grad()
        ty, _ = tlstm(torch.from_numpy(x))
        ((ty - torch.from_numpy(target)) ** 2).sum().backward()
        topt.step()
    for name, value in tlstm.state_dict().items():
        assert rel_err(ours.params[name], value.numpy()) <= 1e-9, name
