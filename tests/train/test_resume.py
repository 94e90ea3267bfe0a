"""Exact resume after a kill, and checkpoints that a crash mid-write cannot corrupt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from normrnn.cli import main as cli_main
from normrnn.train import TrainConfig, atomic_save, load_checkpoint, train
from normrnn.train.checkpoint import checkpoint_path


def _config(text_file: Path, out: Path, **kw) -> TrainConfig:
    # Two layers with dropout and zoneout, so the resumed run must also restore the RNG to match; 2 epochs of
    # 5 batches, so the run crosses an epoch boundary and carries the BPTT state within each epoch.
    base = dict(task="charlm", data=str(text_file), limit=8 * (5 * 20 + 1), eval_limit=400, hidden=16, layers=2,
                dropout=0.2, zoneout=0.1, batch_size=8, seq_len=20, epochs=2, lr=1e-2, schedule="cosine",
                checkpoint_every=3, progress=False, out=str(out), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _crash_at(config: TrainConfig, step: int) -> None:
    """Run ``config`` in a fresh process that dies with os._exit at ``step`` (no cleanup, like a kill)."""
    script = textwrap.dedent(f"""
        import os, torch
        torch.set_num_threads(1)
        from normrnn.train import TrainConfig, train
        def die(event, record):
            if event == "step" and record["step"] == {step}:
                os._exit(17)
        train(TrainConfig.from_dict({config.to_dict()!r}), hooks=[die])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr


def _summary(run_dir: Path) -> dict:
    """summary.json without what differs between any two runs (timings, the run's own folder)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_valid"] is not None and summary["test"]
    return {k: v for k, v in summary.items() if k not in ("train_time_s", "items_per_s", "run_dir")}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["model"]


@pytest.mark.parametrize("norm,crash", [("layer", 8), ("batch", 5)])
def test_resume_after_kill_is_bit_identical(text_file, tmp_path, norm, crash):
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    reference = train(_config(text_file, ref_dir, norm=norm))
    assert reference["steps"] == 10

    _crash_at(_config(text_file, crash_dir, norm=norm), crash)
    ck = load_checkpoint(crash_dir)
    # crash at 8: last checkpoint at step 6 (epoch 2, mid-epoch); crash at 5: the epoch-end one at step 5 is
    # not written yet (the hook runs first), so step 3 (mid-epoch 1)
    assert ck["step"] == (6 if crash == 8 else 3)
    assert ck["batch_index"] > 0 and ck["carry"] is not None

    # resume through the command line, as a user would
    assert cli_main(["train", "--resume", str(crash_dir), "--no-progress"]) == 0
    ref_w, res_w = _weights(ref_dir), _weights(crash_dir)
    assert ref_w.keys() == res_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], res_w[name]), name  # parameters and batch-norm buffers alike
    ref_ck, res_ck = load_checkpoint(ref_dir), load_checkpoint(crash_dir)
    assert res_ck["step"] == ref_ck["step"] == 10
    for a, b in zip(ref_ck["optimizer"]["state"].values(), res_ck["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert ref_ck["best"] == res_ck["best"] and ref_ck["best"] is not None
    # the summary too: best valid and its step, last valid and test metrics, steps, epochs (not the timings)
    assert _summary(crash_dir) == _summary(ref_dir)
    # the metrics file holds each step once: records written after the last checkpoint were dropped on resume
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (crash_dir / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
    assert steps == sorted(set(steps))


def test_resume_python_api_continues_a_finished_run_with_more_steps(text_file, tmp_path):
    cfg = _config(text_file, tmp_path / "run", max_steps=4, dropout=0.0, zoneout=0.0, checkpoint_every=0)
    assert train(cfg)["steps"] == 4
    longer = TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 7})  # max_steps may change on resume
    assert train(longer, resume=True)["steps"] == 7


def test_resume_keeps_the_best_result_from_before_the_checkpoint(text_file, tmp_path):
    """The best validation result (and its step) comes back from the checkpoint: planted as unbeatable before the
    resume, it must still be the summary's best after more steps and evaluations."""
    cfg = _config(text_file, tmp_path / "run", max_steps=4, dropout=0.0, zoneout=0.0, checkpoint_every=0)
    train(cfg)
    path = checkpoint_path(tmp_path / "run")
    ck = torch.load(path, weights_only=False)
    assert ck["best"] is not None
    ck["best"] = {**ck["best"], "value": -1.0, "step": 2}  # bits per character: lower is better
    atomic_save(ck, path)
    summary = train(TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 7}), resume=True)
    assert summary["steps"] == 7 and summary["best_valid"] == -1.0 and summary["best_step"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_valid"] == -1.0


def test_atomic_save_failure_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    good = {"w": torch.arange(5.0)}
    atomic_save(good, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # a partial write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], good["w"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the partial temp file was removed


def test_kill_during_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    # A process killed mid-write leaves its temp file behind, but never touches checkpoint.pt.
    atomic_save({"step": 1, "w": torch.ones(3)}, checkpoint_path(tmp_path))
    script = textwrap.dedent(f"""
        import os, torch
        from normrnn.train.checkpoint import atomic_save
        def dying_save(obj, f, *a, **k):
            f.write(b"partial" * 1000); f.flush()
            os._exit(9)
        torch.save = dying_save
        atomic_save({{"step": 2}}, {str(checkpoint_path(tmp_path))!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p for p in os.listdir(tmp_path) if p != "checkpoint.pt"]
    assert leftovers and all(p.endswith(".tmp") for p in leftovers)
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.ones(3))
