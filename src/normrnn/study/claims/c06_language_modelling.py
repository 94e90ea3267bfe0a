"""C6 Language modelling: BN-LSTM (gamma 0.1) and LN-LSTM beat a plain LSTM in bits per character.

Experiment: character LMs without normalization, with recurrent batch norm (gamma initialised to 0.1, as Cooijmans
et al.) and with layer norm, trained on the same text with the same initialisation seeds, data order and number of
updates. The full profile follows Cooijmans et al.'s set-up (1000 units, BPTT 100, batch 64, Adam, clip 1.0) and
tunes the learning rate per norm over {1e-3, 2e-3, 4e-3} on the validation split; quick and smoke use one rate.
Metric: test bits per character (at the learning rate each norm does best with on valid).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import charlm_data, charlm_plan, curve, train_run
from ..stats import compare, fmt, mean

NORMS = ("none", "batch", "layer")
LABELS = {"none": "LSTM", "batch": "BN-LSTM", "layer": "LN-LSTM"}
MARGIN = 0.02  # bits per character
PAPERS = ("Published, on Penn Treebank characters (not this text): Cooijmans et al. (2017) BN-LSTM 1.32 vs LSTM "
          "1.38 test BPC on PTB (1.36 vs 1.43 on text8); Ha et al. (HyperNetworks, 2017) LN-LSTM 1.267 vs LSTM "
          "1.312 on PTB.")


class LanguageModelling(Claim):
    id = "C6"
    title = "Language modelling (BPC)"
    statement = ("A BN-LSTM with gamma initialised to 0.1 beats a plain LSTM in bits per character (Cooijmans et al.: "
                 "PTB-char 1.32 vs 1.38, text8 1.36 vs 1.43); an LN-LSTM also beats it (HyperNetworks paper: 1.267 "
                 "vs 1.312 on PTB-char).")
    hypothesis = ("With the same updates and data, BN-LSTM's and LN-LSTM's test BPC are each lower than the plain "
                  "LSTM's by more than 0.02 BPC.")
    metric = "test bits per character (learning rate picked per norm on valid where a grid is run)"
    rule = ("Two sub-claims, BN beats LSTM and LN beats LSTM: each holds if its test BPC is lower by more than 0.02 "
            "and 2 standard errors, and fails if its advantage plus 2 standard errors is at most 0.02 BPC (or it is "
            "worse). Supported if both hold; depends if one holds and the other fails; refuted if both fail; "
            "inconclusive otherwise.")

    paper_deviations = {
        "lr": "a grid {1e-3, 2e-3, 4e-3} around the paper's 2e-3, for every norm; each norm is judged at its best "
              "rate on valid",
        "tune_lr": "that grid is the claim's own learning-rate search (an axis of the experiment, every seed at "
                   "every rate), so there is no second search"}

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 96, 1000), "seq_len": ctx.pick(10, 50, 100), "batch": ctx.pick(8, 32, 64),
                "steps": ctx.pick(6, 400, 20000), "limit": ctx.pick(20000, 300000, None),
                "eval_limit": ctx.pick(3000, 15000, None), "eval_every": ctx.pick(3, 50, 1000)}

    def lrs(self, ctx: StudyContext) -> list[float]:
        return ctx.pick([2e-3], [2e-3], [1e-3, 2e-3, 4e-3])

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        lrs = self.lrs(ctx)
        tuned = (f"learning rate tuned per norm over {lrs} on valid" if len(lrs) > 1
                 else f"learning rate {lrs[0]} for every norm (not tuned)")
        return (f"Char-LSTM ({s['hidden']} units) on {charlm_data(ctx)}, BPTT {s['seq_len']}, batch {s['batch']}, "
                f"{s['steps']} updates, Adam, clip 1.0, {tuned}; BN gamma 0.1, LN gamma 1; seeds {ctx.seed_list}. "
                + PAPERS)

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n, "lr": lr} for n in NORMS for lr in self.lrs(ctx)),
                         data=charlm_data(ctx), **self.sizes(ctx))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        # The full profile's learning-rate grid is this claim's own experiment axis (see lrs()): no second search.
        return [charlm_plan(ctx, s, tune_lr=False, eval_every=s["eval_every"], lr=s["lr"],
                            gamma_init=0.1 if s["norm"] == "batch" else None)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        summary, rec, _ = train_run(self.train_plans(exp, ctx)[0])
        evals = [e for e in rec.evals if e.get("split") == "valid"]
        return {"test_bpc": summary["test_bpc"], "valid_bpc": summary["valid_bpc"], "diverged": summary["diverged"],
                "steps": summary["steps"], "loss_curve": curve(rec.losses),
                "valid_curve": [[e["step"], e["bpc"]] for e in evals]}

    @staticmethod
    def _finite(x: float) -> float:
        return x if x is not None and math.isfinite(x) else float("inf")

    def best_lr(self, records: list[Record]) -> dict:
        """Per norm, the learning rate with the lowest mean valid BPC (a diverged run counts as infinitely bad)."""
        best = {}
        for norm in NORMS:
            lrs = sorted({r.key["lr"] for r in records if r.key["norm"] == norm})
            score = {lr: sum(self._finite(r.result["valid_bpc"]) for r in records
                             if r.key["norm"] == norm and r.key["lr"] == lr) for lr in lrs}
            if score:
                best[norm] = min(lrs, key=lambda lr: score[lr])
        return best

    def _test(self, records: list[Record], norm: str, lr: float) -> list[float]:
        return [r.result["test_bpc"] for r in records if r.key["norm"] == norm and r.key["lr"] == lr]

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        best = self.best_lr(records)
        test = {n: self._test(records, n, best[n]) for n in NORMS}
        subs = {n: compare(test[n], test["none"], higher_is_better=False) for n in ("batch", "layer")}  # > 0: better

        def status(c: dict) -> str:
            if c["diff"] > MARGIN and c["z"] > 2:
                return "holds"
            if c["diff"] <= 0 or (math.isfinite(c["se"]) and c["diff"] + 2 * c["se"] <= MARGIN):
                return "fails"
            return "unclear"

        st = {n: status(c) for n, c in subs.items()}
        numbers = {"best_lr": best, "test_bpc": {n: mean(v) for n, v in test.items()}, "bn_vs_none": subs["batch"],
                   "ln_vs_none": subs["layer"], "status": st}
        effect = (f"test BPC LSTM {mean(test['none']):.3f}, BN {mean(test['batch']):.3f} "
                  f"({-subs['batch']['diff']:+.3f} ± {subs['batch']['se']:.3f}), LN {mean(test['layer']):.3f} "
                  f"({-subs['layer']['diff']:+.3f} ± {subs['layer']['se']:.3f})")
        words = {"holds": "beats", "fails": "does not beat", "unclear": "may beat"}
        reason = f"BN {words[st['batch']]} the plain LSTM; LN {words[st['layer']]} it (margin {MARGIN} BPC)."
        if st["batch"] == st["layer"] == "holds":
            return Verdict("supported", effect, reason, numbers)
        if st["batch"] == st["layer"] == "fails":
            return Verdict("refuted", effect, reason, numbers)
        if set(st.values()) == {"holds", "fails"}:
            return Verdict("depends", effect, reason + " The claim holds for one normalization only.", numbers)
        return Verdict("inconclusive", effect, reason + " Some difference is within the seed-to-seed spread.", numbers)

    def table(self, records: list[Record]):
        best = self.best_lr(records)
        rows = []
        for norm in NORMS:
            for lr in sorted({r.key["lr"] for r in records if r.key["norm"] == norm}):
                recs = [r for r in records if r.key["norm"] == norm and r.key["lr"] == lr]
                rows.append([LABELS[norm], f"{lr:g}" + (" (picked)" if best.get(norm) == lr else ""),
                             fmt([r.result["valid_bpc"] for r in recs]), fmt([r.result["test_bpc"] for r in recs])])
        rows.append(["published (PTB, not this data)", "–", "–", "LSTM 1.38 / BN 1.32 (Cooijmans); LSTM 1.312 / "
                                                                  "LN 1.267 (Ha et al.)"])
        return ["model", "learning rate", "valid BPC", "test BPC"], rows

    def figure(self, records: list[Record], ax) -> None:
        best = self.best_lr(records)
        for norm in NORMS:
            if norm not in best:
                continue
            curves = [r.result["valid_curve"] for r in records if r.key["norm"] == norm and r.key["lr"] == best[norm]]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)]
            ax.plot(steps, [mean([c[i][1] for c in curves]) for i in range(n)], marker="o", markersize=3,
                    label=f"{LABELS[norm]} (lr {best[norm]:g})")
        ax.set_xlabel("updates")
        ax.set_ylabel("valid bits per character")
        ax.legend()

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if not n:
            return {}
        t = n["test_bpc"]
        return {"Language modelling (BPC)": {
            "BN": f"test BPC {t['batch']:.3f} vs plain LSTM {t['none']:.3f}",
            "LN": f"test BPC {t['layer']:.3f} vs plain LSTM {t['none']:.3f}"}}


CLAIM = LanguageModelling()
