"""C10 RMSNorm vs LN, and pre-norm residual stacks: RMSNorm matches LN at lower cost; pre-norm residual stacks train
deeper recurrent stacks better.

Three claims, each with its own verdict (C10a quality, C10b cost, C10c residual stacks):

* quality: a one-layer character LM (shakespeare) with RMSNorm and with LN, same initialisation seed, data order
  and number of updates; metric valid bits per character.
* cost: the time of one training step (forward and backward of an LSTM layer) with RMSNorm and with LN, measured
  in the same process in interleaved pairs (alternating which goes first), in normrnn's kernels (the fused backend
  users run, and its per-step reference loop) and in plain PyTorch (a hand-written LSTM loop with
  ``F.layer_norm`` vs ``F.rms_norm`` on the gate pre-activations). Metric: the time ratio RMS / LN.
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
import torch.nn.functional as F

from ..stats import (ABSENT, CHARLM_TRAINED_BPC, CONTRADICTED, HOLDS, INCONCLUSIVE, NOT_SHOWN, OPPOSITE, SUPPORTED,
                     fmt, group, interval, label_for, mean, paired, per_seed, sem, status)

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


def plain_step_time_ratios(hidden: int, steps: int, batch: int, pairs: int, seed: int) -> dict:
    """The same interleaved timing in plain PyTorch, without normrnn: an LSTM written as a loop over steps whose
    four gate pre-activations are normalized by ``F.layer_norm`` or ``F.rms_norm`` (same weights, same input)."""
    torch.manual_seed(seed)
    x = torch.randn(batch, steps, hidden)
    w_ih = torch.nn.Parameter(torch.randn(4 * hidden, hidden) / hidden ** 0.5)
    w_hh = torch.nn.Parameter(torch.randn(4 * hidden, hidden) / hidden ** 0.5)
    gain, bias = torch.nn.Parameter(torch.ones(4 * hidden)), torch.nn.Parameter(torch.zeros(4 * hidden))

    def norm(z, kind):
        if kind == "layer":
            return F.layer_norm(z, (4 * hidden,), gain, bias)
        return F.rms_norm(z, (4 * hidden,), gain) + bias

    def one(kind: str) -> float:
        t0 = time.perf_counter()
        h = c = torch.zeros(batch, hidden)
        outs = []
        for t in range(steps):
            z = norm(x[:, t] @ w_ih.t() + h @ w_hh.t(), kind)
            i, f, g, o = z.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        torch.stack(outs, 1).sum().backward()
        return time.perf_counter() - t0

    for kind in ("layer", "rms"):
        one(kind)
        one(kind)
    ratios, t_ln, t_rms = [], [], []
    for i in range(pairs):
        order = ("layer", "rms") if i % 2 == 0 else ("rms", "layer")
        t = {kind: one(kind) for kind in order}
        ratios.append(t["rms"] / t["layer"])
        t_ln.append(t["layer"])
        t_rms.append(t["rms"])
    return {"ratios": ratios, "ms_layer": 1000 * sorted(t_ln)[len(t_ln) // 2],
            "ms_rms": 1000 * sorted(t_rms)[len(t_rms) // 2]}


class RmsResidual(Claim):
    """The shared experiments and tables of C10's three claims (C10a/b/c below, each with its own verdict)."""

    id = "C10"
    part = ""  # quality / cost / depth: which experiments this claim runs and judges
    title = "RMSNorm vs LN, and residual stacks"
    statement = ("RMSNorm matches layer norm at lower cost; pre-norm residual stacks train deeper recurrent stacks "
                 "better.")
    hypothesis = ("(a) an RMSNorm char-LM reaches the same valid bits per character as an LN one (within a margin); "
                  "(b) an RMSNorm training step takes less time than an LN one; (c) a deep LN stack with pre-norm "
                  "residual connections reaches a lower valid bpc than the same stack without, at the same budget.")
    metric = ("valid bits per character (a, c) after a fixed number of updates; time ratio RMS / LN per training "
              "step (b)")
    paper_deviations = {
        "hidden": "256 units: RMS vs LN and residual vs plain are compared within one smaller model, and the depth "
                  "part stacks 8 such layers (8 × 1000 units would take days on a CPU)",
        "batch_size": "32, as the claim's other profiles (the comparison is within one batch size)",
        "lr": "3e-3, the claim's rate in every profile; the search tries 1.5e-3 / 3e-3 / 6e-3 per variant"}

    # ------------------------------------------------------------------------------------------ sizes

    def sizes(self, ctx: StudyContext) -> dict:
        return {
            "chars": ctx.pick(60_000, 440_000, None, standard=1_100_000),
            "limit": ctx.pick(50_000, 400_000, None, standard=1_000_000),
            "eval_limit": ctx.pick(3_000, 20_000, 200_000, standard=50_000),
            "hidden": ctx.pick(16, 64, 256, standard=128), "batch": ctx.pick(8, 16, 32, standard=32),
            "seq_len": ctx.pick(20, 50, 100, standard=50),
            "steps": ctx.pick(10, 200, 3000, standard=1500),
            "deep_layers": ctx.pick(2, 4, 8, standard=4), "deep_hidden": ctx.pick(16, 48, 256, standard=64),
            "deep_seq_len": ctx.pick(20, 32, 100, standard=50),
            "deep_steps": ctx.pick(10, 200, 3000, standard=1500),
            "cost_hidden": ctx.pick(32, 128, 256, standard=128), "cost_steps": ctx.pick(10, 50, 100, standard=50),
            "cost_batch": ctx.pick(8, 32, 64, standard=32),
            "cost_pairs": ctx.pick(3, 12, 50, standard=20), "cost_pairs_reference": ctx.pick(2, 4, 20, standard=6),
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
        common = {"claim": "C10", "profile": ctx.profile, "data": data, **s}
        exps = []
        for seed in ctx.seed_list:
            for norm in ("layer", "rms"):
                key = {"part": "quality", "norm": norm, "residual": False, "seed": seed}
                exps.append(Experiment(key, {**key, **common}))
            for residual in (False, True):
                key = {"part": "depth", "norm": "layer", "residual": residual, "seed": seed}
                exps.append(Experiment(key, {**key, **common}))
            key = {"part": "cost", "norm": "layer|rms", "residual": False, "seed": seed}
            exps.append(Experiment(key, {**key, **common, "timings": "fused+reference+plain"}))
        return [e for e in exps if not self.part or e.key["part"] == self.part]

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
            plain = plain_step_time_ratios(s["cost_hidden"], s["cost_steps"], s["cost_batch"], s["cost_pairs"],
                                           k["seed"])
            return {"ratios_fused": fused["ratios"], "ratios_reference": ref["ratios"], "ratios_plain": plain["ratios"],
                    "ms_layer_plain": plain["ms_layer"], "ms_rms_plain": plain["ms_rms"],
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
        return [x for r in records if r.key["part"] == "cost" for x in r.result.get(f"ratios_{backend}", [])]

    @staticmethod
    def _ratio_stats(ratios: list[float]) -> dict:
        """Mean ratio (geometric) and its 95% t interval over the pairs, on the log scale."""
        logs = [math.log(x) for x in ratios if x > 0 and math.isfinite(x)]
        c = interval(logs)
        return {"ratio": math.exp(c.diff) if c.n else float("nan"), "low": math.exp(c.low), "high": math.exp(c.high),
                "n": c.n, "log": c}

    def _charlm_scale(self, records: list[Record], part: str) -> tuple[bool, str]:
        bpc = max((mean(v) for v in self._bpc(records, part).values()), default=float("nan"))
        return bpc <= CHARLM_TRAINED_BPC, (f"the worst arm's mean valid BPC {bpc:.2f} (a trained small char-LM: ≤ "
                                           f"{CHARLM_TRAINED_BPC})")

    def table(self, records: list[Record]):
        q, d = self._bpc(records, "quality"), self._bpc(records, "depth")
        cost = [r for r in records if r.key["part"] == "cost"]
        rows = [["(a) 1-layer, LN", fmt(q.get("layer", [])), "–"], ["(a) 1-layer, RMS", fmt(q.get("rms", [])), "–"],
                ["(c) deep LN, plain", fmt(d.get(False, [])), "–"], ["(c) deep LN, pre-norm residual",
                                                                   fmt(d.get(True, [])), "–"]]
        for backend in ("fused", "reference", "plain"):
            if cost and self._ratios(records, backend):
                st = self._ratio_stats(self._ratios(records, backend))
                ms_l = mean([r.result[f"ms_layer_{backend}"] for r in cost])
                ms_r = mean([r.result[f"ms_rms_{backend}"] for r in cost])
                name = {"fused": f"normrnn fused ({cost[0].result['engine']})", "reference": "normrnn reference loop",
                        "plain": "plain PyTorch loop (F.layer_norm / F.rms_norm)"}[backend]
                rows.append([f"(b) step time, {name}", f"LN {ms_l:.1f} ms, RMS {ms_r:.1f} ms",
                             f"×{st['ratio']:.3f} [{st['low']:.3f}, {st['high']:.3f}] (n = {st['n']} pairs)"])
        rows = [r for r in rows if r[1] != "–"]
        return ["setting", "valid bpc (mean ± SD) / median step time", "RMS/LN time ratio (95% CI)"], rows

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
        return {}


class RmsQuality(RmsResidual):
    id = "C10a"
    part = "quality"
    title = "RMSNorm matches LN"
    statement = "RMSNorm matches layer norm in quality."
    hypothesis = "An RMSNorm char-LM reaches the same valid bits per character as an LN one, within 0.03 BPC."
    metric = "valid bits per character after a fixed number of updates"
    primary = ("per seed, LN minus RMS valid BPC: an equivalence claim, supported when the 95% t interval lies within "
               "±0.03 BPC (or above it: RMS at least as good)")
    measured = "measured: the quality of RMS vs LN on the same one-layer char-LM, paired by seed"
    rule = (f"supported if the RMS - LN difference's 95% CI lies within ±{QUALITY_MARGIN} BPC (or RMS is better by "
            f"more); contradicted here if RMS is worse with a CI beyond {QUALITY_MARGIN}; inconclusive otherwise. "
            f"Scale check: both arms reached {CHARLM_TRAINED_BPC} valid BPC.")

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        arm = lambda n: per_seed(records, lambda r: r["valid_bpc"], lambda k: k["norm"] == n)  # noqa: E731
        cq = paired(arm("rms"), arm("layer"), higher_is_better=False)  # positive: RMS better
        part = status(cq, QUALITY_MARGIN)
        numbers = {"quality": cq.to_dict(), "status": part}
        effect = f"LN - RMS valid BPC {cq.text(unit='BPC')} (positive: RMS better)"
        if part in (ABSENT, HOLDS):
            return Verdict(SUPPORTED, effect, f"RMS's valid BPC is within {QUALITY_MARGIN} of LN's or better (95% "
                                              f"CI).", numbers)
        if part == OPPOSITE:
            return Verdict(CONTRADICTED, effect, f"RMS is worse than LN by more than {QUALITY_MARGIN} BPC.", numbers)
        return Verdict(INCONCLUSIVE, effect, "The interval is too wide to show a match or a gap.", numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        return self._charlm_scale(records, "quality")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        q = self._bpc(records, "quality")
        if "quality" not in verdict.numbers:
            return {}
        return {"Quality vs LN": {"LN": f"valid bpc {mean(q['layer']):.3f}",
                                  "RMS": f"valid bpc {mean(q['rms']):.3f} "
                                         f"({-verdict.numbers['quality']['diff']:+.3f} vs LN)"}}


class RmsCost(RmsResidual):
    id = "C10b"
    part = "cost"
    paper_deviations: dict = {}  # timings of one layer: no training, so no paper set-up to depart from
    title = "RMSNorm is cheaper than LN"
    statement = "RMSNorm is cheaper than layer norm."
    hypothesis = ("A training step (forward + backward of an LSTM layer) with RMSNorm takes at least 3% less time than "
                  "with LN: in normrnn's fused kernels, and in plain PyTorch.")
    metric = "time ratio RMS / LN per training step, in interleaved pairs"
    primary = ("per interleaved pair in normrnn's fused kernels, -log(RMS / LN time): the 95% t interval's lower "
               "bound must clear -log 0.97 (3% cheaper)")
    measured = ("measured: step times in normrnn's own kernels (the primary test: what normrnn's users run) and in "
                "plain PyTorch (reported beside it: what the claim says in general)")
    rule = (f"supported if RMS's step is at least {COST_MARGIN:.0%} cheaper in normrnn's fused kernels (95% CI of the "
            f"log ratio below log {1 - COST_MARGIN:.2f}); contradicted here if it is at least {COST_MARGIN:.0%} more "
            f"expensive; not shown here if the ratio's CI lies within "
            f"×{1 - COST_MARGIN:.2f}–×{1 / (1 - COST_MARGIN):.2f}; "
            "inconclusive otherwise. The plain PyTorch ratio is measured and reported the same way. Timings on a "
            "shared machine are noisy: the interval is over pairs.")

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        margin = -math.log(1 - COST_MARGIN)
        st = {b: self._ratio_stats(self._ratios(records, b)) for b in ("fused", "reference", "plain")}
        cheaper = {b: interval([-x for x in v["log"].diffs]) for b, v in st.items()}  # > 0: RMS cheaper
        part = status(cheaper["fused"], margin)
        plain = status(cheaper["plain"], margin) if cheaper["plain"].n else "unmeasured"
        numbers = {"cost_fused": {k: v for k, v in st["fused"].items() if k != "log"},
                   "cost_reference": {k: v for k, v in st["reference"].items() if k != "log"},
                   "cost_plain": {k: v for k, v in st["plain"].items() if k != "log"}, "status": part,
                   "status_plain": plain}
        fmt_r = lambda v: (f"×{v['ratio']:.3f} (95% CI ×{v['low']:.3f}–×{v['high']:.3f}, n = {v['n']} pairs)"  # noqa
                           if v["n"] else "not measured")
        effect = (f"step time RMS/LN in normrnn's fused kernels {fmt_r(st['fused'])}; in normrnn's reference loop "
                  f"{fmt_r(st['reference'])}; in plain PyTorch {fmt_r(st['plain'])}")
        words = {"holds": "cheaper", "opposite": "dearer", "absent": "about as fast", "unclear": "not clearly cheaper",
                 "unmeasured": "not measured"}
        reason = (f"In normrnn's kernels RMS is {words[part]}; in plain PyTorch it is {words[plain]} (margin "
                  f"{COST_MARGIN:.0%}).")
        return Verdict(label_for(part), effect, reason, numbers)

    def scale_text(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"one LSTM layer of {s['cost_hidden']} units × {s['cost_steps']} steps × batch {s['cost_batch']}, "
                f"{s['cost_pairs']} timed pairs × {ctx.seeds} seed{'s' if ctx.seeds != 1 else ''}, on this machine "
                f"({ctx.profile} profile)")

    def figure(self, records: list[Record], ax) -> None:
        names = {"fused": "normrnn fused", "reference": "normrnn reference", "plain": "plain PyTorch"}
        for x, (b, name) in enumerate(names.items()):
            r = self._ratios(records, b)
            ax.plot([x] * len(r), r, "k.", alpha=0.5)
            if r:
                st = self._ratio_stats(r)
                ax.errorbar([x], [st["ratio"]], yerr=[[st["ratio"] - st["low"]], [st["high"] - st["ratio"]]],
                            fmt="o", color="tab:red", capsize=4)
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.axhline(1 - COST_MARGIN, color="grey", linestyle=":", linewidth=1, label=f"{COST_MARGIN:.0%} cheaper")
        ax.set_xticks(range(len(names)), list(names.values()))
        ax.set_ylabel("step time RMS / LN (pairs; mean and 95% CI)")
        ax.legend(fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if "cost_fused" not in n:
            return {}
        plain = f", ×{n['cost_plain']['ratio']:.2f} (plain PyTorch)" if n["cost_plain"]["n"] else ""
        return {"Cost per step": {"LN": "reference (×1.00)",
                                  "RMS": f"×{n['cost_fused']['ratio']:.2f} of LN's step time (normrnn fused){plain}"}}


class ResidualDepth(RmsResidual):
    id = "C10c"
    part = "depth"
    title = "Pre-norm residual stacks train deeper"
    statement = "Pre-norm residual connections let deeper recurrent stacks train better."
    hypothesis = ("A deep LN stack with pre-norm residual connections reaches a lower valid bpc than the same stack "
                  "without, at the same budget.")
    metric = "valid bits per character after a fixed number of updates"
    primary = (f"per seed, plain minus residual valid BPC: the 95% t interval's lower bound must clear {DEPTH_MARGIN} "
               f"BPC")
    measured = "measured: the deep LN stack with and without pre-norm residual connections, paired by seed"
    rule = (f"supported if the residual stack's valid BPC is lower with a 95% CI above {DEPTH_MARGIN}; contradicted "
            f"here if higher beyond {DEPTH_MARGIN}; not shown here if within ±{DEPTH_MARGIN}; inconclusive otherwise. "
            f"Scale check: both stacks reached {CHARLM_TRAINED_BPC} valid BPC.")

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        arm = lambda res: per_seed(records, lambda r: r["valid_bpc"], lambda k: k["residual"] == res)  # noqa: E731
        cd = paired(arm(True), arm(False), higher_is_better=False)  # positive: residual better
        part = status(cd, DEPTH_MARGIN)
        numbers = {"depth": cd.to_dict(), "status": part}
        effect = f"plain - residual valid BPC {cd.text(unit='BPC')}"
        words = {SUPPORTED: "Residual connections help the deep stack.",
                 CONTRADICTED: "Residual connections hurt the deep stack.",
                 NOT_SHOWN: f"Residual connections change the deep stack's BPC by less than {DEPTH_MARGIN}."}
        label = label_for(part)
        return Verdict(label, effect, words.get(label, "The residual effect is within the spread."), numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        return self._charlm_scale(records, "depth")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        d = self._bpc(records, "depth")
        if "depth" not in verdict.numbers:
            return {}
        return {"Deep stacks: pre-norm residual": {"LN": f"valid bpc {mean(d[True]):.3f} with vs "
                                                         f"{mean(d[False]):.3f} without"}}


CLAIMS = [RmsQuality(), RmsCost(), ResidualDepth()]
CLAIM = CLAIMS[0]  # the module's first claim (``load_claims`` takes all three from CLAIMS)

