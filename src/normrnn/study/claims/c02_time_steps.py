"""C2 Time steps: BN in an RNN needs separate statistics per time step and fails past the longest trained length.

Experiment: a character LM trained on **independent sequences from a zero state** (every chunk of T characters
starts from a zero state, so the first steps' activations differ from later ones, as the claim's mechanism needs),
with per-step batch norm and with layer norm (same initialisation seeds, data order and updates). In eval mode every
model reads independent validation sequences of 8T characters from a zero state; the BPC over the first T, 2T, 4T
and 8T characters shows what happens past the trained length, where normrnn's batch norm reuses the statistics of
the last trained step (as Cooijmans et al. do). The same BN model is evaluated a second time with **one shared
statistic** for every step: the pooled mixture of its per-step running statistics. That is what a batch norm with a
single running statistic updated at every step would hold; its training is the same as per-step BN's, because in
training both normalize each step with that step's batch statistics. (normrnn's ``max_steps=1`` is not that arm:
it keeps step 0's statistic only, which from a zero state is the statistic of a zero recurrent input, so it would
test an artefact.) Metric: bits per character by position.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...norms import RecurrentBatchNorm
from ..core import Claim, Experiment, Record, StudyContext, Verdict, conditions
from ..experiments import charlm_data, charlm_plan, smooth, train_run
from ..stats import (CHARLM_TRAINED_BPC, INCONCLUSIVE, SUPPORTED, fmt, label_for, mean, one_sample, paired, per_seed,
                     status)

NORMS = ("batch", "layer")  # the trained arms; per-step BN is also evaluated with one shared statistic
LABELS = {"batch": "BN (per-step statistics)", "batch_shared": "BN (one shared statistic)", "layer": "LN"}
FACTORS = (1, 2, 4, 8)  # test lengths, as multiples of the trained length T
MARGIN = 0.05  # bits per character: smaller differences are not worth a claim
SPREAD_MIN = 0.1  # per-step BN statistics "differ" when their means spread by at least 0.1 running SD over steps
LN2 = math.log(2)


def zero_state_training(trainer) -> None:
    """Train on independent chunks: every chunk starts from a zero state (the task's carried state is dropped)."""
    task = trainer.task
    loss = task.loss

    def from_zero(model, batch):
        task.carry = None
        return loss(model, batch)

    task.loss = from_zero


def step_spread(model) -> float:
    """How much the per-step running means of a batch-norm model differ across the trained steps: the mean over
    features and norms of their SD over steps, in units of the running SD (0 when all steps share a statistic)."""
    spreads = []
    for m in model.modules():
        if isinstance(m, RecurrentBatchNorm):
            k = max(1, min(int(m.steps_tracked), m.max_steps))
            if k < 2:
                spreads.append(0.0)
                continue
            mu, var = m.running_mean[:k], m.running_var[:k]
            spreads.append(float((mu.std(0) / var.mean(0).clamp_min(1e-8).sqrt()).mean()))
    return mean(spreads) if spreads else float("nan")


def _per_position_bpc(model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean bits per character at each position of independent sequences x (N, L) read from a zero state."""
    with torch.no_grad():
        logits, _ = model(x)
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (nll.mean(0) / LN2).tolist()


def shared_statistics(model) -> torch.nn.Module:
    """A copy of ``model`` whose batch norms use one statistic for every time step: the mixture of the per-step
    running statistics of the trained steps (mean of means; mean of variances plus variance of the means)."""
    shared = copy.deepcopy(model)
    for m in shared.modules():
        if isinstance(m, RecurrentBatchNorm):
            k = max(1, min(int(m.steps_tracked), m.max_steps))
            mu, var = m.running_mean[:k], m.running_var[:k]
            m.running_mean.copy_(mu.mean(0).expand_as(m.running_mean))
            m.running_var.copy_((var.mean(0) + mu.var(0, unbiased=False)).expand_as(m.running_var))
    return shared


def _mean_range(curve: list[float], a: int, b: int) -> float:
    part = curve[a:b]
    return sum(part) / len(part) if part else float("nan")


class TimeSteps(Claim):
    id = "C2"
    title = "Time steps"
    statement = ("Batch norm in an RNN needs separate statistics per time step, and fails on test sequences longer "
                 "than any training sequence (Cooijmans et al. reuse the last step's statistics there).")
    hypothesis = ("(primary) Past the trained length T, per-step BN's loss rises relative to positions inside it by "
                  "more than LN's does (the length penalty: mean BPC over [T, 8T) minus mean BPC over [T/2, T)); "
                  "(secondary) the same BN model with one shared statistic has a higher BPC inside [0, T) than with "
                  "its per-step statistics.")
    metric = "bits per character per position of 8T-long validation sequences read from a zero state (eval mode)"
    primary = ("per seed, BN's length penalty minus LN's: the 95% t interval's lower bound must clear 0.05 BPC")
    measured = ("both halves are measured on models trained from a zero state; the secondary half evaluates each "
                "BN model with its per-step and with one pooled statistic (paired by construction of the model)")
    rule = ("supported if the excess length penalty (BN - LN, per seed) has a 95% CI above 0.05 BPC; contradicted "
            "here if it lies below -0.05; not shown here if it lies within ±0.05; inconclusive otherwise. The "
            "secondary half (shared-statistic BN - per-step BN inside T, per seed, same margin) is reported beside "
            "it. Scale check: the per-step BN statistics differ across steps (spread ≥ 0.1 running SD) and the "
            f"char-LMs reached {CHARLM_TRAINED_BPC} valid BPC.")

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 1000, standard=128), "seq_len": ctx.pick(10, 50, 100, standard=50),
                "batch": ctx.pick(8, 32, 64, standard=32), "steps": ctx.pick(5, 250, 8000, standard=1500),
                "limit": ctx.pick(20000, 300000, None, standard=None),
                "eval_limit": ctx.pick(4000, 40000, None, standard=100000),
                "sequences": ctx.pick(16, 100, 400, standard=200)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"Char-LSTM ({s['hidden']} units) on {charlm_data(ctx)}, independent chunks of T = {s['seq_len']} "
                f"characters each from a zero state, batch {s['batch']}, {s['steps']} updates, Adam 2e-3"
                f"{' (searched per arm)' if ctx.profile in ('standard', 'full') else ''}, clip 1.0, seeds "
                f"{ctx.seed_list}; BN evaluated with per-step statistics and with one pooled statistic; "
                f"evaluated on {s['sequences']} independent validation sequences of "
                f"{FACTORS[-1] * s['seq_len']} characters (test lengths {[f * s['seq_len'] for f in FACTORS]}).")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n} for n in NORMS), data=charlm_data(ctx), **self.sizes(ctx),
                         factors=list(FACTORS), training="zero-state")

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        return [charlm_plan(ctx, exp.spec, prepare=zero_state_training, variant={"training": "zero-state"})]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        s = exp.spec
        summary, _, trainer = train_run(self.train_plans(exp, ctx)[0])
        model = trainer.model.eval()
        t, length = s["seq_len"], s["seq_len"] * max(s["factors"])
        ids = trainer.task.splits["valid"]
        n = min(s["sequences"], len(ids) // (length + 1))
        if n < 2:
            raise ValueError(f"the validation split ({len(ids)} chars) is too short for sequences of {length}")
        chunks = ids[:n * (length + 1)].view(n, length + 1).to(next(model.parameters()).device)
        x, y = chunks[:, :-1], chunks[:, 1:]
        curve = _per_position_bpc(model, x, y)
        out = {"valid_bpc": summary["valid_bpc"], "diverged": summary["diverged"], "steps": summary["steps"],
               "trained_length": t, "sequences": n, "position_bpc": curve,
               "bpc_at_length": {str(f * t): _mean_range(curve, 0, f * t) for f in s["factors"]},
               "inside": _mean_range(curve, t // 2, t), "beyond": _mean_range(curve, t, length)}
        out["penalty"] = out["beyond"] - out["inside"]
        out["inside_T"] = _mean_range(curve, 0, t)
        if s["norm"] == "batch":
            out["step_spread"] = step_spread(model)
            shared_curve = _per_position_bpc(shared_statistics(model), x, y)
            out["shared_position_bpc"] = shared_curve
            out["inside_T_shared"] = _mean_range(shared_curve, 0, t)
            out["shared_cost"] = out["inside_T_shared"] - out["inside_T"]
        return out

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        pen = {a: per_seed(records, lambda r: r["penalty"], lambda k, a=a: k["norm"] == a) for a in NORMS}
        cost = per_seed([r for r in records if "shared_cost" in r.result], lambda r: r["shared_cost"],
                        lambda k: k["norm"] == "batch")
        excess = paired(pen["layer"], pen["batch"], higher_is_better=False)  # > 0: BN's penalty is larger
        part = status(excess, MARGIN)
        numbers = {"excess": excess.to_dict(), "status": part, "penalty_bn": mean(list(pen["batch"].values())),
                   "penalty_ln": mean(list(pen["layer"].values()))}
        effect = (f"length penalty BN {numbers['penalty_bn']:+.3f}, LN {numbers['penalty_ln']:+.3f} BPC; excess "
                  f"BN - LN {excess.text(unit='BPC')}")
        secondary = ""
        if cost:
            sharing = one_sample(cost)  # > 0: one shared statistic is worse
            numbers.update(sharing=sharing.to_dict(), sharing_status=status(sharing, MARGIN),
                           shared_cost=sharing.diff)
            effect += f"; one shared statistic costs {sharing.text(unit='BPC')} inside T"
            secondary = {"holds": " Per-step statistics are needed inside T: one shared statistic costs more than "
                                  f"{MARGIN} BPC.",
                         "absent": f" One shared statistic costs less than {MARGIN} BPC inside T: per-step "
                                   "statistics are not shown to be needed here.",
                         "opposite": " One shared statistic does better than per-step statistics inside T.",
                         "unclear": " Whether per-step statistics are needed inside T is within the spread."}[
                numbers["sharing_status"]]
        label = label_for(part)
        words = {SUPPORTED: f"Past the trained length BN degrades more than LN by over {MARGIN} BPC.",
                 INCONCLUSIVE: "The excess penalty's interval straddles the margin."}
        return Verdict(label, effect, words.get(label, f"BN's excess length penalty is "
                                                       f"{'within' if part == 'absent' else 'below'} ±{MARGIN} BPC.")
                       + secondary, numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        spread = mean([r.result["step_spread"] for r in records if "step_spread" in r.result])
        bpc = mean([r.result["valid_bpc"] for r in records if not r.result.get("diverged")])
        return conditions(
            (spread >= SPREAD_MIN, f"per-step BN statistics spread over steps by {spread:.2f} running SD "
                                   f"(needs ≥ {SPREAD_MIN})"),
            (bpc <= CHARLM_TRAINED_BPC, f"mean valid BPC {bpc:.2f} (a trained small char-LM: ≤ {CHARLM_TRAINED_BPC})"))

    def table(self, records: list[Record]):
        lengths = sorted({int(k) for r in records for k in r.result["bpc_at_length"]})
        rows = []
        for arm in NORMS:
            recs = [r for r in records if r.key["norm"] == arm]
            if not recs:
                continue
            rows.append([LABELS[arm], *(fmt([r.result["bpc_at_length"].get(str(L)) for r in recs]) for L in lengths),
                         fmt([r.result["penalty"] for r in recs]),
                         fmt([r.result.get("shared_cost") for r in recs]) if arm == "batch" else "–"])
        return (["arm", *(f"BPC over length {L} (mean ± SD)" for L in lengths), "length penalty (BPC, mean ± SD)",
                 "one shared statistic - per-step, inside T (BPC, mean ± SD)"], rows)

    def figure(self, records: list[Record], ax) -> None:
        t = records[0].result["trained_length"] if records else None
        for norm, field, label in (("batch", "position_bpc", LABELS["batch"]),
                                   ("batch", "shared_position_bpc", LABELS["batch_shared"]),
                                   ("layer", "position_bpc", LABELS["layer"])):
            curves = [r.result[field] for r in records if r.key["norm"] == norm and field in r.result]
            if not curves:
                continue
            avg = [mean(col) for col in zip(*curves)]
            ax.plot(range(1, len(avg) + 1), smooth(avg, max(1, len(avg) // 40)), label=label)
        if t:
            ax.axvline(t, color="grey", linestyle="--", linewidth=1, label="trained length T")
        ax.set_xlabel("position in the test sequence")
        ax.set_ylabel("valid bits per character (smoothed)")
        ax.legend()

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if "penalty_bn" not in n:
            return {}
        shared = f"; one shared statistic {n['shared_cost']:+.2f} BPC inside T" if "shared_cost" in n else ""
        return {"RNN suitability (time steps)": {
            "BN": f"{n['penalty_bn']:+.2f} BPC past the trained length{shared}",
            "LN": f"{n['penalty_ln']:+.2f} BPC past the trained length; no per-step state"}}


CLAIM = TimeSteps()
