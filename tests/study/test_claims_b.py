"""Claims C5, C9, C10, C11, C12: each verdict rule on hand-made records (every label it can give), the table,
figure and summary cells on those records, and one real smoke-sized experiment per kind of run."""
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from normrnn.study.claims.c05_convergence import CLAIM as C5, passages  # noqa: E402
from normrnn.study.claims.c09_depth import CLAIM as C9, fit_slope  # noqa: E402
from normrnn.study.claims.c10_rms_residual import CLAIMS as C10S, RmsResidual  # noqa: E402
from normrnn.study.claims.c11_hybrid import CLAIM as C11, set_conv_norm  # noqa: E402
from normrnn.study.claims.c12_placement import CLAIM as C12  # noqa: E402
from normrnn.study.core import Record, StudyContext  # noqa: E402

CTX = StudyContext(profile="quick", seeds=3, progress=False)
C10 = RmsResidual()  # all three parts' experiments
SMOKE = StudyContext(profile="smoke", seeds=1, progress=False)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one CPU thread (``one_thread`` in tests/conftest.py)."""


def _render(claim, records, verdict):
    """table, figure and summary cells work on the records (no crash, something in them)."""
    headers, rows = claim.table(records)
    assert rows and all(len(r) == len(headers) for r in rows)
    fig, ax = plt.subplots()
    claim.figure(records, ax)
    plt.close(fig)
    cells = claim.summary_cells(records, verdict)
    assert cells and all(set(c) <= {"BN", "LN", "RMS"} for c in cells.values())


# ---------------------------------------------------------------------------------------------- C5


def _c5_records(epochs_to_x: dict, best=0.8, epochs=20, plateau=10) -> list[Record]:
    """epochs_to_x: {norm: [epoch at which the F1 first reaches X = 0.9 · 0.8 per seed]}; one update per epoch."""
    def curve(reach):
        return [[e, 0.3 if e < reach else (0.73 if e < plateau else best)] for e in range(1, epochs + 1)]
    return [Record({"norm": n, "seed": i}, {"valid_f1": best, "best_f1": best, "valid_accuracy": best,
                                            "steps": epochs, "steps_per_epoch": 1, "epochs": epochs,
                                            "plateau_epoch": plateau, "f1_curve": curve(reach)})
            for n, runs in epochs_to_x.items() for i, reach in enumerate(runs)]


def test_c5_verdict_renders():
    recs = _c5_records({"none": [8, 8, 8], "layer": [2, 2, 2], "rms": [3, 2, 2]})
    v = C5.verdict(recs, CTX)
    assert v.label == "supported", v.reason
    _render(C5, recs, v)


def test_c5_passages_drop_speaker_headings_and_directions():
    text = "Laer.\nMy necessaries are embark'd: farewell:\nAnd, sister, as the winds give benefit\n\n[Exit.]\n"
    assert passages(text, "hamlet") == [("hamlet", "My necessaries are embark'd: farewell: And, sister, as the "
                                                   "winds give benefit")]


def test_c5_smoke_run(tmp_path):
    exp = next(e for e in C5.experiments(SMOKE) if e.key["norm"] == "layer")
    r = C5.run(exp, SMOKE, tmp_path)
    assert {"valid_f1", "valid_accuracy", "f1_curve", "steps", "loss_curve", "best_f1", "plateau_epoch",
            "steps_per_epoch"} <= set(r)
    assert r["steps"] == exp.spec["epochs"] * r["steps_per_epoch"] and len(r["f1_curve"]) >= 2
    assert 0 <= r["valid_f1"] <= r["best_f1"] <= 1


# ---------------------------------------------------------------------------------------------- C9


def _c9_records(slopes: dict) -> list[Record]:
    """slopes: {(norm, residual): [log λ per draw]}; each becomes one seed's record."""
    recs = []
    for (norm, residual), s in slopes.items():
        g = [math.exp(mean_s * d) for d, mean_s in zip([1, 2, 4, 8], [sum(s) / len(s)] * 4)]
        recs.append(Record({"norm": norm, "residual": residual, "seed": 0},
                           {"depths": [1, 2, 4, 8], "grad_input": g, "grad_weight": g, "slopes_input": s,
                            "slopes_weight": s}))
    return recs


