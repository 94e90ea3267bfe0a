"""The C7 measurement runs and returns a JSON-able dict with the numbers the study reads (a tiny setting here;
the real one is `python -m normrnn.bench.sync_cost`)."""
from __future__ import annotations

import json

from normrnn.bench.sync_cost import measure_sync_cost


def test_measure_sync_cost_small(tmp_path):
    out = tmp_path / "c7.json"
    r = measure_sync_cost(steps=4, warmup=1, seq_len=5, hidden=8, variants=("ln", "bn_sync"), out=str(out),
                          timeout=90)
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    ln, bn = r["variants"]["ln"], r["variants"]["bn_sync"]
    assert ln["norm_allreduce_bytes_per_step"] == 0 and bn["norm_allreduce_bytes_per_step"] > 0
    assert bn["backend"] == "reference" and bn["step_ms"] > 0 and "valid_mse" in bn
    assert ln["ddp_grad_bytes_per_step"] == 4 * ln["params"]
