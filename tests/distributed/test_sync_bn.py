"""Synchronised recurrent batch norm: 2 ranks with batch B each = 1 process with batch 2B, to float tolerance:
outputs, input and parameter gradients, running statistics; with and without padding."""
from __future__ import annotations

import pytest
import torch

import normrnn
from normrnn.sync import sync_batch_norm

import workers


def close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def ranks():
    from normrnn.multiproc import run_local

    return run_local("workers:sync_bn_worker", 2, {}, path=str(workers.__file__).rsplit("/", 1)[0], timeout=90)


@pytest.mark.parametrize("case", ["full", "padded"])
def test_two_ranks_equal_one_process_with_doubled_batch(ranks, case):
    data = workers.sample()
    model = workers.build_lstm(sync=True)  # no process group here: sync_stats falls back to local statistics
    lengths = None if case == "full" else data["lengths"]
    reference = [workers.sync_bn_step(model, data["x"], data["proj"], lengths) for _ in range(2)]
    for step, ref in enumerate(reference):
        r0, r1 = ranks[0][case][step], ranks[1][case][step]
        close(torch.cat([r0["out"], r1["out"]], 1), ref["out"])
        close(torch.cat([r0["h"], r1["h"]], 1), ref["h"])
        close(torch.cat([r0["x_grad"], r1["x_grad"]], 1), ref["x_grad"])
        for name, g in ref["grads"].items():  # the sum loss over both halves: rank gradients add up
            close(r0["grads"][name] + r1["grads"][name], g, tol=1e-4 * max(1.0, float(g.abs().max())))
        for name, b in ref["buffers"].items():
            assert torch.equal(r0["buffers"][name], r1["buffers"][name]), name  # identical on every rank
            close(r0["buffers"][name], b)


def test_synced_layers_run_the_fused_loop(ranks):
    # (issue 14, item 9: the engines all-reduce each step's sums; tests/distributed/test_sync_fused.py covers every
    # loop kind and engine)
    assert ranks[0]["full_backend"] == "fused-native"
    assert ranks[0]["fused_error"] is None


def test_bytes_are_counted(ranks):
    c = ranks[0]["counter"]
    F = 4 * workers.H
    # forward: x-term (T rows) + h-term and cell norm per step; backward: the same calls, 2F per row
    forward = workers.T * (2 * F + 1) + workers.T * (2 * F + 1) + workers.T * (2 * workers.H + 1)
    backward = workers.T * 2 * F * 2 + workers.T * 2 * workers.H
    assert c["calls"] == 2 * (1 + 2 * workers.T)
    assert c["bytes"] == 4 * (forward + backward)


def test_without_process_group_sync_is_the_local_baseline():
    data = workers.sample()
    plain, synced = workers.build_lstm(sync=False), sync_batch_norm(workers.build_lstm(sync=False))
    assert all(m.sync_stats for m in synced.modules() if isinstance(m, normrnn.RecurrentBatchNorm))
    assert synced.options.sync_stats and synced.active_backend() == plain.active_backend()
    a = workers.sync_bn_step(plain, data["x"], data["proj"], data["lengths"])
    b = workers.sync_bn_step(synced, data["x"], data["proj"], data["lengths"])
    close(a["out"], b["out"], tol=1e-6)
    assert set(plain.state_dict()) == set(synced.state_dict())  # nothing added to the state dict
