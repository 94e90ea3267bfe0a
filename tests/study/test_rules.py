"""Every claim's verdict rule pinned on synthetic per-seed tables just inside and just outside each threshold
(the practical margin, the 95% interval's bound, Holm's correction, divergence), so that weakening any threshold
fails a test. ``diffs_with_interval(c, h)`` gives 5 per-seed differences whose 95% t interval is exactly c ± h."""
import pytest

from normrnn.study.core import Record, StudyContext
from normrnn.study.runner import judge
from normrnn.study.stats import diffs_with_interval

CTX = StudyContext(profile="quick", seeds=5, progress=False)
EPS = 1e-4
H = 0.01


def cases(margin, h=H, sign=1, eps=EPS):
    """(interval centre, half width, expected label) on both sides of every threshold of a margin."""
    return [(sign * (margin + h + eps), h, "supported"), (sign * (margin + h - eps), h, "inconclusive"),
            (-sign * (margin + h + eps), h, "contradicted here"), (-sign * (margin + h - eps), h, "inconclusive"),
            (0.0, margin - eps, "not shown here"), (0.0, margin + eps, "inconclusive")]


def D(center, half):
    return diffs_with_interval(center, half, 5)


# ------------------------------------------------------------------------------------------------ C1 batch size

from normrnn.study.claims import c01_batch_size as c01  # noqa: E402


def c1_records(inter, bn_div_small=(), ln_div_small=(), base=0.8):
    """LN - BN at the smallest batch minus at the largest = ``inter`` per seed."""
    recs = []
    for s, d in enumerate(inter):
        for n, b, v in (("layer", 2, base + d), ("batch", 2, base), ("layer", 32, base), ("batch", 32, base)):
            div = (n == "batch" and b == 2 and s in bn_div_small) or (n == "layer" and b == 2 and s in ln_div_small)
            recs.append(Record({"norm": n, "batch": b, "seed": s},
                               {"valid_accuracy": 0.1 if div else v, "diverged": div, "steps": 7,
                                "loss_curve": [1.0] * 20}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c01.MARGIN))
def test_c1_interaction_boundaries(center, half, label):
    v = c01.CLAIM.verdict(c1_records(D(center, half)), CTX)
    assert v.label == label, v.reason


def test_c1_divergence_is_evidence_and_is_excluded():
    recs = c1_records(D(0.0, 0.001), bn_div_small=range(5))
    v = c01.CLAIM.verdict(recs, CTX)
    assert v.label == "supported" and "BN diverged in 5/5 runs at batch 2" in v.reason
    # one LN run diverged too: no longer evidence from divergence alone; the diverged pairs are left out
    recs = c1_records(D(0.0, 0.001), bn_div_small=range(5), ln_div_small=[0])
    assert c01.CLAIM.verdict(recs, CTX).label == "inconclusive"
    # 4/5 diverged is not "every run": the remaining single pair decides nothing
    recs = c1_records(D(0.0, 0.001), bn_div_small=range(4))
    v = judge(c01.CLAIM, recs, CTX)
    assert v.label == "inconclusive" and "diverged in 4/5 runs (at updates 7, 7, 7, 7)" in v.reason
    assert v.numbers["gaps"][2]["dropped"] == [0, 1, 2, 3]


def test_c1_threshold_batch_and_scale_cap():
    v = judge(c01.CLAIM, c1_records(D(0.2, 0.01)), CTX)
    assert v.numbers["threshold_batch"] == 32 and v.scale_ok is True and "units ×" in v.scale
    flat = [r for r in c1_records(D(0.2, 0.01))]
    for r in flat:
        r.result["loss_curve"] = [float(20 - i) for i in range(20)]  # still falling: no plateau
    v = judge(c01.CLAIM, flat, CTX)
    assert v.label == "not shown here" and v.numbers["uncapped_label"] == "supported" and v.scale_ok is False


# ------------------------------------------------------------------------------------------------ C2 time steps

from normrnn.study.claims import c02_time_steps as c02  # noqa: E402


