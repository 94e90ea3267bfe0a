"""C10 RMSNorm vs LN, and pre-norm residual stacks: RMSNorm matches LN at lower cost; pre-norm residual stacks train
deeper recurrent stacks better.

Three parts, each measured on its own:

* quality: a one-layer character LM (shakespeare) with RMSNorm and with LN, same initialisation seed, data order
  and number of updates; metric valid bits per character.
* cost: the time of one training step (forward and backward of an LSTM layer) with RMSNorm and with LN, measured
  in the same process in interleaved pairs (alternating which goes first), on the fused backend (what users run)
  and, for reference, the per-step reference loop. Metric: the time ratio RMS / LN.
* depth: a 4-layer (full: 8) LN-LSTM character LM without and with the library's pre-norm residual connections,
  same budget; metric valid bits per character.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from ...data import load_charlm
from ...layers import LSTM
from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, plan, train_run
from ..stats import compare, equivalent, fmt, group, mean, sem

QUALITY_MARGIN = 0.03  # bits per character: smaller differences are not worth a claim
DEPTH_MARGIN = 0.03
COST_MARGIN = 0.03  # "cheaper" means at least 3% less time per step

_SUBSETS: dict = {}
_TMP: Optional[tempfile.TemporaryDirectory] = None


def charlm_source(ctx: StudyContext, chars: Optional[int]) -> str:
    """The char-LM data of a run: the user's text, the whole shakespeare corpus (full), or for quick/smoke the
    first ``chars`` characters of shakespeare written once per process to a temporary file (so each run does not
    re-read the 4.5 M-character corpus; the 90/5/5 split is then of that prefix)."""
    global _TMP
    if ctx.text:
        return ctx.text
    if ctx.profile == "full" or chars is None:
        return "shakespeare"
    key = (ctx.data_dir, chars)
    if key not in _SUBSETS or not Path(_SUBSETS[key]).is_file():
        corpus = load_charlm("shakespeare", data_dir=ctx.data_dir, max_chars=chars)
        ids = torch.cat([corpus.train, corpus.valid, corpus.test]).tolist()
        itos = [" "] + corpus.vocab.itos[1:]  # a character of valid/test unseen in train becomes a space
        text = "".join(itos[i] for i in ids)
        if _TMP is None:
            _TMP = tempfile.TemporaryDirectory(prefix="normrnn-study-")
        path = Path(_TMP.name) / f"shakespeare-{chars}.txt"
        path.write_text(text, encoding="utf-8")
        _SUBSETS[key] = str(path)
    return _SUBSETS[key]


def charlm_plan_data(ctx: StudyContext, chars: Optional[int]) -> dict:
    """The ``data`` and ``source`` options of :func:`~normrnn.study.experiments.plan` for :func:`charlm_source`: a
    name or the user's file as is, a shakespeare prefix as its label, written when the run starts."""
    if ctx.text or ctx.profile == "full" or chars is None:
        return {"data": charlm_source(ctx, chars)}
    return {"data": f"shakespeare[:{chars}]", "source": lambda: charlm_source(ctx, chars)}


def describe_charlm(ctx: StudyContext, chars: Optional[int]) -> str:
    if ctx.text:
        return f"your text {ctx.text}"
    return "shakespeare" if ctx.profile == "full" else f"shakespeare (first {chars:,} characters, 90/5/5 split)"


