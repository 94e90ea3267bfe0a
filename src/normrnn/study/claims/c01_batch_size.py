"""C1 Batch size: BN needs large batches and becomes unstable below; LN works the same down to small batches.

Experiment: a sequence classifier trained with BN and LN at batch sizes from 2 to 64 for the **same number of
updates** at every batch size (so a gap at large batches is not an artefact of fewer updates), with a learning rate
per (norm, batch) in the standard and full profiles, same initialisation seeds and data order. Quick, smoke and
standard read the images row by row (28 steps); the full profile reads Fashion-MNIST pixel by pixel in a fixed
random order (permuted, 784 steps of one pixel, 100 units, as Cooijmans et al.'s permuted-pixel task). Metric: valid
accuracy (BN in eval mode, i.e. with its running statistics, as a user deploys it). A diverged run is left out of
its arm's accuracy and counted: BN diverging at small batches is evidence for the claim.
"""
from __future__ import annotations

from pathlib import Path

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, image_data, plan, train_run
from ..stats import (CONTRADICTED, HOLDS, INCONCLUSIVE, SUPPORTED, divergence, divergence_rate, fmt, group,
                     label_for, mean, paired, per_seed, plateaued, share, status, std)

NORMS = ("batch", "layer")
MARGIN = 0.02  # accuracy: differences below 2 points are not worth a claim
FULL_BUDGET = "; a few epochs of the permuted-pixel task: meant for a GPU"


