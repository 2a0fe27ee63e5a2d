"""lstmcore.torch.LSTM against torch.nn.LSTM on the same weights: outputs and every gradient
(input, hx, each parameter) through padded tensors and PackedSequence, dropout under torch's
seed, state_dict both ways, replace_lstm, gradcheck, torch.compile, autocast, ONNX, the errors.
Skipped where PyTorch is not installed (the DDP check is in test_torch_ddp.py).

Tolerances (norm(a-b)/norm(b)): 1e-9 in float64, 2e-5 in float32.
"""

from __future__ import annotations

import gc
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import rel_err

torch = pytest.importorskip("torch", reason="torch is not installed")

import lstmcore  # noqa: E402
import lstmcore.torch as lt  # noqa: E402
from lstmcore import nn as lnn  # noqa: E402
from lstmcore.torch import _ops  # noqa: E402

F = torch.nn.functional
rnn_utils = torch.nn.utils.rnn
TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread for torch and the core (the machine is shared; two threads in one test)."""
    old, old_core = torch.get_num_threads(), lstmcore.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    lstmcore.set_num_threads(old_core)  # the layer made the core follow torch's count


@dataclass(frozen=True)
class Case:
    layers: int
    bidirectional: bool
    batch_first: bool
    kind: str  # "padded", "packed" (enforce_sorted=False), "sorted" (enforce_sorted=True),
    # "unbatched" (2-d input)
    hx: bool  # initial states given (else None: zeros)
    shape: tuple[int, int, int, int]  # (T, B, I, H)
    bias: bool = True

    def __str__(self) -> str:
        t, b, i, h = self.shape
        return (
            f"L{self.layers}-{'bi' if self.bidirectional else 'uni'}"
            f"{'-bf' if self.batch_first else ''}-{self.kind}{'-hx' if self.hx else ''}"
            f"{'' if self.bias else '-nobias'}-T{t}B{b}I{i}H{h}"
        )


CASES = [
    Case(1, False, False, "padded", False, (6, 4, 5, 8)),
    Case(1, True, True, "packed", True, (7, 5, 3, 6)),
    Case(2, False, True, "packed", False, (6, 5, 4, 7)),
    Case(2, True, False, "packed", True, (8, 6, 5, 9)),
    Case(2, True, True, "padded", True, (5, 3, 4, 6)),
    Case(3, True, False, "packed", False, (6, 7, 3, 5)),
    Case(3, False, True, "sorted", True, (4, 3, 2, 5)),
    Case(1, True, False, "padded", True, (1, 1, 3, 7)),  # T=1, B=1, H=7
    Case(2, True, True, "packed", True, (9, 1, 2, 7)),  # B=1
    Case(2, True, False, "unbatched", True, (5, 1, 3, 4)),
    Case(2, False, False, "padded", True, (4, 3, 3, 5), bias=False),
    Case(1, False, True, "packed", True, (28, 16, 28, 33)),  # the MNIST row shape, H=33
]


def make_pair(case: Case, dtype: Any, dropout: float = 0.0) -> tuple[Any, lt.LSTM]:
    _, _, inp, hidden = case.shape
    kwargs = {
        "num_layers": case.layers,
        "bias": case.bias,
        "batch_first": case.batch_first,
        "dropout": dropout,
        "bidirectional": case.bidirectional,
        "dtype": dtype,
    }
    ref = torch.nn.LSTM(inp, hidden, **kwargs)
    ours = lt.LSTM(inp, hidden, **kwargs)
    ours.load_state_dict(ref.state_dict())  # strict: names and shapes are torch's
    return ref, ours


def make_inputs(case: Case, dtype: Any, gen: Any) -> tuple[Any, tuple[Any, Any] | None, Any | None]:
    """x, hx and lengths (None unless packed) for ``case``; hx in the input's batch order."""
    steps, batch, inp, hidden = case.shape
    if case.kind == "unbatched":
        x = torch.randn(steps, inp, generator=gen, dtype=dtype)
        state: tuple[int, ...] = (case.layers * (1 + case.bidirectional), hidden)
    else:
        lead = (batch, steps) if case.batch_first else (steps, batch)
        x = torch.randn(*lead, inp, generator=gen, dtype=dtype)
        state = (case.layers * (1 + case.bidirectional), batch, hidden)
    hx = None
    if case.hx:
        hx = (
            torch.randn(state, generator=gen, dtype=dtype),
            torch.randn(state, generator=gen, dtype=dtype),
        )
    lengths = None
    if case.kind in ("packed", "sorted"):
        lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
        lengths[0] = steps
        if case.kind == "sorted":
            lengths = lengths.sort(descending=True).values
    return x, hx, lengths


