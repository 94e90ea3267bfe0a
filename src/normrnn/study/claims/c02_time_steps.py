"""C2 Time steps: BN in an RNN needs separate statistics per time step and fails past the longest trained length.

Experiment: a character LM (BN-LSTM and LN-LSTM, same initialisation seeds, data order and number of updates)
trained with truncated BPTT on chunks of T characters, so batch norm keeps T per-step statistics. In eval mode the
models then read independent validation sequences of 4T characters from a zero state; the loss at every position
shows what happens past T, where normrnn's batch norm reuses the statistics of the last trained step (as
Cooijmans et al. do). A second evaluation of the same BN model replaces its per-step running statistics by one
shared statistic (the mixture of all steps' mean and variance), which tests whether the separate per-step
statistics are needed at all. Metric: bits per character by position bucket.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...norms import RecurrentBatchNorm
from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import charlm_data, charlm_plan, smooth, train_run
from ..stats import compare, fmt, group, mean

NORMS = ("batch", "layer")
LABELS = {"batch": "BN", "layer": "LN"}
FACTORS = (1, 2, 4)  # test lengths, as multiples of the trained length T
MARGIN = 0.05  # bits per character: smaller differences are not worth a claim
LN2 = math.log(2)


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
    hypothesis = ("(a) Past the trained length T, BN's loss rises relative to positions inside it by more than LN's "
                  "does (the length penalty: mean BPC over positions [T, 4T) minus mean BPC over [T/2, T)); "
                  "(b) replacing BN's per-step statistics by one shared statistic raises its BPC inside [0, T).")
    metric = "bits per character per position of 4T-long validation sequences read from a zero state (eval mode)"
    rule = ("(a) holds if BN's length penalty exceeds LN's by more than 0.05 BPC and 2 standard errors, and fails if "
            "the excess plus 2 standard errors is at most 0.05 BPC; (b) holds if sharing one statistic costs BN more "
            "than 0.05 BPC and 2 standard errors inside the trained length, and fails if that cost plus 2 standard "
            "errors is at most 0.05 BPC. Supported if (a) and (b) hold; refuted if both fail; depends if one holds "
            "and the other fails; inconclusive otherwise.")

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 1000), "seq_len": ctx.pick(10, 50, 100), "batch": ctx.pick(8, 32, 64),
                "steps": ctx.pick(5, 250, 8000), "limit": ctx.pick(20000, 300000, None),
                "eval_limit": ctx.pick(4000, 40000, None), "sequences": ctx.pick(16, 100, 400)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"Char-LSTM ({s['hidden']} units) on {charlm_data(ctx)}, truncated BPTT over T = {s['seq_len']} "
                f"characters, batch {s['batch']}, {s['steps']} updates, Adam 2e-3, clip 1.0, seeds {ctx.seed_list}; "
                f"evaluated on {s['sequences']} independent validation sequences of "
                f"{FACTORS[-1] * s['seq_len']} characters (test lengths {[f * s['seq_len'] for f in FACTORS]}).")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n} for n in NORMS), data=charlm_data(ctx), **self.sizes(ctx),
                         factors=list(FACTORS))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        return [charlm_plan(ctx, exp.spec)]

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
        if s["norm"] == "batch":
            shared_curve = _per_position_bpc(shared_statistics(model), x, y)
            out["shared_position_bpc"] = shared_curve
            out["shared_cost"] = _mean_range(shared_curve, 0, t) - _mean_range(curve, 0, t)
            out["shared_cost_beyond"] = _mean_range(shared_curve, t, length) - _mean_range(curve, t, length)
        return out

    def _values(self, records: list[Record], field: str) -> dict:
        return group([r for r in records if field in r.result], lambda k: k["norm"], lambda r: r[field])

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        pen = self._values(records, "penalty")
        cost = self._values(records, "shared_cost")["batch"]
        excess = compare(pen["layer"], pen["batch"], higher_is_better=False)  # diff > 0: BN's penalty is larger
        sharing = compare(cost, [0.0] * len(cost))  # diff > 0: one shared statistic is worse
        numbers = {"excess": excess, "sharing": sharing, "penalty_bn": mean(pen["batch"]),
                   "penalty_ln": mean(pen["layer"]), "shared_cost": mean(cost)}
        effect = (f"length penalty BN {mean(pen['batch']):+.3f}, LN {mean(pen['layer']):+.3f} BPC (excess "
                  f"{excess['diff']:+.3f} ± {excess['se']:.3f}); one shared BN statistic costs "
                  f"{sharing['diff']:+.3f} ± {sharing['se']:.3f} BPC inside T")

        def status(c: dict) -> str:
            if c["diff"] > MARGIN and c["z"] > 2:
                return "holds"
            if math.isfinite(c["se"]) and c["diff"] + 2 * c["se"] <= MARGIN:
                return "fails"
            return "unclear"

        a, b = status(excess), status(sharing)
        numbers.update(longer=a, separate=b)
        words = {"holds": "does", "fails": "does not", "unclear": "may or may not"}
        reason = (f"Past the trained length BN {words[a]} degrade more than LN; per-step statistics "
                  f"{'are' if b == 'holds' else 'are not' if b == 'fails' else 'may be'} needed (sharing one "
                  f"statistic {'costs' if b == 'holds' else 'costs no more than'} {MARGIN} BPC).")
        if a == "holds" and b == "holds":
            return Verdict("supported", effect, reason, numbers)
        if a == "fails" and b == "fails":
            return Verdict("refuted", effect, reason, numbers)
        if {a, b} == {"holds", "fails"}:
            return Verdict("depends", effect, reason + " Only one half of the claim holds here.", numbers)
        return Verdict("inconclusive", effect, reason + " The differences are within the seed-to-seed spread.",
                       numbers)

    def table(self, records: list[Record]):
        lengths = sorted({int(k) for r in records for k in r.result["bpc_at_length"]})
        rows = []
        for norm in NORMS:
            recs = [r for r in records if r.key["norm"] == norm]
            if not recs:
                continue
            rows.append([LABELS[norm], *(fmt([r.result["bpc_at_length"][str(L)] for r in recs]) for L in lengths),
                         fmt([r.result["penalty"] for r in recs]),
                         fmt([r.result["shared_cost"] for r in recs]) if norm == "batch" else "–"])
        return (["norm", *(f"BPC over length {L}" for L in lengths), "length penalty (BPC)",
                 "cost of one shared statistic (BPC)"], rows)

    def figure(self, records: list[Record], ax) -> None:
        t = records[0].result["trained_length"] if records else None
        for norm, field, label in (("batch", "position_bpc", "BN (per-step statistics)"),
                                   ("batch", "shared_position_bpc", "BN (one shared statistic)"),
                                   ("layer", "position_bpc", "LN")):
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
        if not n:
            return {}
        return {"RNN suitability (time steps)": {
            "BN": (f"{n['penalty_bn']:+.2f} BPC past the trained length; one shared statistic "
                   f"{n['shared_cost']:+.2f} BPC"),
            "LN": f"{n['penalty_ln']:+.2f} BPC past the trained length; no per-step state"}}


CLAIM = TimeSteps()
