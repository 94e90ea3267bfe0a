"""C3 Padding: padded positions distort batch norm's mean and variance unless excluded; layer norm is unaffected.

normrnn leaves padding out of batch-norm statistics by construction (the layers take ``lengths``). The claim is
tested against a naive batch norm that counts the padding: the same layer run without ``lengths``, so the padded
zeros (and the states that keep evolving over them) enter every step's statistics, while the output is still read
at each sequence's last valid step. Experiment: the adding problem with strongly varying lengths; BN masked, BN
naive and LN trained from the same initialisation seeds on the same batches for the same number of updates.
Metrics: (1) the direct distortion of the per-step batch statistics, naive vs masked, on one validation batch, at
initialisation and after training; (2) LN's output difference with and without ``lengths``; (3) valid MSE.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...norms import RecurrentBatchNorm
from ...train.checkpoint import seed_everything
from ...train.tasks import make_task
from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..experiments import curve, plan, resolve
from ..stats import (CONTRADICTED, NOT_SHOWN, OPPOSITE, SUPPORTED, fmt, group, label_for, mean, one_sample,
                     paired, per_seed, status)

VARIANTS = (("batch", "masked"), ("batch", "naive"), ("layer", "masked"))
LABELS = {("batch", "masked"): "BN, padding excluded", ("batch", "naive"): "BN, padding counted",
          ("layer", "masked"): "LN"}
BASELINE_MSE = 1 / 6  # always predicting 1
DISTORTION = 0.10  # statistics differing by under 10% of a standard deviation are not distorted
MSE_MARGIN = 0.01
LN_TOLERANCE = 1e-5


def predict(model, x: torch.Tensor, lengths: torch.Tensor, naive: bool) -> torch.Tensor:
    """The regressor's output. naive: the recurrent stack runs without ``lengths`` (padding enters the batch
    statistics) and the output at each sequence's last valid step is read."""
    if not naive:
        return model(x, lengths).squeeze(-1)
    out, _ = model.rnn(x)  # (N, T, H)
    last = out[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]
    return model.head(last).squeeze(-1)