def c2_records(excess, cost=None, spread=0.5, bpc=1.8):
    """BN's length penalty minus LN's = ``excess`` per seed; one shared statistic costs ``cost`` inside T."""
    recs = []
    cost = cost if cost is not None else [0.0] * len(excess)
    for s, (e, c) in enumerate(zip(excess, cost)):
        curve = [1.0] * 16
        common = {"trained_length": 2, "position_bpc": curve, "bpc_at_length": {"2": 1.0, "16": 1.0},
                  "valid_bpc": bpc, "inside_T": 1.0}
        recs.append(Record({"norm": "batch", "seed": s}, {**common, "penalty": 0.1 + e, "shared_cost": c,
                                                          "step_spread": spread, "shared_position_bpc": curve}))
        recs.append(Record({"norm": "layer", "seed": s}, {**common, "penalty": 0.1}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c02.MARGIN))
def test_c2_excess_penalty_boundaries(center, half, label):
    v = c02.CLAIM.verdict(c2_records(D(center, half)), CTX)
    assert v.label == label, v.reason


@pytest.mark.parametrize("center, half, status", [(0.05 + 0.01 + EPS, 0.01, "holds"),
                                                  (0.05 + 0.01 - EPS, 0.01, "unclear"),
                                                  (0.0, 0.05 - EPS, "absent"), (0.0, 0.05 + EPS, "unclear")])
def test_c2_shared_statistic_boundaries(center, half, status):
    v = c02.CLAIM.verdict(c2_records(D(0.2, 0.01), cost=D(center, half)), CTX)
    assert v.numbers["sharing_status"] == status and v.label == "supported"