def _c9_case(bn_plain, bn_res, g1_plain, g1_res):
    base = {("none", False): [-1.3, -1.4, -1.35], ("none", True): [0.02, 0.03, 0.02],
            ("layer", False): [0.38, 0.40, 0.39], ("layer", True): [0.30, 0.31, 0.29]}
    return _c9_records({**base, ("batch", False): bn_plain, ("batch", True): bn_res,
                        ("batch_g1", False): g1_plain, ("batch_g1", True): g1_res})


@pytest.mark.parametrize("case,label", [
    ("supported", "supported"), ("depends", "contradicted here"), ("refuted", "not shown here"),
    ("noisy", "inconclusive")])
def test_c9_verdict(case, label):
    flat = [0.01, 0.03, 0.02, 0.0]
    recs = {"supported": _c9_case(flat, flat, [0.40, 0.41, 0.39, 0.40], [0.02, 0.03, 0.01, 0.02]),
            "depends": _c9_case(flat, flat, [0.40, 0.41, 0.39, 0.40], [0.30, 0.31, 0.29, 0.31]),
            "refuted": _c9_case(flat, flat, flat, flat),
            "noisy": _c9_case(flat, flat, [-0.1, 0.3, 0.0, 0.2], flat)}[case]
    v = C9.verdict(recs, CTX)
    assert v.label == label, v.reason
    _render(C9, recs, v)


def test_c9_fit_slope_recovers_lambda():
    assert fit_slope([1, 2, 4, 8], [3 * 1.5 ** d for d in (1, 2, 4, 8)]) == pytest.approx(math.log(1.5))


def test_c9_smoke_run(tmp_path):
    exp = next(e for e in C9.experiments(SMOKE) if e.key["norm"] == "batch_g1" and e.key["residual"])
    r = C9.run(exp, SMOKE, tmp_path)
    assert r["depths"] == exp.spec["depths"] and len(r["grad_input"]) == len(r["depths"])
    assert len(r["slopes_input"]) == exp.spec["draws"] and all(g > 0 for g in r["grad_input"])


# ---------------------------------------------------------------------------------------------- C10


def _c10_records(ln, rms, plain, res, ratios) -> list[Record]:
    recs = []
    for i in range(len(ln)):
        recs.append(Record({"part": "quality", "norm": "layer", "residual": False, "seed": i}, {"valid_bpc": ln[i]}))
        recs.append(Record({"part": "quality", "norm": "rms", "residual": False, "seed": i}, {"valid_bpc": rms[i]}))
        recs.append(Record({"part": "depth", "norm": "layer", "residual": False, "seed": i}, {"valid_bpc": plain[i]}))
        recs.append(Record({"part": "depth", "norm": "layer", "residual": True, "seed": i}, {"valid_bpc": res[i]}))
        recs.append(Record({"part": "cost", "norm": "layer|rms", "residual": False, "seed": i},
                           {"ratios_fused": ratios, "ratios_reference": ratios, "ms_layer_fused": 10.0,
                            "ms_rms_fused": 10.0 * ratios[0], "ms_layer_reference": 30.0,
                            "ms_rms_reference": 30.0 * ratios[0], "engine": "fused-native"}))
    return recs


def test_c10_verdicts_render():
    recs = _c10_records([2.00, 2.01, 2.02], [2.005, 2.01, 2.015], [2.5, 2.52, 2.51], [2.1, 2.12, 2.11],
                        [0.8, 0.82, 0.81])
    for claim in C10S:
        mine = [r for r in recs if r.key["part"] == claim.part]
        v = claim.verdict(mine, CTX)
        assert v.label == "supported", (claim.id, v.reason)
        _render(claim, mine, v)


def test_c10_smoke_runs(tmp_path):
    exps = {e.key["part"] + str(e.key["residual"]): e for e in C10.experiments(SMOKE)}
    cost = C10.run(exps["costFalse"], SMOKE, tmp_path)
    assert {"ratios_fused", "ratios_reference", "ratios_plain", "ms_layer_fused", "ms_rms_fused", "engine"} <= set(cost)
    assert len(cost["ratios_fused"]) == exps["costFalse"].spec["cost_pairs"]
    deep = C10.run(exps["depthTrue"], SMOKE, tmp_path)
    assert {"valid_bpc", "test_bpc", "steps", "loss_curve"} <= set(deep) and math.isfinite(deep["valid_bpc"])