def count_padding(trainer) -> None:
    """Make a Trainer's regressor the naive one (:func:`predict` with ``naive=True``), so that the learning-rate
    search of the naive variant (full profile) trains that variant and not the masked one."""
    model = trainer.model

    def forward(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = model.rnn(x)
        return model.head(out[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1])

    model.forward = forward


def batch_statistics(model, x: torch.Tensor, lengths: torch.Tensor, naive: bool) -> list[tuple]:
    """Per batch-norm module: the per-step batch mean and biased variance (T, F) the model computes in training
    mode on (x, lengths), and the per-step count they were taken over. Read through the running buffers of a
    copy with momentum 1, so the fused and the reference backend are measured alike."""
    m = copy.deepcopy(model).train()
    norms = [n for n in m.modules() if isinstance(n, RecurrentBatchNorm)]
    for n in norms:
        n.momentum = 1.0
        n.running_mean.zero_()
        n.running_var.fill_(1.0)
        n.steps_tracked.zero_()
    with torch.no_grad():
        predict(m, x, lengths, naive)
    steps = x.shape[1]
    if naive:
        count = torch.full((steps,), float(x.shape[0]))
    else:
        count = (torch.arange(steps).unsqueeze(1) < lengths.cpu().unsqueeze(0)).sum(1).float()
    out = []
    for n in norms:
        t = min(steps, n.max_steps)
        c = count[:t].unsqueeze(1)
        var = n.running_var[:t].cpu() * ((c - 1) / c).clamp(min=0)  # the running buffer holds the unbiased one
        out.append((n.running_mean[:t].cpu(), var, count[:t]))
    return out


def distortion(model, x: torch.Tensor, lengths: torch.Tensor) -> dict:
    """How far the naive (padding counted) per-step statistics are from the masked ones, per step where some
    sequence has ended and at least two are running: mean |Δmean|/σ and mean |log(var ratio)| over features and
    batch-norm modules."""
    masked, naive = batch_statistics(model, x, lengths, False), batch_statistics(model, x, lengths, True)
    steps = x.shape[1]
    pad = (torch.arange(steps).unsqueeze(1) >= lengths.cpu().unsqueeze(0)).float().mean(1)
    d_mean, d_var = torch.zeros(steps), torch.zeros(steps)
    for (mu_m, var_m, count), (mu_n, var_n, _) in zip(masked, naive):
        t = mu_m.shape[0]
        d_mean[:t] += ((mu_n - mu_m).abs() / (var_m + 1e-5).sqrt()).mean(1) / len(masked)
        d_var[:t] += ((var_n + 1e-5) / (var_m + 1e-5)).log().abs().mean(1) / len(masked)
    count = masked[0][2] if masked else torch.zeros(steps)
    use = (pad[:len(count)] > 0) & (count >= 2)
    pick = lambda v: float(v[:len(count)][use].mean()) if bool(use.any()) else 0.0  # noqa: E731
    return {"mean_shift": pick(d_mean), "log_var_ratio": pick(d_var), "per_step_mean_shift": d_mean.tolist(),
            "per_step_log_var_ratio": d_var.tolist(), "padding_fraction": pad.tolist()}


def output_difference(model, x: torch.Tensor, lengths: torch.Tensor) -> float:
    """Largest |output with lengths - output without| at the last valid steps, in training mode (batch
    statistics for BN)."""
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        return float((predict(m, x, lengths, False) - predict(m, x, lengths, True)).abs().max())


class Padding(Claim):
    id = "C3"
    title = "Padding"
    statement = ("Padded positions distort batch norm's mean and variance unless they are excluded from the "
                 "statistics; layer norm is unaffected.")
    hypothesis = ("On variable-length batches, BN statistics that count the padding differ from the masked ones by "
                  "more than 10% of a standard deviation (mean or log-variance), LN's outputs are the same with or "
                  "without lengths, and training BN with the distorted statistics gives a worse valid MSE.")
    metric = ("per-step distortion of BN's batch statistics (naive vs masked) on a validation batch, at "
              "initialisation and after training; LN's output difference; valid MSE of the adding problem")
    primary = ("per seed, naive (padding counted) minus masked BN valid MSE: the 95% t interval's lower bound must "
               "clear 0.01")
    measured = ("measured: the distortion of BN's statistics when padding is counted, and what it costs BN in valid "
                "MSE (the primary test)")
    construction = ("LN is unaffected by padding by construction: it normalizes each example at each step over its "
                    "own features, so other examples' padding never enters; the run only verifies the identity "
                    "(output difference ≤ 1e-5). normrnn's BN excludes padding by construction too (masked "
                    "statistics); the naive arm drops the lengths to show what counting the padding would do.")
    rule = ("contradicted here if LN's outputs differ by more than 1e-5 with and without lengths; not shown here if "
            "the distortion of BN's statistics at initialisation has a 95% CI below 0.10 SD (the mechanism is "
            "absent); otherwise from the primary test: supported if naive - masked BN valid MSE has a 95% CI above "
            "0.01, contradicted here if below -0.01, not shown here if within ±0.01, inconclusive otherwise. Scale "
            "check: masked BN learnt the task (valid MSE below half the 1/6 baseline).")

    def sizes(self, ctx: StudyContext) -> dict:
        return {"hidden": ctx.pick(16, 64, 128, standard=128), "seq_len": ctx.pick(12, 30, 100, standard=50),
                "min_len": ctx.pick(2, 3, 5, standard=3), "batch": ctx.pick(16, 32, 64, standard=32),
                "steps": ctx.pick(5, 400, 10000, standard=1500), "limit": ctx.pick(200, 12800, 100000, standard=48000),
                "eval_limit": ctx.pick(64, 500, 1000, standard=1000), "probe": ctx.pick(16, 64, 256, standard=128)}

    def describe_setup(self, ctx: StudyContext) -> str:
        s = self.sizes(ctx)
        return (f"Adding problem with lengths uniform in [{s['min_len']}, {s['seq_len']}] (about "
                f"{(s['seq_len'] - s['min_len']) / (2 * s['seq_len']):.0%} of a batch padded), LSTM regressor "
                f"({s['hidden']} units), batch {s['batch']}, {s['steps']} updates, Adam 2e-3, clip 1.0, seeds "
                f"{ctx.seed_list}; statistics probed on {s['probe']} validation sequences.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return self.grid(ctx, ({"norm": n, "padding": p} for n, p in VARIANTS), **self.sizes(ctx))

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        """The run's config (the training loop is this claim's own, see :meth:`run`; the full profile's
        learning-rate search trains each padding variant as itself through the Trainer)."""
        s = exp.spec
        naive = s["padding"] == "naive"
        return [plan(ctx, task="adding", data="synthetic", norm=s["norm"], hidden=s["hidden"], seq_len=s["seq_len"],
                     extra={"min_len": s["min_len"]}, batch_size=s["batch"], max_steps=s["steps"], limit=s["limit"],
                     eval_limit=s["eval_limit"], seed=s["seed"], lr=2e-3, clip=1.0,
                     variant={"padding": s["padding"]}, prepare=count_padding if naive else None)]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        s = exp.spec
        naive = s["padding"] == "naive"
        cfg = resolve(self.train_plans(exp, ctx)[0])
        seed_everything(cfg.seed)  # as the Trainer does: the same initialisation for every variant of a seed
        task = make_task(cfg)
        device = torch.device(cfg.device)
        model = task.build_model().to(device)
        valid = task.splits["valid"]
        px, plen, _ = valid.get_batch(torch.arange(min(s["probe"], len(valid))))
        px = px.to(device)
        result = {"norm": s["norm"], "padding": s["padding"]}
        if s["norm"] == "batch":
            result["init"] = distortion(model, px, plen)
        result["init_output_diff"] = output_difference(model, px, plen)

        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        losses, step, epoch = [], 0, 0
        while step < s["steps"]:
            plan = task.train_plan(epoch)
            for i in range(len(plan)):
                if step >= s["steps"]:
                    break
                b = plan[i]
                model.train()
                loss = F.mse_loss(predict(model, b["x"].to(device), b["lengths"], naive), b["y"].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
            epoch += 1
        model.eval()
        with torch.no_grad():
            sq, n = 0.0, 0
            for start in range(0, len(valid), 256):
                x, lengths, y = valid.get_batch(torch.arange(start, min(start + 256, len(valid))))
                err = predict(model, x.to(device), lengths, naive) - y.to(device)
                sq, n = sq + float(err.pow(2).sum()), n + err.numel()
        result.update(valid_mse=sq / n, diverged=not math.isfinite(sq), steps=step, loss_curve=curve(losses))
        if s["norm"] == "batch":
            result["trained"] = distortion(model, px, plen)
        result["trained_output_diff"] = output_difference(model, px, plen)
        return result

    def _mse(self, records: list[Record]) -> dict:
        return group(records, lambda k: (k["norm"], k["padding"]), lambda r: r["valid_mse"])

    def _bn_distortion(self, records: list[Record], when: str) -> list[float]:
        return [max(r.result[when]["mean_shift"], r.result[when]["log_var_ratio"]) for r in records
                if r.key["norm"] == "batch" and r.key["padding"] == "masked" and when in r.result]

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        mse = self._mse(records)
        dist = self._bn_distortion(records, "init")
        dist_trained = self._bn_distortion(records, "trained")
        ln_diff = max((max(r.result["init_output_diff"], r.result["trained_output_diff"]) for r in records
                       if r.key["norm"] == "layer"), default=float("nan"))
        arm = lambda p: per_seed(records, lambda r: r["valid_mse"],  # noqa: E731
                                 lambda k: k["norm"] == "batch" and k["padding"] == p)
        cost = paired(arm("naive"), arm("masked"))  # naive - masked MSE: > 0, naive is worse
        mechanism = one_sample([d - DISTORTION for d in dist])  # > 0: distorted beyond 0.10 SD
        part = status(cost, MSE_MARGIN)
        numbers = {"distortion_init": mean(dist), "distortion_trained": mean(dist_trained), "ln_output_diff": ln_diff,
                   "cost": cost.to_dict(), "distortion": mechanism.to_dict(), "status": part,
                   "mse": {f"{n}/{p}": mean(v) for (n, p), v in mse.items()}}
        effect = (f"BN statistics with padding counted are off by {mean(dist):.2f} (init) / "
                  f"{mean(dist_trained):.2f} (trained) SD; LN output difference {ln_diff:.1e} (by construction); "
                  f"naive - masked BN valid MSE {cost.text(4)}")
        if not ln_diff <= LN_TOLERANCE:
            return Verdict(CONTRADICTED, effect, f"LN's outputs change by {ln_diff:.1e} when the lengths are "
                                                 f"dropped: the identity it holds by construction is broken.", numbers)
        if status(mechanism, 0.0) == OPPOSITE:
            return Verdict(NOT_SHOWN, effect, f"Counting the padding moves BN's statistics by less than {DISTORTION} "
                                              f"standard deviations (95% CI): the mechanism is absent here.", numbers)
        label = label_for(part)
        words = {SUPPORTED: "Counting the padding distorts BN's statistics and BN trained on the distorted statistics "
                            f"does worse by more than {MSE_MARGIN} MSE; LN is unaffected by construction.",
                 CONTRADICTED: "BN that counts the padding trains better than masked BN.",
                 NOT_SHOWN: "Counting the padding distorts BN's statistics, but the cost in valid MSE is within "
                            f"±{MSE_MARGIN}: the model adapts to the statistics it trains with."}
        return Verdict(label, effect, words.get(label, "Whether the distortion costs accuracy is within the "
                                                       "seed-to-seed spread."), numbers)

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        m = mean([r.result["valid_mse"] for r in records if r.key["norm"] == "batch" and
                  r.key["padding"] == "masked" and not r.result.get("diverged")])
        return m < BASELINE_MSE / 2, (f"masked BN's valid MSE {m:.3f} (learnt the task below {BASELINE_MSE / 2:.3f}, "
                                      f"half the always-1 baseline)")

    def table(self, records: list[Record]):
        rows = []
        for variant in VARIANTS:
            recs = [r for r in records if (r.key["norm"], r.key["padding"]) == variant]
            if not recs:
                continue
            if variant[0] == "batch":
                init = fmt([max(r.result["init"]["mean_shift"], r.result["init"]["log_var_ratio"]) for r in recs])
                trained = fmt([max(r.result["trained"]["mean_shift"], r.result["trained"]["log_var_ratio"])
                               for r in recs])
            else:
                init = trained = "– (per sample)"
            diff = max(max(r.result["init_output_diff"], r.result["trained_output_diff"]) for r in recs)
            rows.append([LABELS[variant], fmt([r.result["valid_mse"] for r in recs], 4), init, trained,
                         f"{diff:.1e}"])
        return (["variant", "valid MSE", "stat. distortion at init (SD)", "after training (SD)",
                 "max |output with - without lengths|"], rows)

    def figure(self, records: list[Record], ax) -> None:
        recs = [r for r in records if r.key["norm"] == "batch" and r.key["padding"] == "masked"]
        if not recs:
            return
        for when, style in (("init", "-"), ("trained", "--")):
            for field, label in (("per_step_mean_shift", "|Δ mean| / SD"), ("per_step_log_var_ratio",
                                                                           "|log var ratio|")):
                avg = [mean(col) for col in zip(*(r.result[when][field] for r in recs))]
                ax.plot(range(len(avg)), avg, style, label=f"{label}, {when}")
        pad = recs[0].result["init"]["padding_fraction"]
        ax.plot(range(len(pad)), pad, ":", color="grey", label="fraction padded")
        ax.set_xlabel("time step")
        ax.set_ylabel("BN statistics: padding counted vs excluded")
        ax.legend(fontsize="small")

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if not n:
            return {}
        mse = n["mse"]
        return {"Padding": {
            "BN": (f"statistics off by {n['distortion_init']:.2f} SD if padding counted (masked in normrnn); MSE "
                   f"{mse.get('batch/masked', float('nan')):.3f} masked vs {mse.get('batch/naive', float('nan')):.3f}"),
            "LN": f"unaffected (max output difference {n['ln_output_diff']:.0e})"}}


CLAIM = Padding()
