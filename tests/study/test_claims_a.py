"""Claims C2, C3, C4, C6, C8: their verdict rules on hand-made records, and one smoke run of each real experiment."""
from __future__ import annotations

import math

import pytest
import torch

import normrnn
from normrnn.study.claims import c02_time_steps, c03_padding, c04_train_test_gap, c06_language_modelling, c08_online
from normrnn.study.core import Record, StudyContext

CTX = StudyContext(profile="quick", seeds=2, progress=False)
SMOKE = StudyContext(profile="smoke", seeds=1, progress=False)


# ------------------------------------------------------------------------------------------------ C2 time steps


def test_c2_shared_statistics_is_one_statistic():
    layer = normrnn.LSTM(3, 4, norm="batch", max_steps=5)
    layer(torch.randn(5, 6, 3))
    shared = c02_time_steps.shared_statistics(layer)
    for m in shared.modules():
        if isinstance(m, normrnn.norms.RecurrentBatchNorm):
            assert torch.allclose(m.running_mean, m.running_mean[:1].expand_as(m.running_mean))
            assert torch.allclose(m.running_var, m.running_var[:1].expand_as(m.running_var))


# ------------------------------------------------------------------------------------------------ C3 padding


def c3_records(dist, ln_diff, mse_masked, mse_naive, mse_ln=(0.01, 0.01, 0.01)):
    recs = []
    for seed in range(len(dist)):
        d = {"mean_shift": dist[seed], "log_var_ratio": dist[seed] / 2, "per_step_mean_shift": [0.0, dist[seed]],
             "per_step_log_var_ratio": [0.0, dist[seed] / 2], "padding_fraction": [0.0, 0.5]}
        for padding, mse in (("masked", mse_masked[seed]), ("naive", mse_naive[seed])):
            recs.append(Record({"norm": "batch", "padding": padding, "seed": seed},
                               {"valid_mse": mse, "init": d, "trained": d, "init_output_diff": 0.3,
                                "trained_output_diff": 0.3}))
        recs.append(Record({"norm": "layer", "padding": "masked", "seed": seed},
                           {"valid_mse": mse_ln[seed], "init_output_diff": ln_diff, "trained_output_diff": 0.0}))
    return recs


@pytest.mark.parametrize("dist, ln_diff, masked, naive, label", [
    ([0.4, 0.5, 0.45], 0.0, [0.02, 0.021, 0.019], [0.08, 0.09, 0.085], "supported"),
    ([0.01, 0.02, 0.01], 0.0, [0.02, 0.021, 0.019], [0.02, 0.021, 0.019], "not shown here"),
    ([0.4, 0.5, 0.45], 1e-2, [0.02, 0.021, 0.019], [0.08, 0.09, 0.085], "contradicted here"),
    ([0.4, 0.5, 0.45], 0.0, [0.02, 0.021, 0.019], [0.021, 0.020, 0.019], "not shown here"),
    ([0.4, 0.5, 0.45], 0.0, [0.02, 0.021, 0.019], [0.02, 0.15, 0.03], "inconclusive"),
])
def test_c3_rule(dist, ln_diff, masked, naive, label):
    claim = c03_padding.CLAIM
    recs = c3_records(dist, ln_diff, masked, naive)
    v = claim.verdict(recs, CTX)
    assert v.label == label, v.reason
    headers, rows = claim.table(recs)
    assert len(rows) == 3 and len(rows[0]) == len(headers)
    assert "Padding" in claim.summary_cells(recs, v)


# ------------------------------------------------------------------------------------------------ C4 train/test gap


def c4_records(bn_final, bn_early, slow, ln_diff):
    recs = []
    for seed in range(len(bn_final)):
        for (norm, momentum), (early, final) in ((("batch", 0.1), (bn_early[seed], bn_final[seed])),
                                                 (("batch", 0.01), (slow[seed], slow[seed])),
                                                 (("layer", 0.1), (0.0, 0.0))):
            diff = ln_diff if norm == "layer" else 1.0
            cps = {"10": {"gap": early, "max_logit_diff": diff}, "40": {"gap": final, "max_logit_diff": diff}}
            recs.append(Record({"norm": norm, "momentum": momentum, "seed": seed},
                               {"checkpoints": cps, "gap": final, "max_logit_diff": diff, "train_mode_bpc": 3.0,
                                "eval_mode_bpc": 3.0 + final}))
    return recs


@pytest.mark.parametrize("final, early, slow, ln_diff, label", [
    ([0.05, 0.06, 0.055], [0.1, 0.1, 0.1], [0.5, 0.5, 0.5], 0.0, "supported"),
    ([0.001, 0.002, 0.001], [0.002, 0.001, 0.002], [0.003, 0.002, 0.003], 0.0, "not shown here"),
    ([0.05, 0.06, 0.055], [0.1, 0.1, 0.1], [0.5, 0.5, 0.5], 0.5, "contradicted here"),
    ([0.001, 0.002, 0.001], [0.002, 0.001, 0.002], [0.5, 0.5, 0.5], 0.0, "not shown here"),
    ([0.001, 0.09, 0.02], [0.002, 0.001, 0.002], [0.003, 0.002, 0.003], 0.0, "inconclusive"),
])
def test_c4_rule(final, early, slow, ln_diff, label):
    claim = c04_train_test_gap.CLAIM
    recs = c4_records(final, early, slow, ln_diff)
    v = claim.verdict(recs, CTX)
    assert v.label == label, v.reason
    headers, rows = claim.table(recs)
    assert len(rows) == 3 and len(rows[0]) == len(headers)
    assert "Train/test consistency" in claim.summary_cells(recs, v)


