"""C11 Hybrid: for a CNN+RNN model, BN in the convolutional part and LN in the recurrent part is best.

Experiment: normrnn's ConvRNN (two conv3x3-norm-ReLU-maxpool blocks, then the feature map's columns as a 7-step
sequence into an LSTM) on images, with the conv part's norm in {batch (``nn.BatchNorm2d``, the model's own),
layer (LN over channels, height and width of each image: ``GroupNorm`` with one group)} (full adds none: a
per-channel gain and bias only) crossed with the recurrent norm in {batch, layer} (full adds none). Same
initialisation seed, data order and number of updates for every combination. Metric: valid accuracy (BN in eval
mode, with its running statistics).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, image_data, make_trainer, plan
from ..stats import better, compare, fmt, group, mean

MARGIN = 0.01  # accuracy: differences below one point are not worth a claim
HYBRID = ("batch", "layer")  # (conv norm, recurrent norm) the claim recommends
SHORT = {"batch": "BN", "layer": "LN", "none": "none"}


class ChannelAffine(nn.Module):
    """``conv norm = none``: only a per-channel gain and bias (the conv has no bias of its own)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def set_conv_norm(model: nn.Module, kind: str) -> None:
    """Replace the BatchNorm2d layers of a ConvRNN's conv part. The replacement reuses the BN's gain and bias
    Parameter objects, so the optimizer built over the model's parameters keeps training them and the
    initialisation is the same as with BN."""
    if kind == "batch":
        return
    for i, m in enumerate(model.conv):
        if isinstance(m, nn.BatchNorm2d):
            if kind == "layer":
                new = nn.GroupNorm(1, m.num_features, eps=m.eps)
                new.weight, new.bias = m.weight, m.bias
            elif kind == "none":
                new = ChannelAffine(m.weight, m.bias)
            else:
                raise ValueError(f"unknown conv norm {kind!r}")
            model.conv[i] = new


