"""The synchronised path of the fused loops in one process: with a reducer that sums over one rank (the identity),
synced batch norm must compute what local batch norm computes, calling the reducer the designed number of times;
an engine that cannot call a loop's reducer never gets a synced loop. (The 2-rank equality with the doubled batch
is tests/distributed/test_sync_fused.py.)"""
from __future__ import annotations

import types

import pytest
import torch

import normrnn
from normrnn import moments
from normrnn.fused import native, select, torch_engine

T, N, I, H = 6, 5, 3, 4
CASES = {
    "lstm": ("LSTM", {}, 2),
    "lstm_joint": ("LSTM", {"norm_terms": "joint", "carry_normalized_cell": True}, 2),
    "gru": ("GRU", {}, 1),
    "gru_joint": ("GRU", {"norm_terms": "joint"}, 2),
    "rnn": ("RNN", {}, 1),
}


@pytest.fixture
def one_rank_group(monkeypatch):
    """A 'process group' of one rank: synced statistics are on, and every all-reduce is the identity (counted)."""
    calls = []

    def identity(t, process_group=None):
        calls.append(t.numel())
        return t

    monkeypatch.setattr(moments, "is_active", lambda process_group=None: True)
    monkeypatch.setattr(moments, "all_reduce_sum", identity)
    return calls


def run(case: str, sync: bool, lengths):
    torch.manual_seed(0)
    cls, kw, _ = CASES[case]
    model = getattr(normrnn, cls)(I, H, norm="batch", sync_stats=sync, max_steps=T, backend="fused", **kw).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=g, dtype=torch.float64).requires_grad_(True)
    out, state = model(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    (out.sin().sum() + sum(s.cos().sum() for s in states)).backward()
    return [out, *states, x.grad, *(p.grad for p in model.parameters()), *model.buffers()]


ENGINES = ["native", "torch"]


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(CASES))
def test_identity_reducer_equals_local_batch_norm(one_rank_group, case, engine, padded):
    if engine == "native" and native.load() is None:
        pytest.skip("the native kernels are not available")
    lengths = torch.tensor([6, 2, 5, 1, 3]) if padded else None
    with select.force_engine(engine):
        local = run(case, False, lengths)
        assert not one_rank_group
        synced = run(case, True, lengths)
    for a, b in zip(synced, local):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # forward: the input term once (separate terms) + one per step and loop norm; backward the same, on the steps
    # with at least two sequences running (padded: lengths 6, 2, 5, 1, 3 leave one at step 5)
    norms = CASES[case][2]
    x_term = 0 if "joint" in case else 1
    usable = T - 1 if padded else T
    assert len(one_rank_group) == 2 * x_term + norms * (T + usable)


def test_an_engine_without_reduce_gets_no_synced_loop(one_rank_group, monkeypatch):
    """An engine that does not announce ``reduces`` (say a new GPU engine) is replaced by the PyTorch engine for
    synced loops, instead of silently normalizing with one rank's statistics."""
    seen = []

    def refuse(*args):
        seen.append(args[-1].reduce)
        raise AssertionError("a synced loop reached an engine without reduce")

    with select.force_engine("torch"):
        local = run("lstm", False, None)
    fake = types.SimpleNamespace(**{k: getattr(torch_engine, k) for k in dir(torch_engine) if not k.startswith("_")})
    del fake.reduces
    fake.name, fake.lstm_forward = "fake", refuse
    monkeypatch.setattr(select, "engine", lambda device=None, dtype=None: fake)
    synced = run("lstm", True, None)
    assert not seen and len(one_rank_group) == 2 + 2 * 2 * T
    for a, b in zip(synced, local):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