def run(
    m: Any, case: Case, x: Any, hx: Any, lengths: Any, seed: int = 1234
) -> dict[str, np.ndarray]:
    """Outputs and every gradient of ``m`` (float64 NumPy), the loss a fixed random
    projection of y, h_n and c_n (so every output's gradient is random, not all ones)."""
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
    inp = x
    if lengths is not None:
        inp = rnn_utils.pack_padded_sequence(
            x, lengths, batch_first=case.batch_first, enforce_sorted=case.kind == "sorted"
        )
    out, (h_n, c_n) = m(inp, hx)
    packed = lengths is not None
    if packed:
        assert isinstance(out, rnn_utils.PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out, name), getattr(inp, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    y = out.data if packed else out
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (y, h_n, c_n)
    )
    loss.backward()
    result = {"y": y, "h_n": h_n, "c_n": c_n, "dx": x.grad}
    if hx is not None:
        result.update({"dh0": hx[0].grad, "dc0": hx[1].grad})
    result.update({f"d{name}": p.grad for name, p in m.named_parameters()})
    return {k: v.detach().double().numpy() for k, v in result.items()}


def parity_errors(case: Case, dtype: Any, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    ref, ours = make_pair(case, dtype)
    x, hx, lengths = make_inputs(case, dtype, torch.Generator().manual_seed(seed))
    want = run(ref, case, x, hx, lengths)
    got = run(ours, case, x, hx, lengths)
    assert set(got) == set(want)
    return {name: rel_err(got[name], want[name]) for name in want}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_outputs_and_every_gradient_match_torch(case: Case, dtype: Any) -> None:
    errors = parity_errors(case, dtype, seed=CASES.index(case))
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]:.0e}: {bad}"


def test_two_threads_match_torch() -> None:
    torch.set_num_threads(2)
    case = Case(2, True, True, "packed", True, (12, 9, 6, 17))
    errors = parity_errors(case, torch.float64, seed=5)
    assert lstmcore.get_num_threads() == 2  # the core follows torch's thread count
    assert max(errors.values()) <= 1e-9, errors