def step_time_ratios(hidden: int, steps: int, batch: int, pairs: int, backend: str, seed: int) -> dict:
    """Interleaved timings of a forward+backward pass with LN and with RMSNorm: per-pair ratios RMS/LN."""
    torch.manual_seed(seed)
    x = torch.randn(batch, steps, hidden)
    layers = {}
    for norm in ("layer", "rms"):
        torch.manual_seed(seed)
        layers[norm] = LSTM(hidden, hidden, batch_first=True, norm=norm, backend=backend)

    def one(norm: str) -> float:
        t0 = time.perf_counter()
        out, _ = layers[norm](x)
        out.sum().backward()
        return time.perf_counter() - t0

    for norm in layers:  # warm-up (allocations, kernel build)
        one(norm)
        one(norm)
    ratios, t_ln, t_rms = [], [], []
    for i in range(pairs):
        order = ("layer", "rms") if i % 2 == 0 else ("rms", "layer")
        t = {norm: one(norm) for norm in order}
        ratios.append(t["rms"] / t["layer"])
        t_ln.append(t["layer"])
        t_rms.append(t["rms"])
    return {"ratios": ratios, "ms_layer": 1000 * sorted(t_ln)[len(t_ln) // 2],
            "ms_rms": 1000 * sorted(t_rms)[len(t_rms) // 2], "engine": layers["layer"].active_backend()}


def _status(holds: bool, fails: bool) -> str:
    return "holds" if holds else ("fails" if fails else "unclear")


class RmsResidual(Claim):
    id = "C10"
    title = "RMSNorm vs LN, and residual stacks"
    statement = ("RMSNorm matches layer norm at lower cost; pre-norm residual stacks train deeper recurrent stacks "
                 "better.")
    hypothesis = ("(a) an RMSNorm char-LM reaches the same valid bits per character as an LN one (within a margin); "
                  "(b) an RMSNorm training step takes less time than an LN one; (c) a deep LN stack with pre-norm "
                  "residual connections reaches a lower valid bpc than the same stack without, at the same budget.")
    metric = ("valid bits per character (a, c) after a fixed number of updates; time ratio RMS / LN per training "
              "step (b)")
    rule = (f"(a) holds if |RMS - LN| in valid bpc plus 2 standard errors is within {QUALITY_MARGIN} bpc, fails if LN "
            f"is better by more than {QUALITY_MARGIN} and 2 standard errors; (b) holds if RMS's step takes at least "
            f"{COST_MARGIN:.0%} less time (mean ratio over interleaved pairs on the fused backend) and the ratio's "
            f"2-standard-error upper bound is below 1, fails if its 2-standard-error lower bound is above "
            f"{1 - COST_MARGIN:.2f}; (c) holds if the residual stack's valid bpc is lower by more than "
            f"{DEPTH_MARGIN} and 2 standard errors, fails if it is not lower or within {DEPTH_MARGIN} of the plain "
            f"stack's. Supported if all three hold; refuted if all three fail; depends if some hold and some fail; "
            f"inconclusive otherwise.")

    paper_deviations = {
        "hidden": "256 units: RMS vs LN and residual vs plain are compared within one smaller model, and the depth "
                  "part stacks 8 such layers (8 × 1000 units would take days on a CPU)",
        "batch_size": "32, as the claim's other profiles (the comparison is within one batch size)",
        "lr": "3e-3, the claim's rate in every profile; the search tries 1.5e-3 / 3e-3 / 6e-3 per variant"}

    # ------------------------------------------------------------------------------------------ sizes

    def sizes(self, ctx: StudyContext) -> dict:
        return {
            "chars": ctx.pick(60_000, 440_000, None), "limit": ctx.pick(50_000, 400_000, None),
            "eval_limit": ctx.pick(3_000, 20_000, 200_000),
            "hidden": ctx.pick(16, 64, 256), "batch": ctx.pick(8, 16, 32), "seq_len": ctx.pick(20, 50, 100),
            "steps": ctx.pick(10, 200, 3000),
            "deep_layers": ctx.pick(2, 4, 8), "deep_hidden": ctx.pick(16, 48, 256),
            "deep_seq_len": ctx.pick(20, 32, 100),
            "deep_steps": ctx.pick(10, 200, 3000),
            "cost_hidden": ctx.pick(32, 128, 256), "cost_steps": ctx.pick(10, 50, 100),
            "cost_batch": ctx.pick(8, 32, 64),
            "cost_pairs": ctx.pick(3, 12, 50), "cost_pairs_reference": ctx.pick(2, 4, 20),
        }

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"(a) one-layer LSTM char-LM, {s['hidden']} units, on {describe_charlm(ctx, s['chars'])}, "
                f"{s['steps']} updates of {s['batch']}×{s['seq_len']} characters, Adam 3e-3, RMS vs LN; "
                f"(b) one LSTM layer of {s['cost_hidden']} units on {s['cost_batch']} sequences of {s['cost_steps']} "
                f"steps, forward+backward, {s['cost_pairs']} interleaved pairs (fused), {s['cost_pairs_reference']} "
                f"(reference loop) per seed; (c) {s['deep_layers']}-layer LN-LSTM char-LM, {s['deep_hidden']} units, "
                f"{s['deep_steps']} updates of {s['batch']}×{s['deep_seq_len']}, without and with pre-norm residual "
                f"connections. Seeds {ctx.seed_list}.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        s = self.sizes(ctx)
        data = ctx.text or ("shakespeare" if ctx.profile == "full" else f"shakespeare[:{s['chars']}]")
        common = {"claim": self.id, "profile": ctx.profile, "data": data, **s}
        exps = []
        for seed in ctx.seed_list:
            for norm in ("layer", "rms"):
                key = {"part": "quality", "norm": norm, "residual": False, "seed": seed}
                exps.append(Experiment(key, {**key, **common}))
            for residual in (False, True):
                key = {"part": "depth", "norm": "layer", "residual": residual, "seed": seed}
                exps.append(Experiment(key, {**key, **common}))
            key = {"part": "cost", "norm": "layer|rms", "residual": False, "seed": seed}
            exps.append(Experiment(key, {**key, **common}))
        return exps

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s, k = exp.spec, exp.key
        if k["part"] == "cost":
            return []  # timings of one layer, no training
        deep = k["part"] == "depth"
        return [plan(ctx, task="charlm", **charlm_plan_data(ctx, s["chars"]), norm=k["norm"], residual=k["residual"],
                     layers=s["deep_layers"] if deep else 1, hidden=s["deep_hidden"] if deep else s["hidden"],
                     batch_size=s["batch"], seq_len=s["deep_seq_len"] if deep else s["seq_len"],
                     max_steps=s["deep_steps"] if deep else s["steps"], limit=s["limit"], eval_limit=s["eval_limit"],
                     seed=k["seed"], lr=3e-3, clip=1.0)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        s, k = exp.spec, exp.key
        if k["part"] == "cost":
            fused = step_time_ratios(s["cost_hidden"], s["cost_steps"], s["cost_batch"], s["cost_pairs"], "auto",
                                     k["seed"])
            ref = step_time_ratios(s["cost_hidden"], s["cost_steps"], s["cost_batch"], s["cost_pairs_reference"],
                                   "reference", k["seed"])
            return {"ratios_fused": fused["ratios"], "ratios_reference": ref["ratios"],
                    "ms_layer_fused": fused["ms_layer"], "ms_rms_fused": fused["ms_rms"],
                    "ms_layer_reference": ref["ms_layer"], "ms_rms_reference": ref["ms_rms"],
                    "engine": fused["engine"], "threads": torch.get_num_threads()}
        summary, rec, _ = train_run(self.train_plans(exp, ctx)[0])
        return {"valid_bpc": summary["valid_bpc"], "test_bpc": summary["test_bpc"], "diverged": summary["diverged"],
                "steps": summary["steps"], "params": summary["params"], "loss_curve": curve(rec.losses)}

    # ------------------------------------------------------------------------------------------ analysis

    @staticmethod
    def _bpc(records: list[Record], part: str) -> dict:
        return group([r for r in records if r.key["part"] == part],
                     lambda k: k["norm"] if part == "quality" else k["residual"], lambda r: r["valid_bpc"])

    @staticmethod
    def _ratios(records: list[Record], backend: str) -> list[float]:
        return [x for r in records if r.key["part"] == "cost" for x in r.result[f"ratios_{backend}"]]

    @staticmethod
    def _ratio_stats(ratios: list[float]) -> dict:
        """Mean ratio (geometric) and its 2-standard-error bounds, on the log scale."""
        logs = [math.log(x) for x in ratios if x > 0 and math.isfinite(x)]
        m, se = mean(logs), sem(logs) if len(logs) > 1 else math.inf
        return {"ratio": math.exp(m), "low": math.exp(m - 2 * se), "high": math.exp(m + 2 * se), "n": len(logs)}

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        q, d = self._bpc(records, "quality"), self._bpc(records, "depth")
        cq = compare(q["rms"], q["layer"], higher_is_better=False)  # positive: RMS better
        cd = compare(d[True], d[False], higher_is_better=False)  # positive: residual better
        cost = self._ratio_stats(self._ratios(records, "fused"))
        ref = self._ratio_stats(self._ratios(records, "reference"))
        quality = _status(equivalent(cq, QUALITY_MARGIN), -cq["diff"] > QUALITY_MARGIN and -cq["z"] > 2)
        cheaper = _status(cost["ratio"] < 1 - COST_MARGIN and cost["high"] < 1, cost["low"] > 1 - COST_MARGIN)
        depth = _status(cd["diff"] > DEPTH_MARGIN and cd["z"] > 2, cd["diff"] <= 0 or equivalent(cd, DEPTH_MARGIN))
        parts = {"quality": quality, "cost": cheaper, "residual": depth}
        numbers = {"quality": cq, "depth": cd, "cost_fused": cost, "cost_reference": ref, "parts": parts}
        effect = (f"RMS - LN valid bpc {-cq['diff']:+.3f} (± {cq['se']:.3f}); step time RMS/LN ×{cost['ratio']:.2f} "
                  f"fused, ×{ref['ratio']:.2f} reference; residual - plain bpc {-cd['diff']:+.3f} (± {cd['se']:.3f})")
        words = {"quality": {"holds": "RMS matches LN's bpc", "fails": "RMS is worse than LN",
                             "unclear": "RMS vs LN quality is within the spread but not shown equivalent"},
                 "cost": {"holds": "RMS is cheaper per step", "fails": "RMS is not cheaper per step",
                          "unclear": "the cost difference is within the timing noise"},
                 "residual": {"holds": "residual connections help the deep stack",
                              "fails": "residual connections do not help the deep stack",
                              "unclear": "the residual effect is within the spread"}}
        reason = "; ".join(words[p][v] for p, v in parts.items()) + "."
        values = list(parts.values())
        if all(v == "holds" for v in values):
            return Verdict("supported", effect, reason, numbers)
        if all(v == "fails" for v in values):
            return Verdict("refuted", effect, reason, numbers)
        if "holds" in values and "fails" in values:
            return Verdict("depends", effect, "Only some parts hold: " + reason, numbers)
        return Verdict("inconclusive", effect, reason, numbers)

    def table(self, records: list[Record]):
        q, d = self._bpc(records, "quality"), self._bpc(records, "depth")
        cost = [r for r in records if r.key["part"] == "cost"]
        rows = [["(a) 1-layer, LN", fmt(q.get("layer", [])), "–"], ["(a) 1-layer, RMS", fmt(q.get("rms", [])), "–"],
                ["(c) deep LN, plain", fmt(d.get(False, [])), "–"], ["(c) deep LN, pre-norm residual",
                                                                   fmt(d.get(True, [])), "–"]]
        for backend in ("fused", "reference"):
            if cost:
                st = self._ratio_stats(self._ratios(records, backend))
                ms_l = mean([r.result[f"ms_layer_{backend}"] for r in cost])
                ms_r = mean([r.result[f"ms_rms_{backend}"] for r in cost])
                name = f"{backend} ({cost[0].result['engine']})" if backend == "fused" else backend
                rows.append([f"(b) step time, {name}", f"LN {ms_l:.1f} ms, RMS {ms_r:.1f} ms",
                             f"×{st['ratio']:.3f} [{st['low']:.3f}, {st['high']:.3f}]"])
        return ["setting", "valid bpc / median step time", "RMS/LN time ratio (2 SE)"], rows

    def figure(self, records: list[Record], ax) -> None:
        q, d = self._bpc(records, "quality"), self._bpc(records, "depth")
        labels = ["LN", "RMS", "deep plain", "deep residual"]
        values = [q.get("layer", []), q.get("rms", []), d.get(False, []), d.get(True, [])]
        xs = range(len(labels))
        ax.bar(xs, [mean(v) for v in values], yerr=[sem(v) if len(v) > 1 else 0 for v in values], capsize=3,
               color=["tab:orange", "tab:green", "tab:gray", "tab:blue"])
        for x, v in zip(xs, values):
            ax.plot([x] * len(v), v, "k.", alpha=0.6)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels)
        ax.set_ylabel("valid bits per character")
        lo = min((min(v) for v in values if v), default=0)
        hi = max((max(v) for v in values if v), default=1)
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            ax.set_ylim(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo))
        st = self._ratio_stats(self._ratios(records, "fused"))
        if st["n"]:
            ax.set_title(f"step time RMS/LN: ×{st['ratio']:.2f} (fused)", fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        n = verdict.numbers
        if not n:
            return {}
        q = self._bpc(records, "quality")
        d = self._bpc(records, "depth")
        return {
            "Cost per step": {"LN": "reference (×1.00)",
                              "RMS": f"×{n['cost_fused']['ratio']:.2f} of LN's step time (fused kernels), "
                                     f"×{n['cost_reference']['ratio']:.2f} (reference loop)"},
            "Quality vs LN": {"LN": f"valid bpc {mean(q['layer']):.3f}",
                              "RMS": f"valid bpc {mean(q['rms']):.3f} ({-n['quality']['diff']:+.3f} vs LN)"},
            "Deep stacks: pre-norm residual": {"LN": f"valid bpc {mean(d[True]):.3f} with vs {mean(d[False]):.3f} "
                                                     f"without"},
        }


CLAIM = RmsResidual()