# ---------------------------------------------------------------------------------------------- C11


def _c11_records(acc: dict) -> list[Record]:
    return [Record({"conv": c, "rnn": r, "seed": i}, {"valid_accuracy": v})
            for (c, r), vals in acc.items() for i, v in enumerate(vals)]


@pytest.mark.parametrize("case,label", [("supported", "supported"), ("refuted", "contradicted here"),
                                        ("depends", "inconclusive"), ("noisy", "inconclusive")])
def test_c11_verdict(case, label):
    hyb = [0.95, 0.951, 0.949]
    low = [0.90, 0.91, 0.905]
    acc = {"supported": {("batch", "layer"): hyb, ("batch", "batch"): low, ("layer", "batch"): low,
                         ("layer", "layer"): low},
           "refuted": {("batch", "layer"): hyb, ("batch", "batch"): low, ("layer", "batch"): low,
                       ("layer", "layer"): [0.97, 0.971, 0.969]},
           "depends": {("batch", "layer"): hyb, ("batch", "batch"): [0.951, 0.95, 0.949], ("layer", "batch"): low,
                       ("layer", "layer"): low},
           "noisy": {("batch", "layer"): [0.95, 0.90, 0.93], ("batch", "batch"): [0.92, 0.94, 0.90],
                     ("layer", "batch"): [0.93, 0.91, 0.95], ("layer", "layer"): [0.90, 0.95, 0.92]}}[case]
    recs = _c11_records(acc)
    v = C11.verdict(recs, CTX)
    assert v.label == label, v.reason
    _render(C11, recs, v)


def test_c11_conv_norm_swap_keeps_parameters():
    from normrnn.train.models import ConvRNN, RNNConfig

    model = ConvRNN(10, RNNConfig(hidden=8))
    before = {id(p) for p in model.parameters()}
    set_conv_norm(model, "layer")
    assert {id(p) for p in model.parameters()} == before  # the optimizer's parameters are still the model's
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(3, 28, 28)).shape == (3, 10)


def test_c11_smoke_run(tmp_path):
    exp = next(e for e in C11.experiments(SMOKE) if e.key["conv"] == "layer" and e.key["rnn"] == "batch")
    r = C11.run(exp, SMOKE, tmp_path)
    assert {"valid_accuracy", "test_accuracy", "steps", "loss_curve"} <= set(r) and 0 <= r["valid_accuracy"] <= 1


# ---------------------------------------------------------------------------------------------- C12


def _c12_records(bpc: dict) -> list[Record]:
    return [Record({"placement": p, "seed": i}, {"valid_bpc": v, "loss_curve": [3.0, 2.5, v]})
            for p, vals in bpc.items() for i, v in enumerate(vals)]


@pytest.mark.parametrize("case,label", [("supported", "supported"), ("contradicted", "contradicted here"),
                                        ("tied", "not shown here"), ("noisy", "inconclusive")])
def test_c12_verdict(case, label):
    ba, worse = [2.00, 2.01, 2.02], [2.10, 2.11, 2.12]
    common = {"ba": ba, "joint": worse, "no_cell": worse, "carry": ba, "none": [2.3, 2.3, 2.31]}
    bpc = {"supported": {**common, "after": worse},
           "contradicted": {**common, "after": [1.90, 1.91, 1.92]},
           "tied": {**common, "after": [2.001, 2.011, 2.019]},
           "noisy": {**common, "ba": [2.0, 2.2, 2.1], "after": [2.1, 1.95, 2.2]}}[case]
    recs = _c12_records(bpc)
    v = C12.verdict(recs, CTX)
    assert v.label == label, v.reason
    _render(C12, recs, v)


def test_c12_smoke_run_after_the_nonlinearity(tmp_path):
    exp = next(e for e in C12.experiments(SMOKE) if e.key["placement"] == "after")
    r = C12.run(exp, SMOKE, tmp_path)
    assert math.isfinite(r["valid_bpc"])


def test_c12_smoke_run_carry_variant(tmp_path):
    exp = next(e for e in C12.experiments(SMOKE) if e.key["placement"] == "carry")
    r = C12.run(exp, SMOKE, tmp_path)
    assert {"valid_bpc", "test_bpc", "steps", "loss_curve"} <= set(r) and math.isfinite(r["valid_bpc"])
