"""Synchronised recurrent batch norm on the fused engines (issue 14, item 9): 2 gloo ranks with batch B each equal
one process with batch 2B (outputs, final states, input and parameter gradients, running statistics), for every
loop kind (LSTM with separate and joint terms, GRU with separate and joint terms, Elman RNN with separate and joint
terms), on the native engine, the PyTorch engine and the reference loop, with and without padding (lengths that
differ across ranks, steps where one rank has a single running sequence and the last step with a single one in the
whole batch). And the number of all-reduces per step, forward and backward, is the designed one: the input term's
batch norm one for all steps before the loop, then one per step for each batch-norm kind inside the loop."""
from __future__ import annotations

import pytest
import torch

import workers

CASES = list(workers.FUSED_CASES)
ENGINES = ["native", "torch", "reference"]


def close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def ranks():
    from normrnn.fused import native
    from normrnn.multiproc import run_local

    if native.load() is None:
        pytest.skip("the native kernels are not available")  # (built here first: the ranks then load the cache)
    return run_local("workers:sync_fused_worker", 2, {"cases": CASES, "engines": ENGINES},
                     path=str(workers.__file__).rsplit("/", 1)[0], timeout=300)


def single_process(case: str, engine: str, padded: bool) -> dict:
    """The same two steps in this process (no process group: local statistics) over the whole batch."""
    data = workers.sample()
    return workers.fused_sync_run(case, engine, padded, slice(None), data["lengths"])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_process_with_doubled_batch(ranks, one_thread, case, engine, padded):
    r0, r1 = ranks[0][(case, engine, padded)], ranks[1][(case, engine, padded)]
    expected_backend = "reference" if engine == "reference" else f"fused-{engine}"
    assert r0["backend"] == r1["backend"] == expected_backend  # synced layers run the fused loop now
    ref = single_process(case, engine, padded)
    for step, want in enumerate(ref["steps"]):
        a, b = r0["steps"][step], r1["steps"][step]
        close(torch.cat([a["out"], b["out"]], 1), want["out"])
        for sa, sb, sw in zip(a["state"], b["state"], want["state"]):
            close(torch.cat([sa, sb], -2), sw)
        close(torch.cat([a["x_grad"], b["x_grad"]], 1), want["x_grad"])
        for name, g in want["grads"].items():  # the sum loss over both halves: the ranks' gradients add up
            close(a["grads"][name] + b["grads"][name], g, tol=1e-4 * max(1.0, float(g.abs().max())))
        for name, buf in want["buffers"].items():
            assert torch.equal(a["buffers"][name], b["buffers"][name]), name  # identical on every rank
            close(a["buffers"][name], buf)


def norm_widths(case: str) -> tuple[int, list[int]]:
    """The input term's batch-norm width (0: none, joint terms) and the widths of the loop's batch norms."""
    H = workers.H
    return {"lstm": (4 * H, [4 * H, H]), "lstm_joint": (0, [4 * H, H]), "gru": (3 * H, [3 * H]),
            "gru_joint": (0, [2 * H, H]), "rnn": (H, [H]), "rnn_joint": (0, [H])}[case]


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_all_reduces_per_step_are_the_designed_ones(ranks, case, engine, padded):
    """Forward: one all-reduce of [count | sum | sum of squares] for the input term's T steps, then one per step
    and loop norm. Backward: one of [sum dy | sum dy·x̂] for the input term, then one per loop norm and step that
    normalized with batch statistics (at least two sequences running on all ranks together: in the padded batch
    every step but the last)."""
    T, elt = workers.T, 4
    x_width, loop_widths = norm_widths(case)
    usable = T - 1 if padded else T
    want_fwd_calls = (1 if x_width else 0) + T * len(loop_widths)
    want_bwd_calls = (1 if x_width else 0) + usable * len(loop_widths)
    want_fwd_bytes = elt * ((T * (2 * x_width + 1) if x_width else 0) + T * sum(2 * f + 1 for f in loop_widths))
    want_bwd_bytes = elt * (T * 2 * x_width + usable * sum(2 * f for f in loop_widths))
    for rank in (0, 1):
        for step in ranks[rank][(case, engine, padded)]["steps"]:
            assert step["forward"] == {"calls": want_fwd_calls, "bytes": want_fwd_bytes}
            assert step["backward"] == {"calls": want_bwd_calls, "bytes": want_bwd_bytes}
