"""C12 Placement: LN belongs after the linear maps and before the nonlinearities (separate x- and h-terms, and on the
cell), rather than elsewhere.

Experiment: a one-layer LSTM character LM (shakespeare) trained with the LN placements normrnn offers, same
initialisation seed, data order and number of updates:

* ``ba``: separate norms on W_ih·x and W_hh·h, and LN on c_t before the output tanh (Ba et al.);
* ``joint``: one LN on the sum W_ih·x + W_hh·h, and on the cell;
* ``no_cell``: separate term norms, no LN on the cell;
* ``carry``: as ``ba`` but the normalized cell is carried to the next step instead of the raw one;
* ``none``: no normalization (the baseline).

Metric: valid bits per character.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, make_trainer, plan, smooth
from ..stats import better, compare, fmt, group, mean
from .c10_rms_residual import charlm_plan_data, describe_charlm

# label -> (norm, norm_terms, norm_cell, carry_normalized_cell)
PLACEMENTS = {
    "ba": ("layer", "separate", True, False),
    "joint": ("layer", "joint", True, False),
    "no_cell": ("layer", "separate", False, False),
    "carry": ("layer", "separate", True, True),
    "none": ("none", "separate", True, False),
}
NAMES = {"ba": "separate terms + cell (Ba et al.)", "joint": "joint terms + cell", "no_cell": "separate, no cell LN",
         "carry": "separate + cell, normalized cell carried", "none": "no norm"}
LN_PLACEMENTS = ("ba", "joint", "no_cell", "carry")
MARGIN = 0.02  # bits per character


def carry_normalized_cell(trainer) -> None:
    """The ``carry`` placement. TrainConfig has no knob for it; the option only changes what the cell carries (no
    new parameters), so setting it on the built layer leaves the initialisation identical to "ba"."""
    rnn = trainer.model.rnn
    rnn.options = dataclasses.replace(rnn.options, carry_normalized_cell=True)


class Placement(Claim):
    id = "C12"
    title = "Placement"
    statement = ("Layer norm belongs after the linear maps and before the nonlinearities: on the input and recurrent "
                 "terms separately, and on the cell, rather than elsewhere.")
    hypothesis = ("Ba et al.'s placement (separate x- and h-term LN plus LN on the cell) reaches the lowest valid bpc "
                  "of the LN placements at a fixed budget, and beats normalizing the summed terms (joint) and "
                  "leaving the cell unnormalized.")
    metric = "valid bits per character after a fixed number of updates"
    rule = (f"refuted if another LN placement (joint, no cell LN, carried normalized cell) has a lower valid bpc than "
            f"Ba et al.'s by more than {MARGIN} and 2 standard errors; otherwise supported if Ba et al.'s placement "
            f"beats both the joint and the no-cell-LN placements by more than {MARGIN} and 2 standard errors; "
            f"depends if it beats one of the two but not the other; inconclusive otherwise. The no-norm model is "
            f"reported as the baseline, not part of the rule.")

    paper_deviations = {
        "hidden": "256 units: five placements × seeds are compared within one smaller model",
        "batch_size": "32, as the claim's other profiles (the comparison is within one batch size)",
        "lr": "3e-3, the claim's rate in every profile; the search tries 1.5e-3 / 3e-3 / 6e-3 per placement"}

    def sizes(self, ctx: StudyContext) -> dict:
        return {"chars": ctx.pick(60_000, 440_000, None), "limit": ctx.pick(50_000, 400_000, None),
                "eval_limit": ctx.pick(3_000, 20_000, 200_000), "hidden": ctx.pick(16, 64, 256),
                "batch": ctx.pick(8, 16, 32), "seq_len": ctx.pick(20, 50, 100), "steps": ctx.pick(10, 200, 3000)}

    def placements(self, ctx: StudyContext) -> list[str]:
        return list(PLACEMENTS)

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"One-layer LSTM char-LM, {s['hidden']} units, on {describe_charlm(ctx, s['chars'])}, {s['steps']} "
                f"updates of {s['batch']}×{s['seq_len']} characters, Adam 3e-3, clip 1.0, seeds {ctx.seed_list}; "
                f"placements: " + "; ".join(f"{p} = {NAMES[p]}" for p in self.placements(ctx)) + ".")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        s = self.sizes(ctx)
        data = ctx.text or ("shakespeare" if ctx.profile == "full" else f"shakespeare[:{s['chars']}]")
        return self.grid(ctx, ({"placement": p} for p in self.placements(ctx)), data=data, **s)

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        norm, terms, norm_cell, carry = PLACEMENTS[s["placement"]]
        # The placement is the compared variant: its own learning-rate search in the full profile (carry differs
        # from ba in nothing the TrainConfig says), and the search's trials carry the normalized cell too.
        return [plan(ctx, task="charlm", **charlm_plan_data(ctx, s["chars"]), norm=norm, norm_terms=terms,
                     norm_cell=norm_cell, hidden=s["hidden"], batch_size=s["batch"], seq_len=s["seq_len"],
                     max_steps=s["steps"], limit=s["limit"], eval_limit=s["eval_limit"], seed=s["seed"], lr=3e-3,
                     clip=1.0, variant={"placement": s["placement"]}, prepare=carry_normalized_cell if carry else None)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        trainer, rec = make_trainer(self.train_plans(exp, ctx)[0])
        summary = trainer.fit()
        return {"valid_bpc": summary["valid_bpc"], "test_bpc": summary["test_bpc"], "diverged": summary["diverged"],
                "steps": summary["steps"], "params": summary["params"], "loss_curve": curve(rec.losses)}

    def _bpc(self, records: list[Record]) -> dict:
        return group(records, lambda k: k["placement"], lambda r: r["valid_bpc"])

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        bpc = self._bpc(records)
        vs = {p: compare(bpc["ba"], bpc[p], higher_is_better=False) for p in bpc if p != "ba"}  # positive: ba better
        numbers = {"ba_vs": vs, "bpc": {p: mean(v) for p, v in bpc.items()}}
        effect = "valid bpc " + "; ".join(f"{p} - ba {vs[p]['diff']:+.3f} (± {vs[p]['se']:.3f})" for p in vs)
        rivals = [p for p in LN_PLACEMENTS if p in vs and better({**vs[p], "diff": -vs[p]["diff"], "z": -vs[p]["z"]},
                                                                  MARGIN)]
        baseline = (f" No norm: {mean(bpc['none']):.3f} bpc vs Ba et al.'s {mean(bpc['ba']):.3f}."
                    if "none" in bpc else "")
        if rivals:
            best = min(rivals, key=lambda p: mean(bpc[p]))
            return Verdict("refuted", effect, f"{NAMES[best]} reaches {mean(bpc[best]):.3f} bpc, lower than Ba et "
                                              f"al.'s {mean(bpc['ba']):.3f} by more than {MARGIN} and 2 standard "
                                              f"errors.{baseline}", numbers)
        beats = {p: better(vs[p], MARGIN) for p in ("joint", "no_cell") if p in vs}
        if beats and all(beats.values()):
            return Verdict("supported", effect, f"Ba et al.'s placement is best or tied-best and beats "
                                                f"{' and '.join(NAMES[p] for p in beats)}.{baseline}", numbers)
        if any(beats.values()):
            won = [NAMES[p] for p, b in beats.items() if b]
            lost = [NAMES[p] for p, b in beats.items() if not b]
            return Verdict("depends", effect, f"Ba et al.'s placement beats {', '.join(won)} but is not better "
                                              f"than {', '.join(lost)}: one part of the placement matters here, the "
                                              f"other does not.{baseline}", numbers)
        return Verdict("inconclusive", effect, f"The placements are within {MARGIN} bpc or within the seed-to-seed "
                                               f"spread of each other.{baseline}", numbers)

    def table(self, records: list[Record]):
        bpc = self._bpc(records)
        rows = [[NAMES[p], fmt(bpc[p]), "–" if p == "ba" else
                 f"{compare(bpc[p], bpc['ba'], higher_is_better=False)['diff']:+.3f}"]
                for p in PLACEMENTS if p in bpc and "ba" in bpc]
        return ["placement", "valid bpc", "improvement over Ba et al. (bpc)"], rows

    def figure(self, records: list[Record], ax) -> None:
        curves = group(records, lambda k: k["placement"], lambda r: r["loss_curve"])
        for p in PLACEMENTS:
            if p not in curves:
                continue
            n = min(len(c) for c in curves[p])
            avg = [mean([c[i] for c in curves[p]]) for i in range(n)]
            ax.plot(smooth(avg, 5), label=f"{p}: {NAMES[p]}")
        ax.set_xlabel("training progress (100 evenly spaced points)")
        ax.set_ylabel("training loss (nats/char, smoothed)")
        bpc = self._bpc(records)
        if "ba" in bpc:
            ax.set_title(" ".join(f"{p} {mean(v):.2f}" for p, v in bpc.items()) + " (valid bpc)", fontsize="small")
        ax.legend(fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        bpc = self._bpc(records)
        if "ba" not in bpc:
            return {}
        parts = ", ".join(f"{p} {mean(bpc[p]):.3f}" for p in PLACEMENTS if p in bpc and p != "none")
        return {"Placement": {"LN": f"{verdict.label}: valid bpc {parts}"}}


CLAIM = Placement()