class Hybrid(Claim):
    id = "C11"
    title = "Hybrid CNN+RNN"
    statement = ("For a CNN+RNN model, batch norm in the convolutional part and layer norm in the recurrent part is "
                 "best.")
    hypothesis = ("Among the combinations of conv norm × recurrent norm, (BN conv, LN recurrent) has the highest valid "
                  "accuracy at a fixed training budget.")
    metric = "valid accuracy after a fixed number of updates (BN with running statistics)"
    rule = (f"supported if (BN conv, LN recurrent) beats every other combination by more than {MARGIN:.2f} accuracy "
            f"and 2 standard errors; refuted if some other combination beats it by that much; depends if it beats some "
            f"combinations that way and ties the rest (part of the recommendation matters, part does not); "
            f"inconclusive otherwise.")

    paper_deviations = {
        "image_mode": "a CNN front end over the whole image, then an LSTM over the 7 columns of its feature map: "
                      "the claim is about CNN+RNN models, not pixel sequences",
        "hidden": "128 units after the CNN (the LSTM reads 7 steps of 64×7 features, not 784 pixels)"}

    def norms(self, ctx: StudyContext) -> tuple[list[str], list[str]]:
        """(conv norms, recurrent norms)"""
        return (ctx.pick(["batch", "layer"], ["batch", "layer"], ["batch", "layer", "none"]),
                ctx.pick(["batch", "layer"], ["batch", "layer"], ["batch", "layer", "none"]))

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128), "batch": ctx.pick(16, 32, 64), "steps": ctx.pick(8, 120, 3000),
                "limit": ctx.pick(200, 4000, None), "eval_limit": ctx.pick(100, 500, None)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        conv, rec = self.norms(ctx)
        return (f"ConvRNN (conv 32-64 channels, then an LSTM of {s['hidden']} units over the 7 columns of the 7×7 "
                f"feature map) on {image_data(ctx)}, {s['steps']} updates of batch {s['batch']}, Adam 2e-3, clip 1.0; "
                f"conv norm in {conv} × recurrent norm in {rec} (conv 'layer' = GroupNorm with one group over C×H×W); "
                f"seeds {ctx.seed_list}.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        conv_norms, rnn_norms = self.norms(ctx)
        return self.grid(ctx, ({"conv": c, "rnn": r} for c in conv_norms for r in rnn_norms), data=image_data(ctx),
                         **self.sizes(ctx))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        conv = s["conv"]
        # The conv norm is not a TrainConfig option: it is the variant (its own learning-rate search in the full
        # profile, whose trials train that conv norm too), set on the built model.
        return [plan(ctx, task="image", data=s["data"], image_mode="cnn", norm=s["rnn"], hidden=s["hidden"],
                     batch_size=s["batch"], max_steps=s["steps"], limit=s["limit"], eval_limit=s["eval_limit"],
                     seed=s["seed"], lr=2e-3, clip=1.0, variant={"conv": conv},
                     prepare=lambda trainer: set_conv_norm(trainer.model, conv))]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        trainer, rec = make_trainer(self.train_plans(exp, ctx)[0])
        summary = trainer.fit()
        return {"valid_accuracy": summary["valid_accuracy"], "test_accuracy": summary["test_accuracy"],
                "diverged": summary["diverged"], "steps": summary["steps"], "loss_curve": curve(rec.losses)}

    def _acc(self, records: list[Record]) -> dict:
        return group(records, lambda k: (k["conv"], k["rnn"]), lambda r: r["valid_accuracy"])

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        acc = self._acc(records)
        vs = {c: compare(acc[HYBRID], acc[c]) for c in acc if c != HYBRID}  # positive: hybrid better
        name = lambda c: f"({SHORT[c[0]]} conv, {SHORT[c[1]]} rnn)"  # noqa: E731
        numbers = {"hybrid_vs": {name(c): v for c, v in vs.items()}, "acc": {name(c): mean(v) for c, v in acc.items()}}
        effect = "hybrid - other accuracy: " + "; ".join(f"{name(c)} {v['diff']:+.3f} (± {v['se']:.3f})"
                                                         for c, v in vs.items())
        flip = lambda c: {**c, "diff": -c["diff"], "z": -c["z"]}  # noqa: E731
        beaten_by = [c for c, v in vs.items() if better(flip(v), MARGIN)]
        beats = [c for c, v in vs.items() if better(v, MARGIN)]
        if beaten_by:
            best = max(beaten_by, key=lambda c: mean(acc[c]))
            return Verdict("refuted", effect, f"{name(best)} reaches {mean(acc[best]):.3f} valid accuracy, more "
                                              f"than (BN conv, LN rnn)'s {mean(acc[HYBRID]):.3f} by over {MARGIN:.2f} "
                                              f"and 2 standard errors.", numbers)
        if vs and len(beats) == len(vs):
            return Verdict("supported", effect, f"(BN conv, LN rnn) beats every other combination "
                                                f"({mean(acc[HYBRID]):.3f} valid accuracy).", numbers)
        if beats:
            ties = [name(c) for c in vs if c not in beats]
            return Verdict("depends", effect, f"(BN conv, LN rnn) beats {', '.join(name(c) for c in beats)} but not "
                                              f"{', '.join(ties)}: it is tied-best, and only part of the "
                                              f"recommendation matters here.", numbers)
        return Verdict("inconclusive", effect, "The combinations are within the margin or the seed-to-seed spread of "
                                               "each other.", numbers)

    def table(self, records: list[Record]):
        acc = self._acc(records)
        convs = [c for c in ("batch", "layer", "none") if any(k[0] == c for k in acc)]
        rnns = [r for r in ("batch", "layer", "none") if any(k[1] == r for k in acc)]
        rows = [[f"{SHORT[c]} conv", *(fmt(acc.get((c, r), [])) for r in rnns)] for c in convs]
        return ["valid accuracy", *(f"{SHORT[r]} recurrent" for r in rnns)], rows

    def figure(self, records: list[Record], ax) -> None:
        acc = self._acc(records)
        convs = [c for c in ("batch", "layer", "none") if any(k[0] == c for k in acc)]
        rnns = [r for r in ("batch", "layer", "none") if any(k[1] == r for k in acc)]
        grid = [[mean(acc.get((c, r), [])) for r in rnns] for c in convs]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        finite = [v for row in grid for v in row if v == v]
        mid = (min(finite) + max(finite)) / 2 if finite else 0.0
        for i, c in enumerate(convs):
            for j, r in enumerate(rnns):
                vals = acc.get((c, r), [])
                text = f"{mean(vals):.3f}" if vals else "–"
                ax.text(j, i, text + (" ★" if (c, r) == HYBRID else ""), ha="center", va="center",
                        color="k" if vals and mean(vals) > mid else "w", fontsize="small")
        ax.set_xticks(range(len(rnns)))
        ax.set_xticklabels([f"{SHORT[r]} recurrent" for r in rnns])
        ax.set_yticks(range(len(convs)))
        ax.set_yticklabels([f"{SHORT[c]} conv" for c in convs])
        ax.set_title("valid accuracy (★ = the recommended hybrid)", fontsize="small")
        ax.figure.colorbar(im, ax=ax)

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        records = [r for r in records if "error" not in r.result]  # the report passes failed runs too
        acc = self._acc(records)
        if HYBRID not in acc:
            return {}
        cells = {}
        if ("batch", "batch") in acc:
            cells["BN"] = f"acc {mean(acc[('batch', 'batch')]):.3f} (BN everywhere)"
        cells["LN"] = (f"acc {mean(acc[HYBRID]):.3f} with BN conv (the hybrid)"
                       + (f", {mean(acc[('layer', 'layer')]):.3f} with LN conv" if ("layer", "layer") in acc else ""))
        return {"With a CNN front end": cells}


CLAIM = Hybrid()
