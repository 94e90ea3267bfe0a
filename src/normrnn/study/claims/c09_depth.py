"""C9 Depth: at initialisation, BN can make gradient norms grow geometrically with depth unless there are residual
connections.

Experiment: no training. Stacks of L = 1, 2, 4, 8 (full: up to 16) normrnn LSTM layers are built fresh at each
depth (the same initialisation seed, so a deeper stack shares its lower layers' weights with a shallower one) with
norm none / batch (the library's default gain 0.1, Cooijmans et al.) / batch with gain 1 (the textbook setting of
the mean-field analyses) / layer, each without and with the library's pre-norm residual connections. A fixed
random batch of sequences goes in (training mode, so batch norm uses batch statistics), the loss is a fixed random
projection of the top layer's output, and we measure the gradient norm of that loss with respect to the stack's
input (and to the first layer's input weights). Per independent draw (initialisation and input) we fit
log(grad norm) = log c + L·log λ by least squares; λ is the growth factor per layer.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ...layers import LSTM
from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..stats import (CONTRADICTED, HOLDS, INCONCLUSIVE, NOT_SHOWN, OPPOSITE, SUPPORTED, any_beats, fmt, group, interval,
                     mean, one_sample, sem, status)

# (label, norm, gamma_init): the norms compared; "batch_g1" is batch norm with gain 1 instead of the default 0.1
VARIANTS = (("none", "none", None), ("batch", "batch", None), ("batch_g1", "batch", 1.0), ("layer", "layer", None))
LABELS = {"none": "none", "batch": "BN (γ=0.1)", "batch_g1": "BN (γ=1)", "layer": "LN"}
BATCH_VARIANTS = ("batch", "batch_g1")
LAMBDA_MIN = 1.1  # "geometric growth" worth the name: at least 10% more gradient per layer


def fit_slope(depths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against depth: log λ."""
    ys = [math.log(max(v, 1e-300)) for v in values]
    mx, my = mean(depths), mean(ys)
    sxx = sum((d - mx) ** 2 for d in depths)
    return sum((d - mx) * (y - my) for d, y in zip(depths, ys)) / sxx if sxx > 0 else 0.0


def gradient_norms(norm: str, gamma: float | None, residual: bool, depth: int, draw: int, hidden: int, steps: int,
                   batch: int) -> tuple[float, float]:
    """Gradient norms (wrt the input, wrt the first layer's W_ih) of a random projection of a fresh stack's output."""
    gen = torch.Generator().manual_seed(10_007 * draw + 1)
    x = torch.randn(batch, steps, hidden, generator=gen).requires_grad_(True)
    proj = torch.randn(batch, steps, hidden, generator=gen)
    torch.manual_seed(draw)  # the same init seed at every depth: the deeper stack extends the shallower one
    stack = LSTM(hidden, hidden, num_layers=depth, batch_first=True, norm=norm, gamma_init=gamma,
                 residual=residual, max_steps=steps)
    stack.train()
    out, _ = stack(x)
    ((out * proj).sum() / batch).backward()
    return float(x.grad.norm()), float(stack.weight_ih_l0.grad.norm())