@pytest.mark.parametrize("spread, bpc, ok", [(0.1, 2.2, True), (0.1 - EPS, 2.0, False), (0.5, 2.2 + EPS, False)])
def test_c2_scale_check(spread, bpc, ok):
    v = judge(c02.CLAIM, c2_records(D(0.2, 0.01), spread=spread, bpc=bpc), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")
    assert "spread over steps" in v.scale_check


# ------------------------------------------------------------------------------------------------ C3 padding

from normrnn.study.claims import c03_padding as c03  # noqa: E402


def c3_records(cost, dist=None, ln_diff=0.0, masked=0.02):
    """naive - masked BN valid MSE = ``cost`` per seed; BN's statistics distorted by ``dist`` SD at init."""
    recs = []
    dist = dist if dist is not None else [0.5] * len(cost)
    for s, (c, dd) in enumerate(zip(cost, dist)):
        d = {"mean_shift": dd, "log_var_ratio": 0.0, "per_step_mean_shift": [0.0, dd],
             "per_step_log_var_ratio": [0.0, 0.0], "padding_fraction": [0.0, 0.5]}
        for padding, mse in (("masked", masked), ("naive", masked + c)):
            recs.append(Record({"norm": "batch", "padding": padding, "seed": s},
                               {"valid_mse": mse, "init": d, "trained": d, "init_output_diff": 0.3,
                                "trained_output_diff": 0.3}))
        recs.append(Record({"norm": "layer", "padding": "masked", "seed": s},
                           {"valid_mse": masked, "init_output_diff": ln_diff, "trained_output_diff": 0.0}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c03.MSE_MARGIN, h=0.005))
def test_c3_cost_boundaries(center, half, label):
    assert c03.CLAIM.verdict(c3_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("center, label", [(0.10 - 0.02 - EPS, "not shown here"), (0.10 - 0.02 + EPS, "supported")])
def test_c3_mechanism_boundary(center, label):
    # the distortion's interval just below 0.10 SD: the mechanism is absent, whatever the MSE says
    assert c03.CLAIM.verdict(c3_records(D(0.1, 0.01), dist=D(center, 0.02)), CTX).label == label


@pytest.mark.parametrize("ln_diff, label", [(1e-5, "supported"), (1.1e-5, "contradicted here")])
def test_c3_ln_identity_boundary(ln_diff, label):
    assert c03.CLAIM.verdict(c3_records(D(0.1, 0.01), ln_diff=ln_diff), CTX).label == label


@pytest.mark.parametrize("masked, ok", [(1 / 12 - EPS, True), (1 / 12 + EPS, False)])
def test_c3_scale_check(masked, ok):
    v = judge(c03.CLAIM, c3_records(D(0.1, 0.01), masked=masked), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")


# ------------------------------------------------------------------------------------------------ C4 train/test gap

from normrnn.study.claims import c04_train_test_gap as c04  # noqa: E402


def c4_records(final, ln_diff=0.0, bpc=1.9):
    recs = []
    for s, g in enumerate(final):
        for norm, momentum, gap in (("batch", 0.1, g), ("batch", 0.01, 0.5), ("layer", 0.1, 0.0)):
            diff = ln_diff if norm == "layer" else 1.0
            cps = {"10": {"gap": 0.3, "max_logit_diff": diff}, "40": {"gap": gap, "max_logit_diff": diff}}
            recs.append(Record({"norm": norm, "momentum": momentum, "seed": s},
                               {"checkpoints": cps, "gap": gap, "max_logit_diff": diff, "train_mode_bpc": bpc,
                                "eval_mode_bpc": bpc + gap}))
    return recs


@pytest.mark.parametrize("center, half, label", [
    (0.02 + 0.01 + EPS, 0.01, "supported"), (0.02 + 0.01 - EPS, 0.01, "inconclusive"),
    (0.02 - 0.01 - EPS, 0.01, "not shown here"), (0.02 - 0.01 + EPS, 0.01, "inconclusive")])
def test_c4_gap_boundaries(center, half, label):
    # the slow momentum's large gap and the early checkpoint's do not decide: only the primary test does
    assert c04.CLAIM.verdict(c4_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("ln_diff, label", [(c04.TOLERANCE, "supported"), (c04.TOLERANCE * 1.1, "contradicted here")])
def test_c4_ln_identity_boundary(ln_diff, label):
    assert c04.CLAIM.verdict(c4_records(D(0.1, 0.01), ln_diff=ln_diff), CTX).label == label


@pytest.mark.parametrize("bpc, ok", [(2.2, True), (2.2 + EPS, False)])
def test_c4_scale_check(bpc, ok):
    v = judge(c04.CLAIM, c4_records(D(0.1, 0.01), bpc=bpc), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")
    assert "by construction" in c04.CLAIM.construction


# ------------------------------------------------------------------------------------------------ C5 convergence

import math  # noqa: E402

from normrnn.study.claims import c05_convergence as c05  # noqa: E402


RES = 1000  # evaluations per epoch in the synthetic curves: epochs to X are exact to 1/1000


def c5_records(log_speedups, epochs=40, plateau=10, tuned=True):
    """Per seed, no norm reaches X at epoch 20 and LN at 20 / exp(log speed-up)."""
    recs = []
    for s, ls in enumerate(log_speedups):
        for norm, reach in (("none", 20.0), ("layer", 20.0 / math.exp(ls))):
            k = math.ceil(reach * RES - 1e-9)
            curve = [[k - 1, 0.3], [k, 0.8], [epochs * RES, 0.8]]
            recs.append(Record({"norm": norm, "seed": s},
                               {"valid_f1": 0.8, "best_f1": 0.8, "valid_accuracy": 0.8, "steps": epochs * RES,
                                "steps_per_epoch": RES, "epochs": epochs, "plateau_epoch": plateau,
                                "f1_curve": curve, "tuned_lr": [{"chosen": 3e-3}] if tuned else []}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(math.log(c05.SEVERAL), h=0.1, eps=0.002))
def test_c5_speedup_boundaries(center, half, label):
    v = c05.CLAIM.verdict(c5_records(D(center, half)), CTX)
    assert v.label == label, v.reason


def test_c5_speedup_just_short_of_two():
    # every seed 1.9× faster, tight: not "several times" (within ×0.5-×2) — an uncorrected "faster" would pass
    v = c05.CLAIM.verdict(c5_records([math.log(1.9)] * 5), CTX)
    assert v.label == "not shown here"
    v = c05.CLAIM.verdict(c5_records([math.log(2.1)] * 5), CTX)
    assert v.label == "supported"


@pytest.mark.parametrize("epochs, plateau, ok", [(20, 16, True), (19, 10, False), (20, 16.5, False)])
def test_c5_scale_check(epochs, plateau, ok):
    v = judge(c05.CLAIM, c5_records([math.log(3)] * 5, epochs=epochs, plateau=plateau), CTX)
    assert v.scale_ok is ok, v.scale_check
    v = judge(c05.CLAIM, c5_records([math.log(3)] * 5, epochs=20, plateau=10, tuned=False), CTX)
    assert v.scale_ok is False and "not searched per norm" in v.scale_check and v.label == "not shown here"


# ------------------------------------------------------------------------------------------------ C6 language modelling

from normrnn.study.claims import c06_language_modelling as c06  # noqa: E402
from normrnn.study.stats import t_quantile  # noqa: E402


def c6_records(bn_adv, ln_adv=None, bpc=1.9):
    """Per seed, LSTM - BN and LSTM - LN test BPC (advantages)."""
    ln_adv = ln_adv if ln_adv is not None else D(0.3, 0.01)
    recs = []
    for s, (b, l) in enumerate(zip(bn_adv, ln_adv)):
        for norm, v in (("none", bpc), ("batch", bpc - b), ("layer", bpc - l)):
            recs.append(Record({"norm": norm, "lr": 2e-3, "seed": s},
                               {"test_bpc": v, "valid_bpc": v, "valid_curve": [[1, 3.0], [2, v]]}))
    return recs


def holm_center(margin, half, p, n=5):
    """The centre of an interval of half width ``half`` whose one-sided p of diff > margin is exactly ``p``."""
    se = half / t_quantile(0.975, n - 1)
    return margin + t_quantile(1 - p, n - 1) * se


@pytest.mark.parametrize("center, half, label", [c for c in cases(c06.MARGIN) if c[2] != "contradicted here"])
def test_c6_bn_advantage_boundaries(center, half, label):
    assert c06.CLAIM.verdict(c6_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("p, label", [(0.0125 * 0.99, "contradicted here"), (0.0125 * 1.01, "inconclusive")])
def test_c6_worse_than_lstm_is_holm_corrected(p, label):
    # BN worse than the LSTM: two sub-claims, so the smaller p must clear 0.025 / 2, not 0.025
    worse = [-d for d in D(holm_center(c06.MARGIN, 0.01, p), 0.01)]
    assert c06.CLAIM.verdict(c6_records(worse), CTX).label == label
    # just past the uncorrected 95% bound: still not enough
    assert c06.CLAIM.verdict(c6_records(D(-(c06.MARGIN + 0.01 + EPS), 0.01)), CTX).label == "inconclusive"


@pytest.mark.parametrize("bpc, ok", [(2.2, True), (2.2 + EPS, False)])
def test_c6_scale_check(bpc, ok):
    v = judge(c06.CLAIM, c6_records(D(0.3, 0.01), bpc=bpc + 0.3), CTX)  # the LSTM's BPC is the worst arm's
    assert v.scale_ok is (bpc + 0.3 <= 2.2), v.scale_check
    v = judge(c06.CLAIM, c6_records(D(0.3, 0.01), bpc=bpc), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")


# ------------------------------------------------------------------------------------------------ C7 distributed

from normrnn.study.claims import c07_distributed as c07  # noqa: E402


def c7_records(gain, slow=2.0, ln_bytes=0, local=0.02):
    """Per seed, local - synced BN valid MSE = ``gain``; synced steps ``slow`` times the unsynced loop."""
    recs = []
    for s, g in enumerate(gain):
        v = lambda mse, ms, nb=0: {"backend": "reference", "step_ms": ms, "valid_mse": mse,  # noqa: E731
                                   "norm_allreduce_bytes_per_step": nb, "ddp_grad_bytes_per_step": 100}
        recs.append(Record({"seed": s}, {"ln": v(local, 10.0, ln_bytes), "bn_local": v(local, 10.0),
                                         "bn_local_reference": v(local, 10.0), "bn_sync": v(local - g, 10.0 * slow,
                                                                                            9000)}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c07.MSE_MARGIN, h=0.002))
def test_c7_accuracy_boundaries(center, half, label):
    assert c07.CLAIM.verdict(c7_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("slow, label", [(1.05 + EPS, "supported"), (1.05, "not shown here")])
def test_c7_cost_boundary(slow, label):
    assert c07.CLAIM.verdict(c7_records(D(0.05, 0.002), slow=slow), CTX).label == label


@pytest.mark.parametrize("ln_bytes, label", [(0, "supported"), (1, "contradicted here")])
def test_c7_ln_traffic(ln_bytes, label):
    assert c07.CLAIM.verdict(c7_records(D(0.05, 0.002), ln_bytes=ln_bytes), CTX).label == label


@pytest.mark.parametrize("local, ok", [(1 / 12 - EPS, True), (1 / 12 + EPS, False)])
def test_c7_scale_check(local, ok):
    v = judge(c07.CLAIM, c7_records(D(0.05, 0.002), local=local), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")


# ------------------------------------------------------------------------------------------------ C8 online inference

from normrnn.study.claims import c08_online as c08  # noqa: E402


def c8_records(cost, ln=1e-6, bpc=1.9):
    recs = []
    for s, c in enumerate(cost):
        common = {"stream_vs_forward": 1e-6, "batchmates_effect": 0.5, "train_mode_bpc": bpc,
                  "stream_chunk_bpc": bpc, "stream_bpc": bpc}
        recs.append(Record({"norm": "batch", "seed": s}, {**common, "stream_vs_train": 1.5, "stale_cost": c,
                                                          "stale_bpc": bpc + c}))
        recs.append(Record({"norm": "layer", "seed": s}, {**common, "stream_vs_train": ln, "batchmates_effect": 0.0,
                                                          "stale_cost": 0.0, "stale_bpc": bpc}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c08.MARGIN))
def test_c8_stale_cost_boundaries(center, half, label):
    assert c08.CLAIM.verdict(c8_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("ln, label", [(c08.TOLERANCE, "supported"), (c08.TOLERANCE * 1.1, "contradicted here")])
def test_c8_ln_identity_boundary(ln, label):
    assert c08.CLAIM.verdict(c8_records(D(0.2, 0.01), ln=ln), CTX).label == label


@pytest.mark.parametrize("bpc, ok", [(2.2, True), (2.2 + EPS, False)])
def test_c8_scale_check(bpc, ok):
    v = judge(c08.CLAIM, c8_records(D(0.2, 0.01), bpc=bpc), CTX)
    assert v.scale_ok is ok and v.label == ("supported" if ok else "not shown here")


# ------------------------------------------------------------------------------------------------ C9 depth

from normrnn.study.claims import c09_depth as c09  # noqa: E402

LOGMIN = math.log(c09.LAMBDA_MIN)
FLAT = [0.0, 0.01, -0.01, 0.0, 0.005]


def c9_records(g1_plain, g1_res, bn_plain=FLAT, bn_res=FLAT):
    slopes = {("none", False): FLAT, ("layer", False): FLAT, ("batch", False): bn_plain, ("batch", True): bn_res,
              ("batch_g1", False): g1_plain, ("batch_g1", True): g1_res}
    return [Record({"norm": n, "residual": r, "seed": 0},
                   {"depths": [1, 2], "grad_input": [1.0, 1.0], "grad_weight": [1.0, 1.0], "slopes_input": list(s),
                    "slopes_weight": list(s)}) for (n, r), s in slopes.items()]


@pytest.mark.parametrize("p, label", [(0.0125 * 0.99, "supported"), (0.0125 * 1.01, "inconclusive")])
def test_c9_growth_is_holm_corrected_over_the_bn_settings(p, label):
    v = c09.CLAIM.verdict(c9_records(D(holm_center(LOGMIN, 0.01, p), 0.01), D(0.0, 0.01)), CTX)
    assert v.label == label, v.reason


@pytest.mark.parametrize("center, label", [(LOGMIN - 0.01 - EPS, "supported"), (LOGMIN - 0.01 + EPS, "inconclusive")])
def test_c9_residual_taming_boundary(center, label):
    assert c09.CLAIM.verdict(c9_records(D(0.5, 0.01), D(center, 0.01)), CTX).label == label


@pytest.mark.parametrize("center, label", [(LOGMIN - 0.01 - EPS, "not shown here"),
                                           (LOGMIN - 0.01 + EPS, "inconclusive")])
def test_c9_no_growth_boundary(center, label):
    assert c09.CLAIM.verdict(c9_records(D(center, 0.01), FLAT, bn_plain=D(center, 0.01)), CTX).label == label


def test_c9_residual_growing_more_contradicts():
    assert c09.CLAIM.verdict(c9_records(D(0.5, 0.01), D(0.8, 0.01)), CTX).label == "contradicted here"
    # still growing with residual connections (λ's interval above 1.1): the "unless" half is contradicted
    assert c09.CLAIM.verdict(c9_records(D(0.5, 0.01), [x - 0.01 for x in D(0.5, 0.01)]), CTX).label == \
        "contradicted here"
    assert c09.CLAIM.verdict(c9_records(D(0.5, 0.01), D(LOGMIN + 0.01 + EPS, 0.01)), CTX).label == \
        "contradicted here"
    assert c09.CLAIM.verdict(c9_records(D(0.5, 0.01), D(LOGMIN + 0.01 - EPS, 0.01)), CTX).label == "inconclusive"


# ------------------------------------------------------------------------------------------------ C10a/b/c

from normrnn.study.claims import c10_rms_residual as c10  # noqa: E402

C10A, C10B, C10C = c10.CLAIMS


def c10_records(part, diffs, base=1.9):
    """quality: LN - RMS BPC per seed; depth: plain - residual BPC per seed; cost: -log(RMS/LN) per pair."""
    if part == "cost":
        return [Record({"part": "cost", "norm": "layer|rms", "residual": False, "seed": 0},
                       {"ratios_fused": [math.exp(-d) for d in diffs], "ratios_reference": [1.0, 1.0],
                        "ratios_plain": [math.exp(-d) for d in diffs], "ms_layer_fused": 10.0, "ms_rms_fused": 9.0,
                        "ms_layer_reference": 30.0, "ms_rms_reference": 30.0, "ms_layer_plain": 5.0,
                        "ms_rms_plain": 4.5, "engine": "fused-native"})]
    recs = []
    for s, d in enumerate(diffs):
        if part == "quality":
            recs += [Record({"part": part, "norm": "layer", "residual": False, "seed": s}, {"valid_bpc": base}),
                     Record({"part": part, "norm": "rms", "residual": False, "seed": s}, {"valid_bpc": base - d})]
        else:
            recs += [Record({"part": part, "norm": "layer", "residual": False, "seed": s}, {"valid_bpc": base}),
                     Record({"part": part, "norm": "layer", "residual": True, "seed": s}, {"valid_bpc": base - d})]
    return recs


@pytest.mark.parametrize("center, half, label", [
    (0.0, 0.03 - EPS, "supported"), (0.0, 0.03 + EPS, "inconclusive"),  # the equivalence bound
    (-(0.03 + 0.01 + EPS), 0.01, "contradicted here"), (-(0.03 + 0.01 - EPS), 0.01, "inconclusive"),
    (0.03 + 0.01 + EPS, 0.01, "supported")])  # RMS better by more than the margin: at least a match
def test_c10a_equivalence_boundaries(center, half, label):
    assert C10A.verdict(c10_records("quality", D(center, half)), CTX).label == label


@pytest.mark.parametrize("center, half, label", cases(-math.log(0.97), h=0.01))
def test_c10b_cost_boundaries(center, half, label):
    v = C10B.verdict(c10_records("cost", D(center, half)), CTX)
    assert v.label == label and "plain PyTorch" in v.effect and "normrnn's fused kernels" in v.effect


@pytest.mark.parametrize("center, half, label", cases(c10.DEPTH_MARGIN))
def test_c10c_residual_boundaries(center, half, label):
    assert C10C.verdict(c10_records("depth", D(center, half)), CTX).label == label


@pytest.mark.parametrize("claim, part", [(C10A, "quality"), (C10C, "depth")])
def test_c10_scale_checks(claim, part):
    assert judge(claim, c10_records(part, D(0.0, 0.01), base=2.2), CTX).scale_ok is True
    assert judge(claim, c10_records(part, D(0.0, 0.01), base=2.3), CTX).scale_ok is False


# ------------------------------------------------------------------------------------------------ C11 hybrid

from normrnn.study.claims import c11_hybrid as c11  # noqa: E402

RIVALS = [("batch", "batch"), ("layer", "batch"), ("layer", "layer")]


def c11_records(adv, condition="article", base=0.9):
    """adv: {rival: hybrid - rival accuracy per seed}."""
    recs = []
    for s in range(5):
        recs.append(Record({"condition": condition, "conv": "batch", "rnn": "layer", "seed": s},
                           {"valid_accuracy": base, "loss_curve": [1.0] * 20}))
        for rival, d in adv.items():
            recs.append(Record({"condition": condition, "conv": rival[0], "rnn": rival[1], "seed": s},
                               {"valid_accuracy": base - d[s], "loss_curve": [1.0] * 20}))
    return recs


def test_c11_beats_every_rival_boundaries():
    good = D(0.01 + 0.01 + EPS, 0.01)
    assert c11.CLAIM.verdict(c11_records({r: good for r in RIVALS}), CTX).label == "supported"
    short = {**{r: good for r in RIVALS}, RIVALS[2]: D(0.01 + 0.01 - EPS, 0.01)}
    assert c11.CLAIM.verdict(c11_records(short), CTX).label == "inconclusive"


@pytest.mark.parametrize("p, label", [(0.025 / 3 * 0.99, "contradicted here"), (0.025 / 3 * 1.01, "inconclusive")])
def test_c11_a_rival_winning_is_holm_corrected(p, label):
    null = D(0.0, 0.02)
    loses = [-d for d in D(holm_center(0.01, 0.01, p), 0.01)]
    v = c11.CLAIM.verdict(c11_records({RIVALS[0]: null, RIVALS[1]: null, RIVALS[2]: loses}), CTX)
    assert v.label == label, v.reason


@pytest.mark.parametrize("half, label", [(0.01 - EPS, "not shown here"), (0.01 + EPS, "inconclusive")])
def test_c11_all_tied_boundary(half, label):
    assert c11.CLAIM.verdict(c11_records({r: D(0.0, half) for r in RIVALS}), CTX).label == label


def test_c11_primary_is_the_article_condition():
    recs = c11_records({r: D(0.1, 0.01) for r in RIVALS}, "fixed") + c11_records({r: D(0.0, 0.005) for r in RIVALS})
    v = c11.CLAIM.verdict(recs, CTX)
    assert v.label == "not shown here" and v.numbers["fixed_status"] == "best" and "fixed length" in v.reason
    exps = c11.CLAIM.experiments(StudyContext(profile="smoke", seeds=1))
    assert {e.key["condition"] for e in exps} == {"article", "fixed"}
    article = next(e for e in exps if e.key["condition"] == "article")
    assert c11.CLAIM.train_plans(article, StudyContext(profile="smoke", seeds=1))[0].cfg.batch_size == 4


# ------------------------------------------------------------------------------------------------ C12 placement

from normrnn.study.claims import c12_placement as c12  # noqa: E402


def c12_records(rule, rival=None, bpc=1.9):
    """Per seed, 'after' - ba valid BPC = ``rule``; ``rival``: ba - joint per seed (a neighbour's advantage)."""
    recs = []
    rival = rival if rival is not None else D(-0.1, 0.01)
    for s, (d, r) in enumerate(zip(rule, rival)):
        for p, v in (("ba", bpc), ("after", bpc + d), ("joint", bpc - r), ("no_cell", bpc + 0.1),
                     ("carry", bpc + 0.1), ("none", bpc + 0.3)):
            recs.append(Record({"placement": p, "seed": s}, {"valid_bpc": v, "loss_curve": [3.0, v]}))
    return recs


@pytest.mark.parametrize("center, half, label", cases(c12.MARGIN))
def test_c12_rule_boundaries(center, half, label):
    assert c12.CLAIM.verdict(c12_records(D(center, half)), CTX).label == label


@pytest.mark.parametrize("p, better", [(0.025 / 3 * 0.99, ["joint"]), (0.025 / 3 * 1.01, [])])
def test_c12_neighbours_are_holm_corrected(p, better):
    v = c12.CLAIM.verdict(c12_records(D(0.1, 0.01), rival=D(holm_center(c12.MARGIN, 0.01, p), 0.01)), CTX)
    assert v.numbers["rivals_better"] == better and v.label == "supported"


@pytest.mark.parametrize("bpc, ok", [(2.2 - 0.1 - EPS, True), (2.2 - 0.1 + EPS, False)])
def test_c12_scale_check(bpc, ok):
    # the worst LN placement (no_cell, carry: +0.1) sets the check
    assert judge(c12.CLAIM, c12_records(D(0.1, 0.01), bpc=bpc), CTX).scale_ok is ok
