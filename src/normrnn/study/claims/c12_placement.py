"""C12 Placement: LN belongs after the linear maps and before the nonlinearities (separate x- and h-terms, and on the
cell), rather than elsewhere.

Experiment: a one-layer LSTM character LM (shakespeare) trained with the LN placements normrnn offers, same
initialisation seed, data order and number of updates:

* ``ba``: separate norms on W_ih·x and W_hh·h, and LN on c_t before the output tanh (Ba et al.);
* ``joint``: one LN on the sum W_ih·x + W_hh·h, and on the cell;
* ``no_cell``: separate term norms, no LN on the cell;
* ``carry``: as ``ba`` but the normalized cell is carried to the next step instead of the raw one;
* ``after``: the placement that breaks the rule: LN (without gain) on h_t = o_t ⊙ tanh(c_t), after the output
  nonlinearity, and on no pre-activation; the normalized h is what the next step reads;
* ``none``: no normalization (the baseline).

The primary test is the rule itself: Ba et al.'s placement (after the linear maps, before the nonlinearities)
against ``after``. The other LN placements all obey the rule; comparing Ba et al.'s with them says which
rule-obeying variant is best, reported beside it. Metric: valid bits per character.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, make_trainer, plan, smooth
from ..stats import (CHARLM_TRAINED_BPC, CONTRADICTED, NOT_SHOWN, SUPPORTED, any_beats, flip, fmt, group, label_for,
                     mean, paired, per_seed, status)
from .c10_rms_residual import charlm_plan_data, describe_charlm

# label -> (norm, norm_terms, norm_cell, carry_normalized_cell)
PLACEMENTS = {
    "ba": ("layer", "separate", True, False),
    "joint": ("layer", "joint", True, False),
    "no_cell": ("layer", "separate", False, False),
    "carry": ("layer", "separate", True, True),
    "after": ("none", "separate", True, False),  # the weights of a plain LSTM; LN on h set by norm_after_nonlinearity
    "none": ("none", "separate", True, False),
}
NAMES = {"ba": "separate terms + cell (Ba et al.)", "joint": "joint terms + cell", "no_cell": "separate, no cell LN",
         "carry": "separate + cell, normalized cell carried",
         "after": "LN on h after the nonlinearity (breaks the rule)", "none": "no norm"}
LN_PLACEMENTS = ("ba", "joint", "no_cell", "carry")  # every one of these obeys the rule
RIVALS = ("joint", "no_cell", "carry")  # Ba et al.'s rule-obeying neighbours


def norm_after_nonlinearity(trainer) -> None:
    """The ``after`` placement: the plain LSTM layer's forward becomes a loop over steps that normalizes h_t (LN over
    its features, no gain or bias, so no parameters are added) after the output nonlinearity; the normalized h is
    carried. Same weights and initialisation as the no-norm model."""
    rnn = trainer.model.rnn
    hidden = rnn.weight_hh_l0.shape[1]

    def forward(x, hx=None, *, lengths=None):
        n, steps, _ = x.shape
        if hx is None:
            h = c = x.new_zeros(n, hidden)
        else:
            h, c = hx[0][0], hx[1][0]
        pre = x @ rnn.weight_ih_l0.t() + rnn.bias_ih_l0 + rnn.bias_hh_l0
        outs = []
        for t in range(steps):
            i, f, g, o = (pre[:, t] + h @ rnn.weight_hh_l0.t()).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = F.layer_norm(torch.sigmoid(o) * torch.tanh(c), (hidden,))
            outs.append(h)
        return torch.stack(outs, 1), (h.unsqueeze(0), c.unsqueeze(0))

    rnn.forward = forward
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
    hypothesis = ("Ba et al.'s placement (LN after the linear maps, before the nonlinearities: separate x- and h-term "
                  "LN plus LN on the cell) reaches a lower valid bpc than LN placed after the nonlinearity (on h).")
    metric = "valid bits per character after a fixed number of updates"
    primary = (f"per seed, 'after' minus Ba et al.'s valid BPC: the 95% t interval's lower bound must clear {MARGIN} "
               f"BPC")
    measured = ("measured: the rule (before vs after the nonlinearity, the primary test), and Ba et al.'s placement "
                "against the other rule-obeying placements (joint terms, no cell LN, carried normalized cell)")
    rule = (f"supported if Ba et al.'s placement beats LN after the nonlinearity with a 95% CI above {MARGIN} BPC; "
            f"contradicted here if 'after' is better by more than {MARGIN}; not shown here if their difference lies "
            f"within ±{MARGIN}; inconclusive otherwise. Beside it: whether a rule-obeying neighbour beats Ba et al.'s "
            f"placement by more than {MARGIN} (Holm's correction over the three). The no-norm model is the baseline. "
            f"Scale check: the LN placements reached {CHARLM_TRAINED_BPC} valid BPC.")

    paper_deviations = {
        "hidden": "256 units: five placements × seeds are compared within one smaller model",
        "batch_size": "32, as the claim's other profiles (the comparison is within one batch size)",
        "lr": "3e-3, the claim's rate in every profile; the search tries 1.5e-3 / 3e-3 / 6e-3 per placement"}

    def sizes(self, ctx: StudyContext) -> dict:
        return {"chars": ctx.pick(60_000, 440_000, None, standard=1_100_000),
                "limit": ctx.pick(50_000, 400_000, None, standard=1_000_000),
                "eval_limit": ctx.pick(3_000, 20_000, 200_000, standard=50_000),
                "hidden": ctx.pick(16, 64, 256, standard=128),
                "batch": ctx.pick(8, 16, 32, standard=32), "seq_len": ctx.pick(20, 50, 100, standard=50),
                "steps": ctx.pick(10, 200, 3000, standard=1500)}

    def placements(self, ctx: StudyContext) -> list[str]:
        # The standard profile leaves out the no-norm baseline, which no rule reads (C6 compares LN with no norm at
        # twice the updates): its 90-minute budget on 2 cores.
        return [p for p in PLACEMENTS if not (p == "none" and ctx.profile == "standard")]

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
                     clip=1.0, variant={"placement": s["placement"]},
                     prepare=carry_normalized_cell if carry else
                     norm_after_nonlinearity if s["placement"] == "after" else None)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        trainer, rec = make_trainer(self.train_plans(exp, ctx)[0])
        summary = trainer.fit()
        return {"valid_bpc": summary["valid_bpc"], "test_bpc": summary["test_bpc"], "diverged": summary["diverged"],
                "steps": summary["steps"], "params": summary["params"], "loss_curve": curve(rec.losses)}

    def _bpc(self, records: list[Record]) -> dict:
        return group(records, lambda k: k["placement"], lambda r: r["valid_bpc"])

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        arm = lambda p: per_seed(records, lambda r: r["valid_bpc"], lambda k: k["placement"] == p)  # noqa: E731
        bpc = self._bpc(records)
        rule = paired(arm("ba"), arm("after"), higher_is_better=False)  # positive: Ba et al.'s better
        part = status(rule, MARGIN)
        vs = {p: paired(arm("ba"), arm(p), higher_is_better=False) for p in RIVALS if p in bpc}  # > 0: ba better
        rivals = any_beats({p: flip(c) for p, c in vs.items()}, MARGIN)
        numbers = {"rule": rule.to_dict(), "status": part, "ba_vs": {p: c.to_dict() for p, c in vs.items()},
                   "rivals_better": rivals, "bpc": {p: mean(v) for p, v in bpc.items()}}
        effect = (f"after - Ba et al. valid BPC {rule.text(unit='BPC')}; " + "; ".join(
            f"{p} - ba {-c.diff:+.3f}" for p, c in vs.items()))
        baseline = (f" No norm: {mean(bpc['none']):.3f} bpc vs Ba et al.'s {mean(bpc['ba']):.3f}."
                    if "none" in bpc and "ba" in bpc else "")
        neighbours = (f" Among the rule-obeying placements, {', '.join(NAMES[p] for p in rivals)} beats Ba et al.'s "
                      f"by more than {MARGIN} (Holm)." if rivals else
                      f" No rule-obeying placement beats Ba et al.'s by more than {MARGIN} (Holm).")
        label = label_for(part)
        words = {SUPPORTED: f"LN before the nonlinearities (Ba et al.) beats LN after them by more than {MARGIN} BPC.",
                 CONTRADICTED: f"LN after the nonlinearity beats Ba et al.'s placement by more than {MARGIN} BPC.",
                 NOT_SHOWN: f"Before or after the nonlinearity makes less than {MARGIN} BPC of difference here."}
        return Verdict(label, effect, words.get(label, "The rule's effect is within the seed-to-seed spread.")
                       + neighbours + baseline, numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        bpc = self._bpc(records)
        worst = max((mean(v) for p, v in bpc.items() if p in LN_PLACEMENTS or p == "after"), default=float("nan"))
        return worst <= CHARLM_TRAINED_BPC, (f"the worst LN placement's mean valid BPC {worst:.2f} (a trained small "
                                             f"char-LM: ≤ {CHARLM_TRAINED_BPC})")

    def table(self, records: list[Record]):
        bpc = self._bpc(records)
        arm = lambda p: per_seed(records, lambda r: r["valid_bpc"], lambda k: k["placement"] == p)  # noqa: E731
        rows = [[NAMES[p], fmt(bpc[p]), "–" if p == "ba" else paired(arm(p), arm("ba"), higher_is_better=False).text()]
                for p in PLACEMENTS if p in bpc and "ba" in bpc]
        return ["placement", "valid bpc (mean ± SD)", "improvement over Ba et al. (BPC, paired, 95% CI)"], rows

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