class Depth(Claim):
    id = "C9"
    title = "Depth at initialisation"
    statement = ("At initialisation, batch norm can make gradient norms grow geometrically with depth (c·λ^L) unless "
                 "the network has residual connections.")
    hypothesis = ("Without residual connections, the gradient norm of the loss with respect to the input of a stack of "
                  "BN-LSTM layers grows as c·λ^L with λ clearly above 1; with (pre-norm) residual connections the "
                  "growth disappears.")
    metric = ("λ = exp(slope of log ‖∂loss/∂input‖ against depth L), fitted per independent draw (initialisation and "
              "input batch); mean ± standard error over draws")
    primary = (f"some BN setting's log λ without residual connections (per draw) has a 95% lower bound above "
               f"log {LAMBDA_MIN} (Holm over the two BN settings), and for that setting the residual stack's slope is "
               f"lower per draw (95% CI above 0) with its λ's interval below {LAMBDA_MIN}")
    measured = ("measured at initialisation on fresh stacks (no training, so no training scale applies); draws pair "
                "the plain and the residual stack of the same initialisation and input")
    rule = (f"For each BN setting (default gain 0.1 and gain 1), growth: log λ without residual connections has a 95% "
            f"CI above log {LAMBDA_MIN}, decided with Holm's correction over the two settings. Supported if some BN "
            f"setting grows and residual connections tame it (per-draw slope lower, 95% CI above 0, and λ with them "
            f"below {LAMBDA_MIN}); contradicted here if a growing setting still grows with residual connections (λ's "
            f"95% CI above {LAMBDA_MIN}) or grows more with them; not "
            f"shown here if every BN setting's λ lies below {LAMBDA_MIN} (95% CI), or if residual connections leave "
            f"the growth unchanged (paired difference within ±log {LAMBDA_MIN}); inconclusive otherwise. No-norm and "
            f"LN stacks are references (is the growth specific to BN?).")

    def depths(self, ctx: StudyContext) -> list[int]:
        return ctx.pick(smoke=[1, 2], quick=[1, 2, 4, 8], full=[1, 2, 4, 8, 16], standard=[1, 2, 4, 8, 16])

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128, standard=128), "steps": ctx.pick(8, 20, 50, standard=50),
                "batch": ctx.pick(8, 32, 64, standard=32), "draws": ctx.pick(1, 3, 8, standard=4)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"Untrained stacks of {self.depths(ctx)} LSTM layers of {s['hidden']} units, a random batch of "
                f"{s['batch']} sequences of {s['steps']} steps, loss = a fixed random projection of the top output; "
                f"{s['draws']} independent draws per seed {ctx.seed_list}; norms none / BN (gain 0.1, the default) / "
                f"BN (gain 1) / LN, each without and with pre-norm residual connections.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": label, "residual": r} for label, _, _ in VARIANTS for r in (False, True)),
                         depths=self.depths(ctx), **self.sizes(ctx))

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        s = exp.spec
        _, norm, gamma = next(v for v in VARIANTS if v[0] == s["norm"])
        depths = list(s["depths"])
        g_in = {d: [] for d in depths}
        g_w = {d: [] for d in depths}
        slopes_in, slopes_w = [], []
        for j in range(s["draws"]):
            draw = 1000 * s["seed"] + j
            row_in, row_w = [], []
            for d in depths:
                a, b = gradient_norms(norm, gamma, s["residual"], d, draw, s["hidden"], s["steps"], s["batch"])
                g_in[d].append(a)
                g_w[d].append(b)
                row_in.append(a)
                row_w.append(b)
            slopes_in.append(fit_slope(depths, row_in))
            slopes_w.append(fit_slope(depths, row_w))
        geo = lambda xs: math.exp(mean([math.log(max(x, 1e-300)) for x in xs]))  # noqa: E731
        return {"depths": depths, "grad_input": [geo(g_in[d]) for d in depths],
                "grad_weight": [geo(g_w[d]) for d in depths], "slopes_input": slopes_in, "slopes_weight": slopes_w}

    # ------------------------------------------------------------------------------------------ analysis

    def _slopes(self, records: list[Record], which: str = "slopes_input") -> dict:
        """{(norm, residual): [log λ per draw, all seeds pooled]}"""
        out: dict = {}
        for r in records:
            out.setdefault((r.key["norm"], r.key["residual"]), []).extend(r.result[which])
        return out

    @staticmethod
    def _lam(slopes: list[float]) -> float:
        return math.exp(mean(slopes))

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        sl = self._slopes(records)
        log_min = math.log(LAMBDA_MIN)
        numbers: dict = {"lambda": {f"{n}{'+res' if r else ''}": self._lam(v) for (n, r), v in sl.items()}}
        growth = {v: one_sample(sl[(v, False)]) for v in BATCH_VARIANTS if (v, False) in sl}
        growing = any_beats(growth, log_min)  # Holm over the BN settings
        tamed, reduction = {}, {}
        for v in BATCH_VARIANTS:
            if (v, False) in sl and (v, True) in sl:
                plain, res = sl[(v, False)], sl[(v, True)]
                red = interval([p - r for p, r in zip(plain, res)])  # per draw: > 0, residual grows less
                reduction[v] = red
                tamed[v] = status(red, 0.0) == HOLDS and one_sample(res).high < log_min
                numbers[f"residual_vs_plain_{v}"] = red.to_dict()
        numbers.update(growth={v: c.to_dict() for v, c in growth.items()}, growing=growing, tamed=tamed)
        desc = lambda v, r: (f"{LABELS[v]}{' + residual' if r else ''} λ = {self._lam(sl[(v, r)]):.2f}"  # noqa: E731
                             if (v, r) in sl else "")
        effect = "; ".join(desc(v, r) for v in BATCH_VARIANTS for r in (False, True) if (v, r) in sl)
        if growth:
            effect += " (95% CI of λ without residual: " + ", ".join(
                f"{LABELS[v]} {math.exp(c.low):.2f}–{math.exp(c.high):.2f}" if c.n > 1 else f"{LABELS[v]} –"
                for v, c in growth.items()) + ")"
        others = [f"{LABELS[v]} λ = {self._lam(sl[(v, False)]):.2f}" for v in ("none", "layer") if (v, False) in sl]
        context = (" Without residual connections, for reference: " + ", ".join(others) + ".") if others else ""
        if not growth:
            return Verdict(INCONCLUSIVE, effect or "–", "No BN runs to judge.", numbers)
        if any(tamed.get(v) for v in growing):
            v = next(v for v in growing if tamed.get(v))
            return Verdict(SUPPORTED, effect, f"{LABELS[v]} without residual connections grows the input gradient "
                                              f"by λ = {self._lam(sl[(v, False)]):.2f} per layer; with residual "
                                              f"connections λ = {self._lam(sl[(v, True)]):.2f}.{context}", numbers)
        persists = [v for v in growing if (v, True) in sl and one_sample(sl[(v, True)]).low > log_min]
        if persists or any(v in reduction and status(reduction[v], 0.0) == OPPOSITE for v in growing):
            v = (persists or growing)[0]
            return Verdict(CONTRADICTED, effect, f"{LABELS[v]}'s gradient grows geometrically, and residual "
                                                 f"connections do not remove the growth (λ with them "
                                                 f"{self._lam(sl[(v, True)]):.2f}, 95% CI above {LAMBDA_MIN})."
                                                 f"{context}", numbers)
        if growing and all(v in reduction and status(reduction[v], log_min) == "absent" for v in growing):
            return Verdict(NOT_SHOWN, effect, "BN's gradient grows geometrically, but residual connections do not "
                                              f"change the growth per layer by log {LAMBDA_MIN}.{context}", numbers)
        if all(c.n > 1 and c.high < log_min for c in growth.values()):
            return Verdict(NOT_SHOWN, effect, f"No BN setting grows the gradient by {LAMBDA_MIN}× per layer or more "
                                              f"without residual connections (95% CI).{context}", numbers)
        return Verdict(INCONCLUSIVE, effect, "The fitted growth factors or the residual effect are within the "
                                             f"draw-to-draw spread of the thresholds.{context}", numbers)

    def table(self, records: list[Record]):
        sl, slw = self._slopes(records), self._slopes(records, "slopes_weight")
        depths = records[0].result["depths"] if records else []
        gin = group(records, lambda k: (k["norm"], k["residual"]), lambda r: r["grad_input"])
        rows = []
        for label, _, _ in VARIANTS:
            for residual in (False, True):
                if (label, residual) not in sl:
                    continue
                curves = gin[(label, residual)]
                per_depth = [math.exp(mean([math.log(max(c[i], 1e-300)) for c in curves])) for i in range(len(depths))]
                rows.append([f"{LABELS[label]}{' + residual' if residual else ''}",
                             " / ".join(f"{g:.3g}" for g in per_depth),
                             f"{self._lam(sl[(label, residual)]):.3f} (log: {fmt(sl[(label, residual)])})",
                             f"{self._lam(slw[(label, residual)]):.3f}"])
        return ["setting", f"‖∂loss/∂input‖ at depth {'/'.join(map(str, depths))}", "λ (input)",
                "λ (first-layer W_ih)"], rows

    def figure(self, records: list[Record], ax) -> None:
        gin = group(records, lambda k: (k["norm"], k["residual"]), lambda r: r["grad_input"])
        depths = records[0].result["depths"] if records else []
        colours = {"none": "tab:gray", "batch": "tab:blue", "batch_g1": "tab:purple", "layer": "tab:orange"}
        for (label, residual), curves in sorted(gin.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            ys = [math.exp(mean([math.log(max(c[i], 1e-300)) for c in curves])) for i in range(len(depths))]
            ax.plot(depths, ys, marker="o", color=colours.get(label), linestyle="--" if residual else "-",
                    label=f"{LABELS[label]}{' + res' if residual else ''}")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth L (layers)")
        ax.set_ylabel("‖∂loss/∂input‖ at init")
        ax.legend(fontsize="small", ncol=2)

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        sl = self._slopes(records)
        if not sl:
            return {}
        lam = lambda v, r: self._lam(sl[(v, r)]) if (v, r) in sl else math.nan  # noqa: E731
        cells = {}
        if ("batch", False) in sl:
            cells["BN"] = (f"λ = {lam('batch', False):.2f}/layer (γ=0.1), {lam('batch_g1', False):.2f} (γ=1); "
                           f"with residual {lam('batch', True):.2f} / {lam('batch_g1', True):.2f}")
        if ("layer", False) in sl:
            cells["LN"] = f"λ = {lam('layer', False):.2f}/layer; with residual {lam('layer', True):.2f}"
        return {"Depth at initialisation (gradient growth per layer)": cells}


CLAIM = Depth()