def test_same_seed_gives_torchs_initial_weights() -> None:
    torch.manual_seed(3)
    ref = torch.nn.LSTM(5, 7, 2, bidirectional=True)
    torch.manual_seed(3)
    ours = lt.LSTM(5, 7, 2, bidirectional=True)
    assert list(ref.state_dict()) == list(ours.state_dict())
    for (name, a), b in zip(ref.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert repr(ours) == repr(ref)
    assert [[p.shape for p in w] for w in ours.all_weights] == [
        [p.shape for p in w] for w in ref.all_weights
    ]
    ours.flatten_parameters()  # torch code calls it; nothing to do on the CPU


def test_state_dict_loads_both_ways() -> None:
    torch.manual_seed(4)
    ours = lt.LSTM(4, 6, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
    ref = torch.nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())  # strict both ways
    back = lt.LSTM(4, 6, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
    back.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        a, (ha, ca) = ref(x)
        for m in (ours, back):
            b, (hb, cb) = m(x)
            for u, v in ((a, b), (ha, hb), (ca, cb)):
                assert rel_err(v.numpy(), u.numpy()) <= 1e-12


def test_gradcheck_float64() -> None:
    torch.manual_seed(6)
    m = lt.LSTM(2, 3, 2, bidirectional=True, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    h0, c0 = (
        torch.randn(4, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        for _ in range(2)
    )
    names = [n for n, _ in m.named_parameters()]
    lengths = torch.tensor([3, 1])

    def padded(x: Any, h0: Any, c0: Any, *params: Any) -> Any:
        out = torch.func.functional_call(m, dict(zip(names, params, strict=True)), (x, (h0, c0)))
        return out[0], *out[1]

    def packed(x: Any, h0: Any, c0: Any, *params: Any) -> Any:
        seq = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out = torch.func.functional_call(m, dict(zip(names, params, strict=True)), (seq, (h0, c0)))
        return out[0].data, *out[1]

    inputs = (x, h0, c0, *m.parameters())
    assert torch.autograd.gradcheck(padded, inputs)
    assert torch.autograd.gradcheck(packed, inputs)


def test_packed_sequence_in_and_out() -> None:
    """Output a PackedSequence with the input's batch_sizes and indices, equal to running each
    sequence alone (the core runs every sequence for its own length only)."""
    torch.manual_seed(7)
    m = lt.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (4, 7, 1, 5)]
    packed = rnn_utils.pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad():
        out, (h_n, c_n) = m(packed)
        assert isinstance(out, rnn_utils.PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
        padded, lengths = rnn_utils.pad_packed_sequence(out)
        assert lengths.tolist() == [4, 7, 1, 5]
        for b, seq in enumerate(seqs):
            alone, (h1, c1) = m(seq.unsqueeze(1))
            assert rel_err(padded[: len(seq), b].numpy(), alone[:, 0].numpy()) <= 1e-12
            assert float(padded[len(seq) :, b].abs().sum()) == 0.0
            assert rel_err(h_n[:, b].numpy(), h1[:, 0].numpy()) <= 1e-12
            assert rel_err(c_n[:, b].numpy(), c1[:, 0].numpy()) <= 1e-12


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_dropout_draws_torchs_masks(kind: str, batch_first: bool) -> None:
    """Training mode, dropout between layers: the same torch seed gives torch.nn.LSTM's
    outputs and gradients (the same masks), another seed other masks, eval mode none."""
    case = Case(3, True, batch_first, kind, True, (6, 5, 4, 7))
    torch.manual_seed(8)
    ref, ours = make_pair(case, torch.float64, dropout=0.4)
    x, hx, lengths = make_inputs(case, torch.float64, torch.Generator().manual_seed(8))
    torch.manual_seed(99)
    want = run(ref, case, x, hx, lengths)
    torch.manual_seed(99)
    got = run(ours, case, x, hx, lengths)
    assert max(rel_err(got[k], want[k]) for k in want) <= 1e-12
    torch.manual_seed(100)
    other = run(ours, case, x, hx, lengths)
    assert rel_err(other["y"], got["y"]) > 1e-3
    ref.eval()
    ours.eval()
    want, got = run(ref, case, x, hx, lengths), run(ours, case, x, hx, lengths)
    assert max(rel_err(got[k], want[k]) for k in want) <= 1e-12  # backward in eval mode too


def test_backward_in_eval_mode() -> None:
    case = Case(2, True, False, "padded", True, (5, 3, 4, 6))
    torch.manual_seed(9)
    ref, ours = make_pair(case, torch.float64, dropout=0.5)
    ref.eval()
    ours.eval()
    x, hx, lengths = make_inputs(case, torch.float64, torch.Generator().manual_seed(9))
    want, got = run(ref, case, x, hx, lengths), run(ours, case, x, hx, lengths)
    assert max(rel_err(got[k], want[k]) for k in want) <= 1e-12


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(6, 6, batch_first=True)

    def forward(self, x: Any) -> Any:
        return self.rnn(x)[0]


class _Net(torch.nn.Module):
    """LSTMs at several depths: directly, in a Sequential, in a ModuleList, shared twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(13, 6)
        self.first = torch.nn.LSTM(6, 6, 2, batch_first=True, bidirectional=True)
        self.squeeze = torch.nn.Linear(12, 6)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(_Block()), _Block()])
        self.shared = self.blocks[1]
        self.head = torch.nn.Linear(6, 3)

    def forward(self, tokens: Any) -> Any:
        y = self.squeeze(self.first(self.embed(tokens))[0])
        for block in self.blocks:
            y = block(y)
        return self.head(self.shared(y)[:, -1])


def test_replace_lstm_on_a_nested_model() -> None:
    torch.manual_seed(10)
    net = _Net().double()
    tokens = torch.randint(0, 13, (4, 7))
    params_before = dict(net.named_parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    want = net(tokens)
    rng_state = torch.get_rng_state()
    assert lt.replace_lstm(net) is net
    assert torch.equal(torch.get_rng_state(), rng_state)  # nothing drawn
    kinds = [type(m) for m in net.modules()]
    assert torch.nn.LSTM not in kinds
    assert kinds.count(lt.LSTM) == 3  # the shared block's LSTM once
    assert net.shared is net.blocks[1]
    after = dict(net.named_parameters())
    assert list(after) == list(params_before)
    assert all(after[k] is params_before[k] for k in after)  # the same Parameter objects
    got = net(tokens)
    assert rel_err(got.detach().numpy(), want.detach().numpy()) <= 1e-12
    loss = got.square().sum()
    loss.backward()
    before = net.first.weight_hh_l0_reverse.detach().clone()
    opt.step()  # the optimizer built before the switch updates the switched layers
    assert not torch.equal(net.first.weight_hh_l0_reverse, before)
    lone = torch.nn.LSTM(3, 4)
    switched = lt.replace_lstm(lone)
    assert isinstance(switched, lt.LSTM)
    assert switched.weight_ih_l0 is lone.weight_ih_l0


def test_replace_lstm_refuses_what_lstmcore_cannot_run_and_changes_nothing() -> None:
    net = torch.nn.Sequential(
        torch.nn.LSTM(3, 4), torch.nn.Sequential(torch.nn.LSTM(4, 6, proj_size=2))
    )
    with pytest.raises(ValueError, match=r"replace_lstm: 1\.0: .*proj_size=2"):
        lt.replace_lstm(net)
    assert [type(m) for m in net.modules()].count(torch.nn.LSTM) == 2
    half = torch.nn.Sequential(torch.nn.LSTM(3, 4).half())
    with pytest.raises(ValueError, match=r"replace_lstm: 0: .*float16"):
        lt.replace_lstm(half)


def test_subclasses_of_torch_lstm_are_left_alone() -> None:
    class Custom(torch.nn.LSTM):
        pass

    net = torch.nn.Sequential(Custom(3, 4))
    lt.replace_lstm(net)
    assert type(net[0]) is Custom


def test_adam_training_run_of_a_real_model_matches_torch() -> None:
    """Embedding, a two-layer bidirectional LSTM with dropout over PackedSequence, Linear:
    15 Adam steps in float64 give torch.nn.LSTM's losses to 1e-8 (same seed: same masks)."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.lstm = torch.nn.LSTM(8, 16, 2, batch_first=True, dropout=0.3, bidirectional=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, tokens: Any, lengths: Any) -> Any:
            seq = rnn_utils.pack_padded_sequence(
                self.embed(tokens), lengths, batch_first=True, enforce_sorted=False
            )
            _, (h_n, _) = self.lstm(seq)
            return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))

    def train(switch: bool) -> tuple[list[float], dict[str, Any]]:
        torch.manual_seed(11)
        model = Model().double()
        if switch:
            lt.replace_lstm(model)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(12)
        losses = []
        for _ in range(15):
            tokens = torch.randint(0, 20, (6, 10), generator=gen)
            lengths = torch.randint(1, 11, (6,), generator=gen)
            labels = torch.randint(0, 5, (6,), generator=gen)
            opt.zero_grad()
            loss = F.cross_entropy(model(tokens, lengths), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, model.state_dict()

    want, want_params = train(False)
    got, got_params = train(True)
    assert max(abs(a - b) / abs(b) for a, b in zip(got, want, strict=True)) <= 1e-8, (got, want)
    for name, value in want_params.items():
        assert rel_err(got_params[name].numpy(), value.numpy()) <= 1e-8, name


def test_double_backward_raises_one_clear_error() -> None:
    torch.manual_seed(13)
    m = lt.LSTM(3, 4, 2, dtype=torch.float64)
    ref = torch.nn.LSTM(3, 4, 2, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(m(x)[0].square().sum(), [x, *m.parameters()], create_graph=True)
    want = torch.autograd.grad(ref(x)[0].square().sum(), [x, *ref.parameters()])
    for a, b in zip(grads, want, strict=True):  # first-order gradients under create_graph
        assert rel_err(a.detach().numpy(), b.numpy()) <= 1e-12
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        sum(g.square().sum() for g in grads).backward()


def test_saved_state_lives_as_long_as_the_graph() -> None:
    """What the core keeps for backward goes with the autograd graph (after backward, or when
    the outputs are dropped unused); inference keeps nothing; retain_graph runs it twice."""
    gc.collect()
    assert len(_ops._LIVE) == 0
    m = lt.LSTM(3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        m(x)
    assert len(_ops._LIVE) == 0
    y, (h_n, c_n) = m(x)
    assert len(_ops._LIVE) == 4  # one per layer and direction
    del y, h_n, c_n
    gc.collect()
    assert len(_ops._LIVE) == 0
    y, _ = m(x)
    y.sum().backward(retain_graph=True)
    first = m.weight_ih_l0.grad.clone()
    m.zero_grad()
    y.sum().backward()
    assert torch.equal(m.weight_ih_l0.grad, first)
    del y, _
    gc.collect()
    assert len(_ops._LIVE) == 0


def test_graphs_alive_at_once_keep_their_own_buffers() -> None:
    """Contexts go back to the pool only when their graph is gone: two forwards of the same
    shape before either backward, then a third after the first one's backward (which reuses
    its buffers), each give torch's gradients."""
    _ops.POOL.clear()
    case = Case(2, True, False, "packed", True, (6, 4, 3, 5))
    torch.manual_seed(23)
    ref, ours = make_pair(case, torch.float64)
    gen = torch.Generator().manual_seed(23)
    batches = [make_inputs(case, torch.float64, gen) for _ in range(3)]

    def forward(m: Any, batch: Any) -> Any:
        x, hx, lengths = batch
        seq = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h_n, _) = m(seq, hx)
        return out.data.square().sum() + h_n.sum()

    def grads(m: Any) -> list[np.ndarray]:
        out = [p.grad.numpy().copy() for p in m.parameters()]
        m.zero_grad(set_to_none=True)
        return out

    got, want = [], []
    for m, sink in ((ours, got), (ref, want)):
        first, second = forward(m, batches[0]), forward(m, batches[1])
        first.backward()
        sink.append(grads(m))
        third = forward(m, batches[2])  # may take the first one's buffers
        second.backward()
        sink.append(grads(m))
        third.backward()
        sink.append(grads(m))
    assert _ops.POOL._bytes > 0  # the buffers came back
    for g_step, w_step in zip(got, want, strict=True):
        for a, b in zip(g_step, w_step, strict=True):
            assert rel_err(a, b) <= 1e-12


def test_the_pool_stays_within_its_budget() -> None:
    pool = _ops._ContextPool(budget=3 * _ops._ContextPool.nbytes((4, 2, 3, 5, "float64")))
    m = lt.LSTM(3, 5, dtype=torch.float64)
    old, _ops.POOL = _ops.POOL, pool
    try:
        for steps in (4, 4, 5, 6, 7, 4):
            with torch.no_grad():
                m(torch.randn(steps, 2, 3, dtype=torch.float64))
            assert pool._bytes <= pool.budget
    finally:
        _ops.POOL = old


def test_weights_changed_in_place_before_backward_raise_torchs_error() -> None:
    m = lt.LSTM(3, 4)
    y, _ = m(torch.randn(5, 2, 3))
    with torch.no_grad():
        m.weight_hh_l0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_gradients_flow_only_where_needed() -> None:
    """x without requires_grad: no dx is computed (the core skips that GEMM) and x.grad stays
    None; frozen parameters get no gradient."""
    m = lt.LSTM(3, 4, 2)
    m.weight_ih_l0.requires_grad_(False)
    x = torch.randn(5, 2, 3)
    y, (h_n, _) = m(x)
    (y.sum() + h_n.sum()).backward()
    assert x.grad is None and m.weight_ih_l0.grad is None
    assert m.weight_hh_l0.grad is not None and m.bias_ih_l1.grad is not None
    assert m.bias_ih_l1.grad is not m.bias_hh_l1.grad  # equal values, separate tensors
    assert torch.equal(m.bias_ih_l1.grad, m.bias_hh_l1.grad)


@pytest.mark.parametrize("variant", ["full", "bare"])
def test_operators_pass_opcheck(variant: str) -> None:
    """torch.library.opcheck: schema, autograd registration, fake kernels (shapes, strides and
    dtypes as the real ones, from a strided batch_first view), AOT dispatch."""
    gen = torch.Generator().manual_seed(22)

    def param(*shape: int, grad: bool = True) -> Any:
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=grad)

    steps, batch, inp, hidden = 5, 3, 4, 6
    x = param(batch, steps, inp, grad=False).transpose(0, 1).requires_grad_()  # strided leaf
    if variant == "full":
        args: tuple[Any, ...] = (x, param(batch, hidden), param(batch, hidden),
                                 param(4 * hidden, inp), param(4 * hidden, hidden),
                                 param(4 * hidden), param(4 * hidden), torch.tensor([5, 2, 4]),
                                 True, "fp32")  # fmt: skip
    else:  # no states, no bias, no lengths
        args = (x, None, None, param(4 * hidden, inp), param(4 * hidden, hidden), None, None,
                None, False, "fp32")  # fmt: skip
    torch.library.opcheck(torch.ops.lstmcore.lstm.default, args)
    bare = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.lstmcore.lstm_inference.default, bare)


# ---- torch.compile ------------------------------------------------------------------------


class _Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(17, 6)
        self.lstm = lt.LSTM(6, 8, 2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, tokens: Any) -> Any:
        y, (h_n, _) = self.lstm(self.embed(tokens))
        return self.head(y[:, -1]) + h_n.sum(0).sum(1, keepdim=True)


def _step(model: Any, tokens: Any) -> tuple[Any, list[Any]]:
    model.zero_grad(set_to_none=True)
    out = model(tokens)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.subprocess
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own imports
def test_torch_compile_gives_eager_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fullgraph=True: dynamo traces the whole module, lstmcore's operators included (a
    subclass of torch.nn.LSTM would be refused); forward and every gradient as eager. A fresh
    inductor cache: its on-disk entries keep the fake kernels' strides of the run that made
    them, so a changed kernel would meet stale ones."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(14)
    model = _Classifier().double()
    tokens = torch.randint(0, 17, (5, 9))
    want, want_grads = _step(model, tokens)
    compiled = torch.compile(model, fullgraph=True)
    got, got_grads = _step(compiled, tokens)
    assert rel_err(got.numpy(), want.numpy()) <= 1e-12
    for a, b in zip(got_grads, want_grads, strict=True):
        assert rel_err(a.numpy(), b.numpy()) <= 1e-12


def test_torch_compile_with_packed_sequences() -> None:
    torch.manual_seed(15)
    m = lt.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    seq = rnn_utils.pack_padded_sequence(x, torch.tensor([7, 2, 5, 1]), enforce_sorted=False)

    def step(model: Any) -> tuple[Any, ...]:
        model.zero_grad(set_to_none=True)
        out, (h_n, c_n) = model(seq)
        (out.data.square().sum() + h_n.sum() + c_n.sum()).backward()
        return out.data.detach(), h_n.detach(), *(p.grad.clone() for p in model.parameters())

    want = step(m)
    got = step(torch.compile(m, backend="aot_eager", fullgraph=True))
    for a, b in zip(got, want, strict=True):
        assert rel_err(a.numpy(), b.numpy()) <= 1e-12


# ---- autocast -----------------------------------------------------------------------------


def _numpy_bf16(ours: lt.LSTM, x: Any, lengths: Any = None) -> Any:
    """lstmcore's NumPy layer with precision="bf16" on the same weights: the reference."""
    ref = lnn.LSTM(ours.input_size, ours.hidden_size, ours.num_layers, ours.bidirectional,
                   ours.batch_first, precision="bf16")  # fmt: skip
    ref.load_state_dict({k: v.detach().numpy() for k, v in ours.state_dict().items()})
    y, h_n, c_n = ref.forward(x.numpy(), lengths=lengths, for_backward=False)
    return y, h_n, c_n


def test_autocast_bf16_padded_runs_the_bf16_path_and_returns_torchs_dtypes() -> None:
    torch.manual_seed(16)
    ours = lt.LSTM(5, 9, 2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h_n, c_n) = ours(x)
    assert (y.dtype, h_n.dtype, c_n.dtype) == (torch.bfloat16,) * 3  # torch's oneDNN path
    want_y, want_h, want_c = _numpy_bf16(ours, x.detach())
    for got, want in ((y, want_y), (h_n, want_h), (c_n, want_c)):
        exact = torch.from_numpy(want).bfloat16().float()
        assert torch.equal(got.float(), exact)
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())
    ref = torch.nn.LSTM(5, 9, 2, bidirectional=True, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    want_dx = torch.autograd.grad(ref(x)[0].square().sum(), x)[0]
    assert rel_err(x.grad.numpy(), want_dx.numpy()) <= 5e-2  # bf16 operands: ~1e-2 apart


def test_autocast_bf16_packed_returns_float32_as_torch() -> None:
    torch.manual_seed(17)
    ours = lt.LSTM(4, 6, 2)
    ref = torch.nn.LSTM(4, 6, 2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 4)
    lengths = torch.tensor([6, 2, 4])
    seq = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out, (h_n, c_n) = ours(seq)
        want_out, (want_h, _) = ref(seq)  # torch's packed path runs float32 there
        bf16_out, (bf16_h, _) = ours(seq._replace(data=seq.data.bfloat16()))
    assert (out.data.dtype, h_n.dtype, c_n.dtype) == (
        want_out.data.dtype,
        want_h.dtype,
        torch.float32,
    )
    assert (bf16_out.data.dtype, bf16_h.dtype) == (torch.bfloat16, torch.bfloat16)
    y, h, _ = _numpy_bf16(ours, x, lengths.numpy())
    padded, _ = rnn_utils.pad_packed_sequence(out, total_length=6)
    assert rel_err(padded.numpy(), y) <= 1e-6
    assert rel_err(h_n.numpy(), h) <= 1e-6
    assert rel_err(padded.numpy(), rnn_utils.pad_packed_sequence(want_out)[0].numpy()) <= 5e-2


def test_autocast_leaves_float64_layers_alone() -> None:
    case = Case(2, True, False, "padded", True, (5, 3, 4, 6))
    torch.manual_seed(18)
    ref, ours = make_pair(case, torch.float64)
    x, hx, lengths = make_inputs(case, torch.float64, torch.Generator().manual_seed(18))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = run(ref, case, x, hx, lengths), run(ours, case, x, hx, lengths)
    assert max(rel_err(got[k], want[k]) for k in want) <= 1e-12


# ---- what lstmcore does not do ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"proj_size": 2}, "proj_size=2"),
        ({"device": "meta"}, "device='meta'"),
        ({"device": "cuda"}, "device='cuda'"),
        ({"dtype": torch.float16}, "dtype=torch.float16"),
        ({"dtype": torch.bfloat16}, "dtype=torch.bfloat16"),
    ],
    ids=["proj_size", "meta", "cuda", "float16", "bfloat16"],
)
def test_unsupported_constructor_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match) + r".*not supported"):
        lt.LSTM(4, 6, **kwargs)


