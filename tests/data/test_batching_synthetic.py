"""Determinism and exact resume of the batch iterators; synthetic task targets."""

from __future__ import annotations

import pytest
import torch

from normrnn.data import (IGNORE_INDEX, BatchIterator, StreamBatcher, adding_problem, copy_memory,
                          pad_sequences)
from normrnn.data.textcls import LabelledSequences


def _seqs(n=23):
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 30, (n,), generator=g)
    return LabelledSequences([torch.arange(1, int(L) + 1) for L in lengths], torch.arange(n) % 3)


def _as_lists(batches):
    return [(b.inputs.tolist(), b.lengths.tolist(), b.targets.tolist()) for b in batches]


def test_pad_sequences():
    x, lengths = pad_sequences([torch.ones(3, 2), torch.ones(1, 2)])
    assert x.shape == (2, 3, 2) and lengths.dtype == torch.int64 and lengths.tolist() == [3, 1]
    assert x[1, 1:].abs().sum() == 0
    xt, _ = pad_sequences([torch.ones(3), torch.ones(1)], batch_first=False)
    assert xt.shape == (3, 2)


@pytest.mark.parametrize("bucket", [None, 4])
def test_batch_iterator_deterministic_and_resumable(bucket):
    data = _seqs()
    it1 = BatchIterator(data, batch_size=4, seed=7, bucket=bucket)
    it2 = BatchIterator(data, batch_size=4, seed=7, bucket=bucket)
    epoch0 = _as_lists(it1)
    assert epoch0 == _as_lists(it2)
    assert it1.epoch == 1 and it1.position == 0
    assert _as_lists(it1) != epoch0  # new epoch, new order
    seen = sorted(label for b in epoch0 for label in b[2])
    assert len(seen) == len(data)  # every example once
    assert all(b[1] == [sum(1 for v in row if v) for row in b[0]] for b in epoch0)  # lengths match padding

    # resume in the middle of epoch 0 from a state dict
    it3 = BatchIterator(data, batch_size=4, seed=7, bucket=bucket)
    gen = iter(it3)
    for _ in range(2):
        next(gen)
    state = it3.state_dict()
    it4 = BatchIterator(data, batch_size=4, seed=7, bucket=bucket)
    it4.load_state_dict(state)
    assert _as_lists(it4) == epoch0[2:]
    assert _as_lists(BatchIterator(data, batch_size=4, seed=7, bucket=bucket, position=5)) == epoch0[5:]


def test_bucketing_reduces_padding():
    data = _seqs(200)
    def padding(it):
        return sum(int(b.inputs.numel() - b.lengths.sum()) for b in it)
    assert padding(BatchIterator(data, 8, seed=1, bucket=10)) < padding(BatchIterator(data, 8, seed=1))


def test_batch_iterator_state_mismatch():
    it = BatchIterator(_seqs(), batch_size=4)
    with pytest.raises(ValueError):
        it.load_state_dict({"epoch": 0, "position": 1, "batch_size": 5, "n": 23})


def test_stream_batcher_layout_and_resume():
    ids = torch.arange(103)
    sb = StreamBatcher(ids, batch_size=4, seq_len=6)
    # 4 streams of 25 consecutive ids; 24 usable steps -> 4 batches
    assert len(sb) == 4
    first = sb.batch(0)
    assert first.inputs.shape == (4, 6) and first.inputs[1, 0] == 25
    assert torch.equal(first.targets, first.inputs + 1)
    full = [(b.inputs.clone(), b.targets.clone()) for b in sb]
    assert torch.equal(full[1][0][:, 0], full[0][0][:, -1] + 1)  # contiguous across batches
    assert sb.epoch == 1 and sb.position == 0

    sb2 = StreamBatcher(ids, batch_size=4, seq_len=6)
    gen = iter(sb2)
    next(gen)
    next(gen)
    state = sb2.state_dict()
    assert state["position"] == 2
    sb3 = StreamBatcher(ids, batch_size=4, seq_len=6)
    sb3.load_state_dict(state)
    rest = list(sb3)
    assert len(rest) == 2 and all(torch.equal(a.inputs, b[0]) for a, b in zip(rest, full[2:]))
    assert [torch.equal(b.inputs, full[3][0]) for b in StreamBatcher(ids, 4, 6, position=3)] == [True]
    with pytest.raises(ValueError):
        sb3.load_state_dict({**state, "seq_len": 7})

    short = StreamBatcher(torch.arange(30), batch_size=2, seq_len=4)  # 15 per stream, 14 usable
    assert [b.inputs.shape[1] for b in short] == [4, 4, 4, 2]
    assert len(StreamBatcher(torch.arange(30), 2, 4, drop_last=True)) == 3
    assert StreamBatcher(ids, 4, 6, batch_first=False).batch(0).inputs.shape == (6, 4)


def test_adding_problem_targets():
    task = adding_problem(64, seq_len=50, seed=1)
    assert task.x.shape == (64, 50, 2) and task.y.shape == (64,)
    marks = task.x[..., 1]
    assert (marks.sum(1) == 2).all()
    assert torch.allclose((task.x[..., 0] * marks).sum(1), task.y)
    first = marks.argmax(1)
    assert (first < 25).all() and (marks[:, 25:].sum(1) == 1).all()
    assert torch.equal(adding_problem(64, seq_len=50, seed=1).x, task.x)
    assert not torch.equal(adding_problem(64, seq_len=50, seed=2).x, task.x)

    var = adding_problem(100, seq_len=40, min_len=10, seed=0)
    assert var.lengths().min() >= 10 and var.lengths().max() <= 40
    for i in range(100):
        n = int(var.lengths()[i])
        assert var.x[i, n:].abs().sum() == 0 and var.x[i, :n, 1].sum() == 2
        assert torch.isclose((var.x[i, :, 0] * var.x[i, :, 1]).sum(), var.y[i])
    batch = next(iter(BatchIterator(var, 16, seed=0)))
    assert batch.inputs.shape[1] == int(batch.lengths.max())


def test_copy_memory_layout():
    task = copy_memory(8, delay=20, copy_len=5, n_symbols=8, seed=3)
    assert task.x.shape == (8, 30) and task.y.shape == (8, 30) and task.n_classes == 10
    sym = task.x[:, :5]
    assert ((sym >= 1) & (sym <= 8)).all()
    assert (task.x[:, 5:24] == 0).all() and (task.x[:, 24] == 9).all() and (task.x[:, 25:] == 0).all()
    assert (task.y[:, :25] == 0).all() and torch.equal(task.y[:, 25:], sym)

    var = copy_memory(20, delay=20, copy_len=3, min_delay=5, seed=0)
    for i in range(20):
        d = int(var.lengths()[i]) - 6
        assert 5 <= d <= 20
        assert var.x[i, 3 + d - 1] == 9
        assert torch.equal(var.y[i, 3 + d : 6 + d], var.x[i, :3])
        assert (var.y[i, 6 + d :] == IGNORE_INDEX).all()