class BatchSize(Claim):
    id = "C1"
    title = "Batch size"
    statement = ("Batch norm needs large batches (>= 16-32) and becomes unstable below; layer norm works the same "
                 "down to batch 1.")
    hypothesis = ("At the smallest batch, LN's valid accuracy exceeds BN's, and the LN - BN gap is larger there than "
                  "at the largest batch.")
    metric = "valid accuracy after the same number of updates at every batch size"
    primary = ("per seed, (LN - BN accuracy at the smallest batch) - (LN - BN accuracy at the largest batch): the 95% "
               "t interval's lower bound must clear 2 points")
    measured = "both halves (BN's small-batch deficit and LN's flatness) are measured; nothing holds by construction"
    rule = ("supported if the batch-size interaction (the LN - BN gap at the smallest batch minus the gap at the "
            "largest, per seed) has a 95% CI above 0.02, or if BN diverged in every run at the smallest batch while LN "
            "and BN at the largest batch did not; contradicted here if its CI lies below -0.02; not shown here if the "
            "CI lies within ±0.02; inconclusive otherwise. The threshold batch size is the smallest batch from which "
            "BN's deficit is no longer shown above 0.02 at any larger batch.")

    def batches(self, ctx: StudyContext) -> list[int]:
        return ctx.pick(smoke=[2, 16], quick=[2, 8, 32], full=[2, 4, 8, 16, 32, 64],
                        standard=[2, 4, 8, 16, 32, 64])

    def image_mode(self, ctx: StudyContext) -> str:
        """Rows in quick/smoke (28 steps, minutes); permuted pixels in full (784 steps, the paper-sized task).

        Permuted rather than sequential pixels: in row-major order the first and last rows are background in
        nearly every image, so for ~100 steps at each end every example of a batch reads the same zero and the
        input term's per-step batch variance is ~0 whatever the batch size, which would blur the batch-size effect
        the claim is about. A fixed permutation (seed 0, the same for every run) spreads each image's content over
        all 784 steps, and is the harder long-range task on which Cooijmans et al. report BN's largest gain. One
        ordering only, to keep the full claim at hours."""
        return ctx.pick("row", "row", "permuted", standard="row")

    def sizes(self, ctx: StudyContext) -> dict:
        # the same number of updates at every batch size (examples then grow with the batch)
        return {"hidden": ctx.pick(16, 64, 100, standard=128), "updates": ctx.pick(4, 300, 3000, standard=1200),
                "limit": ctx.pick(200, 4000, None, standard=None),
                "eval_limit": ctx.pick(100, 500, 5000, standard=2000)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s, mode = self.sizes(ctx), self.image_mode(ctx)
        what = ("the rows of {data} images (28 steps of 28 pixels)" if mode == "row" else
                "the pixels of {data} images in a fixed random order (permuted, 784 steps of one pixel; permuted "
                "rather than row-major so that no run of background-only steps at the image borders gives batch "
                "norm zero-variance statistics at any batch size)")
        return (f"LSTM classifier ({s['hidden']} units) over {what.format(data=image_data(ctx))}, "
                f"{s['updates']} updates at every batch size {self.batches(ctx)} (the same data order; more "
                f"examples at larger batches{FULL_BUDGET if mode != 'row' else ''}), valid/test on "
                f"{'the first ' + str(s['eval_limit']) if s['eval_limit'] else 'all'} examples of each split, "
                f"Adam 2e-3{' (searched per norm and batch)' if ctx.profile in ('standard', 'full') else ''}, "
                f"clip 1.0, seeds {ctx.seed_list}.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        mode = self.image_mode(ctx)
        # quick/smoke specs (and so their cached runs) stay as they were: no image_mode entry for rows
        extra = {} if mode == "row" else {"image_mode": mode}
        return self.grid(ctx, ({"norm": n, "batch": b} for n in NORMS for b in self.batches(ctx)),
                         data=image_data(ctx), **self.sizes(ctx), **extra)

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        s = exp.spec
        return [plan(ctx, task="image", data=s["data"], image_mode=s.get("image_mode", "row"), norm=s["norm"],
                     hidden=s["hidden"], batch_size=s["batch"], max_steps=s["updates"],
                     limit=s["limit"], eval_limit=s["eval_limit"], seed=s["seed"], lr=2e-3, clip=1.0)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        summary, rec, _ = train_run(self.train_plans(exp, ctx)[0])
        return {"valid_accuracy": summary["valid_accuracy"], "test_accuracy": summary["test_accuracy"],
                "diverged": summary["diverged"], "steps": summary["steps"], "loss_curve": curve(rec.losses)}

    def _acc(self, records: list[Record]) -> dict:
        return group(records, lambda k: (k["norm"], k["batch"]), lambda r: r["valid_accuracy"])

    def _gap(self, records: list[Record], b: int):
        """LN - BN valid accuracy at batch ``b``, paired by seed (diverged runs dropped)."""
        arm = lambda n: per_seed(records, lambda r: r["valid_accuracy"],  # noqa: E731
                                 lambda k: k["norm"] == n and k["batch"] == b)
        return paired(arm("layer"), arm("batch"))

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        batches = sorted({r.key["batch"] for r in records})
        small, large = batches[0], batches[-1]
        gaps = {b: self._gap(records, b) for b in batches}
        div = divergence(records, lambda k: (k["norm"], k["batch"]))
        bn_ls = per_seed(records, lambda r: r["valid_accuracy"], lambda k: k["norm"] == "batch" and k["batch"] == large)
        # the interaction per seed: (LN - BN)_small - (LN - BN)_large, i.e. paired over the two gaps' seeds
        g_small = {s: d for s, d in zip(gaps[small].seeds, gaps[small].diffs)}
        g_large = {s: d for s, d in zip(gaps[large].seeds, gaps[large].diffs)}
        inter = paired(g_small, g_large)
        part = status(inter, MARGIN)
        threshold = None
        for b in batches:  # the smallest batch from which no larger batch shows BN's deficit (or BN diverging)
            if all(status(gaps[c], MARGIN) != HOLDS and divergence_rate(div, ("batch", c)) <= 0.5
                   for c in batches if c >= b):
                threshold = b
                break
        numbers = {"gaps": {b: g.to_dict() for b, g in gaps.items()}, "interaction": inter.to_dict(),
                   "status": part, "small": small, "large": large, "threshold_batch": threshold,
                   "bn_diverged_small": divergence_rate(div, ("batch", small))}
        effect = (f"LN - BN accuracy at batch {small}: {gaps[small].text()}; at batch {large}: {gaps[large].text()}; "
                  f"interaction {inter.text()}; threshold batch {threshold if threshold is not None else '–'}")
        bn_small, ln_small = div.get(("batch", small), {}), div.get(("layer", small), {})
        if (bn_small.get("runs", 0) >= 2 and bn_small["diverged"] == bn_small["runs"] and
                not ln_small.get("diverged") and not div.get(("batch", large), {}).get("diverged") and bn_ls):
            return Verdict(SUPPORTED, effect, f"BN diverged in {bn_small['diverged']}/{bn_small['runs']} runs at "
                                              f"batch {small} (LN in none, BN at batch {large} in none): BN is "
                                              f"unstable at small batches.", numbers)
        label = label_for(part)
        words = {SUPPORTED: f"BN's deficit against LN is larger at batch {small} than at batch {large} by more than "
                            f"{MARGIN:.2f}.",
                 CONTRADICTED: f"BN's deficit is larger at batch {large} than at batch {small}.",
                 INCONCLUSIVE: "The interaction's interval straddles the margin: the seeds cannot tell."}
        return Verdict(label, effect, words.get(label, f"The gap changes by less than {MARGIN:.2f} from batch {small} "
                                                       f"to {large}: no batch-size effect shown."), numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        """The LN runs (the reference arm) reached a plateau at the smallest and the largest batch."""
        batches = sorted({r.key["batch"] for r in records})
        flags = [plateaued(r.result.get("loss_curve", [])) for r in records
                 if r.key["norm"] == "layer" and r.key["batch"] in (batches[0], batches[-1]) and
                 not r.result.get("diverged")]
        ok = bool(flags) and share(flags) > 0.5
        return ok, (f"{sum(flags)}/{len(flags)} LN runs at batch {batches[0]} and {batches[-1]} reached a plateau "
                    f"(training loss over the last fifth within 3% of the fifth before)")

    def table(self, records: list[Record]):
        acc = self._acc(records)
        batches = sorted({k[1] for k in acc})
        rows = [[f"batch {b}", *(fmt(acc.get((n, b), [])) for n in NORMS), self._gap(records, b).text()]
                for b in batches]
        return ["setting", "BN valid acc (mean ± SD)", "LN valid acc (mean ± SD)", "LN - BN, paired (95% CI)"], rows

    def figure(self, records: list[Record], ax) -> None:
        acc = self._acc(records)
        for norm, label in (("batch", "BN"), ("layer", "LN")):
            bs = sorted(b for n, b in acc if n == norm)
            ax.errorbar(bs, [mean(acc[(norm, b)]) for b in bs], yerr=[std(acc[(norm, b)]) for b in bs],
                        marker="o", capsize=3, label=f"{label} (mean ± SD)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("valid accuracy")
        ax.legend()

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if "small" not in n:
            return {}
        acc = self._acc(records)
        cell = lambda norm: (f"acc {mean(acc[(norm, n['small'])]):.2f} at batch {n['small']}, "  # noqa: E731
                             f"{mean(acc[(norm, n['large'])]):.2f} at {n['large']}")
        return {"Batch-size dependency": {"BN": cell("batch"), "LN": cell("layer")}}


CLAIM = BatchSize()