def test_unsupported_tensors_raise_at_forward() -> None:
    m = lt.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"dtype torch\.float16 .*not supported"):
        lt.LSTM(3, 4).half()(x.half())
    with pytest.raises(ValueError, match=r"parameters on meta .*not supported"):
        lt.LSTM(3, 4).to("meta")(x)
    with pytest.raises(ValueError, match=r"tensors on meta .*not supported"):
        m(x.to("meta"))
    with pytest.raises(ValueError, match=r"autocast to torch\.float16 .*not supported"):
        with torch.autocast("cpu", dtype=torch.float16):
            m(x)
    with pytest.raises(ValueError, match=r"input of dtype torch\.float64 under autocast"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x.double())


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m(torch.randn(5, 2, 3).double()),  # dtype differs from the weights'
        lambda m: m(torch.randn(5, 2, 7)),  # wrong input size
        lambda m: m(torch.randn(2, 5, 2, 3)),  # 4-d
        lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))),
        lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5))),
        lambda m: m(torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))),
    ],
    ids=["dtype", "input_size", "4d", "h0_shape", "c0_shape", "unbatched_hx"],
)
def test_bad_arguments_raise_torchs_errors(call: Any) -> None:
    """The checks torch.nn.LSTM makes, with its exception types and messages."""
    torch.manual_seed(19)
    ours = lt.LSTM(3, 4, 2)
    ref = torch.nn.LSTM(3, 4, 2)
    with pytest.raises(Exception) as want:
        call(ref)
    with pytest.raises(type(want.value), match=re.escape(str(want.value).splitlines()[0])):
        call(ours)