def test_c4_gap_leaves_buffers_alone():
    torch.manual_seed(0)
    model = normrnn.train.models.CharLM(7, normrnn.train.models.RNNConfig(norm="batch", hidden=8, max_steps=6))
    model.train()
    model(torch.randint(0, 7, (4, 6)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 7, (200,))
    out = c04_train_test_gap.train_eval_gap(model, c04_train_test_gap.valid_batches(ids, 4, 6, 3))
    assert out["gap"] > 0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ C6 language modelling


def c6_records(test_bpc, lrs=(2e-3,)):
    recs = []
    for norm, values in test_bpc.items():
        for lr in lrs:
            for seed, v in enumerate(values):
                bump = 0.0 if lr == 2e-3 else 0.5
                recs.append(Record({"norm": norm, "lr": lr, "seed": seed},
                                   {"test_bpc": v + bump, "valid_bpc": v + bump, "valid_curve": [[1, 3.0], [2, v]]}))
    return recs


@pytest.mark.parametrize("bpc, label", [
    ({"none": [1.50, 1.51, 1.50], "batch": [1.40, 1.41, 1.40], "layer": [1.38, 1.37, 1.38]}, "supported"),
    ({"none": [1.50, 1.51, 1.50], "batch": [1.60, 1.61, 1.60], "layer": [1.50, 1.51, 1.505]}, "contradicted here"),
    ({"none": [1.50, 1.51, 1.50], "batch": [1.50, 1.51, 1.50], "layer": [1.38, 1.37, 1.38]}, "not shown here"),
    ({"none": [1.50, 1.51, 1.50], "batch": [1.30, 1.60, 1.45], "layer": [1.38, 1.37, 1.38]}, "inconclusive"),
])
def test_c6_rule(bpc, label):
    claim = c06_language_modelling.CLAIM
    recs = c6_records(bpc)
    v = claim.verdict(recs, CTX)
    assert v.label == label, v.reason
    headers, rows = claim.table(recs)
    assert len(rows) == 4 and len(rows[0]) == len(headers)
    assert "Language modelling (BPC)" in claim.summary_cells(recs, v)


def test_c6_picks_learning_rate_on_valid():
    recs = c6_records({"none": [1.5, 1.5], "batch": [1.4, 1.4], "layer": [1.3, 1.3]}, lrs=(1e-3, 2e-3))
    recs.append(Record({"norm": "none", "lr": 4e-3, "seed": 0}, {"test_bpc": 0.1, "valid_bpc": math.nan}))
    assert c06_language_modelling.CLAIM.best_lr(recs) == {"none": 2e-3, "batch": 2e-3, "layer": 2e-3}


# ------------------------------------------------------------------------------------------------ C8 online


def c8_records(ln_vs_train, stale_cost):
    recs = []
    for seed, cost in enumerate(stale_cost):
        common = {"stream_vs_forward": 1e-6, "batchmates_effect": 0.5, "train_mode_bpc": 3.0, "stream_chunk_bpc": 3.1,
                  "stream_bpc": 3.0}
        recs.append(Record({"norm": "batch", "seed": seed}, {**common, "stream_vs_train": 1.5, "stale_cost": cost,
                                                             "stale_bpc": 3.0 + cost}))
        recs.append(Record({"norm": "layer", "seed": seed}, {**common, "stream_vs_train": ln_vs_train,
                                                             "batchmates_effect": 0.0, "stale_cost": 0.0,
                                                             "stale_bpc": 3.0}))
    return recs


@pytest.mark.parametrize("ln, cost, label", [
    (1e-6, [1.0, 1.1, 1.05], "supported"),
    (1e-6, [0.0, 0.001, -0.001], "not shown here"),
    (0.1, [1.0, 1.1, 1.05], "contradicted here"),
    (1e-6, [0.0, 1.0, 0.3], "inconclusive"),
])
def test_c8_rule(ln, cost, label):
    claim = c08_online.CLAIM
    recs = c8_records(ln, cost)
    v = claim.verdict(recs, CTX)
    assert v.label == label, v.reason
    headers, rows = claim.table(recs)
    assert len(rows) == 2 and len(rows[0]) == len(headers)
    assert "Online inference (batch 1)" in claim.summary_cells(recs, v)


# ------------------------------------------------------------------------------------------------ smoke runs


@pytest.mark.parametrize("module, pick, keys", [
    (c02_time_steps, {"norm": "batch"}, {"penalty", "shared_cost", "position_bpc", "bpc_at_length", "step_spread"}),
    (c03_padding, {"norm": "batch", "padding": "naive"}, {"valid_mse", "init", "trained", "init_output_diff"}),
    (c04_train_test_gap, {"norm": "batch", "momentum": 0.1}, {"checkpoints", "gap", "max_logit_diff"}),
    (c06_language_modelling, {"norm": "batch"}, {"test_bpc", "valid_bpc", "valid_curve"}),
    (c08_online, {"norm": "batch"}, {"stream_vs_forward", "stream_vs_train", "stale_cost", "batchmates_effect"}),
])
def test_smoke_run(module, pick, keys, tmp_path):
    claim = module.CLAIM
    exps = claim.experiments(SMOKE)
    assert exps and all(e.key.get("seed") == 0 for e in exps)
    exp = next(e for e in exps if all(e.key[k] == v for k, v in pick.items()))
    result = claim.run(exp, SMOKE, tmp_path)
    assert keys <= set(result), set(result)
    assert claim.describe_setup(SMOKE)
