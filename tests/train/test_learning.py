"""Short runs that must learn: a char-LM on a small text and the adding problem."""
from __future__ import annotations

import json
import math

from normrnn.train import LossRecorder, TrainConfig, train


def test_charlm_smoke_run_loss_drops(text_file, tmp_path):
    rec = LossRecorder()
    cfg = TrainConfig(task="charlm", data=str(text_file), hidden=64, batch_size=16, seq_len=50, max_steps=150,
                      lr=5e-3, norm="layer", progress=False, eval_every=75, out=str(tmp_path / "run"))
    summary = train(cfg, hooks=[rec])
    assert summary["steps"] == 150 and len(rec.losses) == 150
    start, end = sum(rec.losses[:10]) / 10, sum(rec.losses[-10:]) / 10
    assert end < 0.6 * start, (start, end)  # from ~ln(vocab) to well below
    assert summary["valid_bpc"] < 1.0, summary["valid_bpc"]
    assert math.isclose(summary["valid_bpc"], summary["valid_loss"] / math.log(2))
    assert all(math.isfinite(g) and g > 0 for g in rec.grad_norms)
    # the run directory: config, JSONL metrics (train + eval records), summary
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["hidden"] == 64
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval"}
    assert {75, 150} <= {r["step"] for r in records if r.get("split") == "valid"}  # every K steps, epoch ends
    assert json.loads((run / "summary.json").read_text())["valid_bpc"] == summary["valid_bpc"]
    assert summary["items_per_s"] > 0 and summary["unit"] == "chars"


def test_adding_problem_learned_by_ln_lstm():
    cfg = TrainConfig(task="adding", seq_len=30, norm="layer", hidden=32, batch_size=32, lr=5e-3, max_steps=400,
                      limit=4000, progress=False, seed=1)
    summary = train(cfg)
    # Always answering 1 scores 1/6 ≈ 0.167.
    assert summary["valid_mse"] < 0.03, summary["valid_mse"]
    assert summary["test_mse"] < 0.03