def test_bad_constructor_arguments_raise_torchs_errors() -> None:
    for kwargs in ({"dropout": 1.5}, {"dropout": True}, {"bias": 1}, {"batch_first": "yes"}):
        with pytest.raises(Exception) as want:
            torch.nn.LSTM(3, 4, 2, **kwargs)
        with pytest.raises(type(want.value), match=re.escape(str(want.value))):
            lt.LSTM(3, 4, 2, **kwargs)
    for args in ((0, 4), (3, 0), (3.0, 4), (3, 4, 0)):
        with pytest.raises(Exception) as want:
            torch.nn.LSTM(*args)
        with pytest.raises(type(want.value), match=re.escape(str(want.value))):
            lt.LSTM(*args)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        lt.LSTM(3, 4, 1, dropout=0.5)


# ---- ONNX ---------------------------------------------------------------------------------


def _onnx_session(path: Path) -> tuple[Any, set[str]]:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    ops_used = {node.op_type for node in onnx.load(str(path)).graph.node}
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), ops_used


@pytest.fixture
def quiet_exporter() -> Iterator[None]:
    """The dynamo exporter's own chatter (deprecations inside torch and onnxscript)."""
    pytest.importorskip("onnxscript", reason="onnxscript (the ONNX exporter's) is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class _Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.lstm = torch.nn.LSTM(6, 8, 2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, tokens: Any) -> Any:
        y, (_, c_n) = self.lstm(self.embed(tokens))
        return self.head(y), c_n


def test_onnx_export_of_a_switched_model_uses_onnxs_lstm(
    tmp_path: Path, quiet_exporter: None
) -> None:
    torch.manual_seed(20)
    model = lt.replace_lstm(_Tagger()).eval()
    tokens = torch.randint(0, 11, (4, 9))
    with torch.no_grad():
        want = model(tokens)
    path = tmp_path / "tagger.onnx"
    torch.onnx.export(model, (tokens,), str(path))
    assert isinstance(model.lstm, lt.LSTM) and not model.training
    session, ops_used = _onnx_session(path)
    assert "LSTM" in ops_used
    got = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
    for a, b in zip(got, want, strict=True):
        assert np.abs(a - b.numpy()).max() <= 1e-5


class _Cells(torch.nn.Module):
    """lstmcore's inference operator called directly, with lengths, states and reverse: what a
    torch.export program of a switched model holds."""

    def __init__(self, lstm: lt.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Any, h0: Any, c0: Any, lengths: Any) -> Any:
        m = self.lstm
        fwd = _ops.lstm_inference(x, h0, c0, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0,
                                  m.bias_hh_l0, lengths, False, "fp32")  # fmt: skip
        rev = _ops.lstm_inference(x, None, None, m.weight_ih_l0_reverse, m.weight_hh_l0_reverse,
                                  None, None, lengths, True, "fp32")  # fmt: skip
        return (*fwd, *rev)


def test_torch_export_program_converts_with_the_translation_table(
    tmp_path: Path, quiet_exporter: None
) -> None:
    torch.manual_seed(21)
    model = lt.replace_lstm(_Tagger()).eval()
    tokens = torch.randint(0, 11, (4, 9))
    program = torch.export.export(model, (tokens,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "lstmcore.lstm.default" in targets  # lstmcore's operators, as torch.export saw them
    path = tmp_path / "program.onnx"
    torch.onnx.export(program, f=str(path), custom_translation_table=lt.onnx_translation_table())
    session, ops_used = _onnx_session(path)
    assert "LSTM" in ops_used
    with torch.no_grad():
        want = model(tokens)
    got = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
    for a, b in zip(got, want, strict=True):
        assert np.abs(a - b.numpy()).max() <= 1e-5

    cells = _Cells(lt.LSTM(3, 5, bidirectional=True)).eval()
    args = (torch.randn(6, 4, 3), torch.randn(4, 5), torch.randn(4, 5), torch.tensor([6, 2, 5, 1]))
    path = tmp_path / "cells.onnx"
    with torch.no_grad():
        want = cells(*args)
        torch.onnx.export(
            cells, args, str(path), custom_translation_table=lt.onnx_translation_table()
        )
    session, ops_used = _onnx_session(path)
    assert "LSTM" in ops_used
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    for a, b in zip(session.run(None, feeds), want, strict=True):
        assert np.abs(a - b.numpy()).max() <= 1e-5
