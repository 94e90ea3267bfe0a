"""C11 Hybrid: for a CNN+RNN model, BN in the convolutional part and LN in the recurrent part is best.

Experiment: normrnn's ConvRNN (two conv3x3-norm-ReLU-maxpool blocks, then the feature map's columns as a 7-step
sequence into an LSTM) on images, with the conv part's norm in {batch (``nn.BatchNorm2d``, the model's own),
layer (LN over channels, height and width of each image: ``GroupNorm`` with one group)} (full adds none: a
per-channel gain and bias only) crossed with the recurrent norm in {batch, layer} (full adds none). Two
conditions: the article's (variable lengths, small batches: each image's sequence is cut to a random 2-7 of its 7 columns, passed as ``lengths``, batch
4), where batch norm in an RNN is said to break, and the fixed-length one (all 7 columns, batch 32), where it works.
Same initialisation seed, data order and number of updates for every combination. Metric: valid accuracy (BN in
eval mode, with its running statistics).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, image_data, make_trainer, plan
from ..stats import (ABSENT, CONTRADICTED, HOLDS, INCONCLUSIVE, NOT_SHOWN, SUPPORTED, all_beaten, any_beats, flip, fmt,
                     group, mean, paired, per_seed, plateaued, share, status)

MARGIN = 0.01  # accuracy: differences below one point are not worth a claim
HYBRID = ("batch", "layer")  # (conv norm, recurrent norm) the claim recommends
SHORT = {"batch": "BN", "layer": "LN", "none": "none"}
ARTICLE_STEPS = 3  # the article's condition trains 3x the updates: batch 4 sees 1/8 of the examples per update
CONDITIONS = ("article", "fixed")  # variable lengths at batch 4 (the primary test) / all 7 columns at batch 32
CONDITION_TEXT = {"article": "variable lengths, batch 4", "fixed": "fixed length, batch 32"}
MIN_LEN = 2


def variable_lengths(model: nn.Module, seed: int = 0) -> None:
    """Make a ConvRNN read a random 2-7 of its feature map's columns per image (passed as ``lengths``, so the
    recurrent norm sees padded, variable-length batches). The lengths come from a generator of the model's own
    (seeded), so runs are reproducible; training and evaluation both see variable lengths."""
    gen = torch.Generator().manual_seed(10_007 + seed)

    def forward(images: torch.Tensor, lengths=None) -> torch.Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        fmap = model.conv(images)
        n, c, h, w = fmap.shape
        seq = fmap.permute(0, 3, 1, 2).reshape(n, w, c * h)
        lens = torch.randint(min(MIN_LEN, w), w + 1, (n,), generator=gen)
        _, state = model.rnn(seq, lengths=lens)
        h_n = state[0] if isinstance(state, tuple) else state
        return model.head(h_n[-1])  # one unidirectional layer: its final state

    model.forward = forward


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
    primary = ("under the article's conditions (variable lengths, batch 4): per seed, hybrid minus each other "
               "combination's valid accuracy; every 95% t interval's lower bound must clear 0.01 (an intersection)")
    measured = ("measured under the article's conditions (the primary test) and at fixed length with batch 32 (the "
                "setting where batch norm in an RNN is known to work; reported beside it)")
    rule = (f"Under the article's conditions (the primary test; {ARTICLE_STEPS}× the updates at batch 4): supported "
            f"if (BN conv, LN recurrent) beats every other combination with a 95% CI above {MARGIN:.2f} accuracy; "
            f"contradicted here if some other combination beats it by more than {MARGIN:.2f} (Holm's correction over "
            f"the rivals); not shown here if every comparison's CI lies within ±{MARGIN:.2f}; inconclusive otherwise. The fixed-length condition is judged the same way and reported. "
            f"Scale check: most hybrid runs of the article's condition reached a plateau.")

    paper_deviations = {
        "image_mode": "a CNN front end over the whole image, then an LSTM over the 7 columns of its feature map: "
                      "the claim is about CNN+RNN models, not pixel sequences",
        "hidden": "128 units after the CNN (the LSTM reads 7 steps of 64×7 features, not 784 pixels)"}

    def norms(self, ctx: StudyContext) -> tuple[list[str], list[str]]:
        """(conv norms, recurrent norms)"""
        return (ctx.pick(["batch", "layer"], ["batch", "layer"], ["batch", "layer", "none"],
                         standard=["batch", "layer"]),
                ctx.pick(["batch", "layer"], ["batch", "layer"], ["batch", "layer", "none"],
                         standard=["batch", "layer"]))

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128, standard=128), "steps": ctx.pick(8, 120, 3000, standard=800),
                "limit": ctx.pick(200, 4000, None, standard=None),
                "eval_limit": ctx.pick(100, 500, None, standard=2000)}

    @staticmethod
    def batch(condition: str, ctx: StudyContext) -> int:
        return 4 if condition == "article" else ctx.pick(16, 32, 64, standard=32)

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        conv, rec = self.norms(ctx)
        return (f"ConvRNN (conv 32-64 channels, then an LSTM of {s['hidden']} units over the 7 columns of the 7×7 "
                f"feature map) on {image_data(ctx)}, Adam 2e-3, clip 1.0; two conditions: the article's (a random "
                f"{MIN_LEN}-7 columns per image as variable lengths, batch 4, {ARTICLE_STEPS * s['steps']} updates) "
                f"and fixed length (batch {self.batch('fixed', ctx)}, {s['steps']} updates); "
                f"conv norm in {conv} × recurrent norm in {rec} (conv 'layer' = GroupNorm with one group over C×H×W); "
                f"seeds {ctx.seed_list}.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        conv_norms, rnn_norms = self.norms(ctx)
        return self.grid(ctx, ({"condition": cond, "conv": c, "rnn": r} for cond in CONDITIONS for c in conv_norms
                                for r in rnn_norms), data=image_data(ctx), **self.sizes(ctx),
                         article_steps=ARTICLE_STEPS)

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        conv, cond = s["conv"], s["condition"]

        def prepare(trainer) -> None:
            set_conv_norm(trainer.model, conv)
            if cond == "article":
                variable_lengths(trainer.model, s["seed"])

        # The conv norm is not a TrainConfig option: it is the variant (its own learning-rate search in the full
        # profile, whose trials train that conv norm too), set on the built model.
        return [plan(ctx, task="image", data=s["data"], image_mode="cnn", norm=s["rnn"], hidden=s["hidden"],
                     batch_size=self.batch(cond, ctx),
                     max_steps=s["steps"] * (s.get("article_steps", 1) if cond == "article" else 1), limit=s["limit"],
                     eval_limit=s["eval_limit"], seed=s["seed"], lr=2e-3, clip=1.0,
                     variant={"conv": conv, "condition": cond}, prepare=prepare)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        trainer, rec = make_trainer(self.train_plans(exp, ctx)[0])
        summary = trainer.fit()
        return {"valid_accuracy": summary["valid_accuracy"], "test_accuracy": summary["test_accuracy"],
                "diverged": summary["diverged"], "steps": summary["steps"], "loss_curve": curve(rec.losses)}

    def _acc(self, records: list[Record], condition: str = "article") -> dict:
        return group([r for r in records if r.key.get("condition", "article") == condition],
                     lambda k: (k["conv"], k["rnn"]), lambda r: r["valid_accuracy"])

    def judge_condition(self, records: list[Record], condition: str) -> tuple[str, dict, list]:
        """(status word, {rival: hybrid - rival paired}, rivals that beat the hybrid under Holm)."""
        recs = [r for r in records if r.key.get("condition", "article") == condition]
        arms = {(r.key["conv"], r.key["rnn"]) for r in recs}
        arm = lambda c: per_seed(recs, lambda r: r["valid_accuracy"],  # noqa: E731
                                 lambda k: (k["conv"], k["rnn"]) == c)
        if HYBRID not in arms:
            return "missing", {}, []
        vs = {c: paired(arm(HYBRID), arm(c)) for c in sorted(arms) if c != HYBRID}  # positive: hybrid better
        beaten_by = any_beats({c: flip(v) for c, v in vs.items()}, MARGIN)
        if beaten_by:
            word = "beaten"
        elif all_beaten(vs, MARGIN):
            word = "best"
        elif vs and all(status(v, MARGIN) == ABSENT for v in vs.values()):
            word = "tied"
        else:
            word = "unclear"
        return word, vs, beaten_by

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        name = lambda c: f"({SHORT[c[0]]} conv, {SHORT[c[1]]} rnn)"  # noqa: E731
        results = {cond: self.judge_condition(records, cond) for cond in CONDITIONS}
        word, vs, beaten_by = results["article"]
        if word == "missing":  # records of the old single condition only
            word, vs, beaten_by = results["fixed"]
        acc = self._acc(records)
        numbers = {"hybrid_vs": {name(c): v.to_dict() for c, v in vs.items()}, "status": word,
                   "acc": {name(c): mean(v) for c, v in acc.items()},
                   "fixed_status": results["fixed"][0], "fixed_vs": {name(c): v.to_dict()
                                                                     for c, v in results["fixed"][1].items()}}
        effect = "; ".join(
            f"{CONDITION_TEXT[cond]}: hybrid - other accuracy " + ", ".join(f"{name(c)} {v.text()}"
                                                                          for c, v in res[1].items())
            for cond, res in results.items() if res[0] != "missing")
        fixed = (f" At fixed length with batch 32 the hybrid is {results['fixed'][0]}."
                 if results["fixed"][0] != "missing" else "")
        if word == "beaten":
            best = beaten_by[0]
            return Verdict(CONTRADICTED, effect, f"{name(best)} beats (BN conv, LN rnn) by more than {MARGIN:.2f} "
                                                 f"(Holm-corrected over {len(vs)} rivals).{fixed}", numbers)
        if word == "best":
            return Verdict(SUPPORTED, effect, f"(BN conv, LN rnn) beats every other combination.{fixed}", numbers)
        if word == "tied":
            return Verdict(NOT_SHOWN, effect, f"Every combination is within {MARGIN:.2f} of the hybrid (95% CI): the "
                                              f"choice of norms does not matter here.{fixed}", numbers)
        return Verdict(INCONCLUSIVE, effect, "The combinations are within the seed-to-seed spread of the margin."
                       + fixed, numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        cond = "article" if any(r.key.get("condition", "article") == "article" for r in records) else "fixed"
        flags = [plateaued(r.result.get("loss_curve", [])) for r in records
                 if (r.key["conv"], r.key["rnn"]) == HYBRID and not r.result.get("diverged")
                 and r.key.get("condition", "article") == cond]
        return bool(flags) and share(flags) > 0.5, (f"{sum(flags)}/{len(flags)} hybrid runs under the "
                                                    f"{CONDITION_TEXT[cond]} condition reached a plateau (training "
                                                    f"loss over the last fifth within 3% of the fifth before)")

    def table(self, records: list[Record]):
        rows, rnns = [], ["batch", "layer"]
        for cond in CONDITIONS:
            acc = self._acc(records, cond)
            if not acc:
                continue
            convs = [c for c in ("batch", "layer", "none") if any(k[0] == c for k in acc)]
            rnns = [r for r in ("batch", "layer", "none") if any(k[1] == r for k in acc)]
            rows += [[f"{CONDITION_TEXT[cond]}: {SHORT[c]} conv", *(fmt(acc.get((c, r), [])) for r in rnns)]
                     for c in convs]
        return ["valid accuracy (mean ± SD)", *(f"{SHORT[r]} recurrent" for r in rnns)], rows

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
        ax.set_title("valid accuracy, variable lengths at batch 4 (★ = the recommended hybrid)", fontsize="small")
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
