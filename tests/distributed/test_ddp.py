"""DDP training on 2 gloo ranks equals one process with the doubled batch (LN; and BN with synced statistics),
and the Trainer's multi-process run: rank 0 checkpoints, a restart resumes exactly."""
from __future__ import annotations

import pytest
import torch

import workers

STEPS = 5


@pytest.fixture(scope="module")
def ddp_ranks():
    from normrnn.multiproc import run_local

    return run_local("workers:ddp_pair_worker", 2, {"steps": STEPS},
                     path=str(workers.__file__).rsplit("/", 1)[0], timeout=90)


def single_process(norm: str, sync: bool) -> dict:
    model, batches = workers.ddp_setup(norm, sync)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for x, lengths, y in batches[:STEPS]:
        # DDP averages gradients over ranks: the equal of the mean loss over the doubled batch
        loss = workers.ddp_loss(model, x, lengths, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"losses": losses, "params": dict(model.named_parameters()), "buffers": dict(model.named_buffers())}


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_ddp_equals_single_process_with_doubled_batch(ddp_ranks, norm):
    ref = single_process(norm, sync=norm == "batch")
    for rank in ddp_ranks:
        got = rank[norm]
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-6)
        for name, p in ref["params"].items():
            torch.testing.assert_close(got["params"][name], p.detach(), rtol=1e-4, atol=1e-5)
        for name, b in ref["buffers"].items():
            torch.testing.assert_close(got["buffers"][name], b, rtol=1e-4, atol=1e-5)
    assert ddp_ranks[0][norm]["losses"] == ddp_ranks[1][norm]["losses"]


def test_trainer_checkpoints_on_rank0_and_resumes(run2, tmp_path):
    from conftest_text import write_text

    text = write_text(tmp_path / "tiny.txt", 12_000)
    config = dict(task="charlm", data=str(text), norm="batch", sync_stats=True, hidden=16, embed=8, layers=1,
                  batch_size=4, seq_len=12, max_steps=8, checkpoint_every=2, eval_limit=400, log_every=1)
    full, cut = tmp_path / "full", tmp_path / "cut"
    r0, r1 = run2("trainer_worker", timeout=120, config=config, out_full=str(full), out_cut=str(cut), cut=3)
    # all ranks log the same all-reduced loss; the resumed run continues the interrupted one exactly (bit for bit,
    # as the README promises: same world size, same thread count, restored RNG and BPTT state)
    assert r0["full"] == r1["full"] and len(r0["full"]) == 8
    assert r0["cut"] + r0["resumed"] == r0["full"]
    assert r1["cut"] + r1["resumed"] == r1["full"]
    assert r0["checkpoint_events"] > 0 and r1["checkpoint_events"] == 0  # only rank 0 writes
    ck = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert len(ck["ranks"]) == 2 and ck["config"]["world_size"] == 2 and ck["step"] == 8
    assert r0["summary"]["valid_bpc"] == r1["summary"]["valid_bpc"]  # rank 0's eval, broadcast
    assert sorted(p.name for p in full.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"]
