"""The C7 measurement runs and returns a JSON-able dict with the numbers the study reads (a tiny setting here;
the real one is `python -m normrnn.bench.sync_cost`)."""
from __future__ import annotations

import json

from normrnn.bench.sync_cost import measure_sync_cost


def test_measure_sync_cost_small(tmp_path):
    out = tmp_path / "c7.json"
    r = measure_sync_cost(steps=4, warmup=1, seq_len=5, hidden=8,
                          variants=("ln", "bn_local", "bn_local_reference", "bn_sync", "bn_sync_reference"),
                          out=str(out), timeout=600, latency_samples=10)
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    ln, bn, ref = r["variants"]["ln"], r["variants"]["bn_sync"], r["variants"]["bn_sync_reference"]
    assert ln["norm_allreduce_bytes_per_step"] == 0 and bn["norm_allreduce_bytes_per_step"] > 0
    assert bn["backend"] == "fused-native" and bn["step_ms"] > 0 and "valid_mse" in bn
    assert ref["backend"] == "reference"
    assert ln["ddp_grad_bytes_per_step"] == 4 * ln["params"]
    # LSTM, separate terms: the input term's one all-reduce, then two per time step (recurrent term, cell), forward
    # and backward alike, on the fused loop as on the reference loop
    T, H = 5, 8
    assert bn["forward_allreduce_calls_per_step"] == bn["backward_allreduce_calls_per_step"] == 1 + 2 * T
    assert bn["forward_allreduce_bytes_per_step"] == 4 * (T * (2 * 4 * H + 1) + T * (2 * 4 * H + 1 + 2 * H + 1))
    assert bn["backward_allreduce_bytes_per_step"] == 4 * (T * 2 * 4 * H + T * (2 * 4 * H + 2 * H))
    assert bn["norm_allreduce_calls_per_time_step"] == 2 * (1 + 2 * T) / T
    for k in ("calls", "bytes"):
        assert ref[f"norm_allreduce_{k}_per_step"] == bn[f"norm_allreduce_{k}_per_step"]
    assert r["sync_overhead_fused"] > 0 and r["sync_overhead_reference"] > 0 and r["allreduce_latency_us"] > 0
    assert bn["allreduce_latency_ms_per_step"] == bn["norm_allreduce_calls_per_step"] * r["allreduce_latency_us"] / 1e3
