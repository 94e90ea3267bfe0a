"""C7 Distributed: LN needs no cross-device synchronisation; BN needs synchronised statistics, which cost time.

Experiment: :func:`normrnn.bench.sync_cost.measure_sync_cost` trains the same small LSTM on the adding problem with
DistributedDataParallel at 2 ranks (gloo over loopback, one thread each), per-rank batch 2, with LN, BN using each
rank's own statistics, and BN with statistics all-reduced at every time step. One launch per seed.
"""
from __future__ import annotations

from pathlib import Path

from ..core import Claim, Experiment, Record, StudyContext, Verdict
from ..stats import compare, fmt, group, mean

VARIANTS = (("ln", "LN"), ("bn_local", "BN, local stats"), ("bn_local_reference", "BN, local, reference loop"),
            ("bn_sync", "BN, synced stats"))
MSE_MARGIN = 0.005  # valid MSE of the adding problem (predicting 1 scores 1/6 ≈ 0.167)
TIME_MARGIN = 1.05  # a synchronisation that costs under 5% of a step is not a cost worth a claim


class Distributed(Claim):
    id = "C7"
    title = "Distributed training"
    statement = ("LN needs no cross-device synchronisation; BN needs synchronised statistics, which cost time.")
    hypothesis = ("At 2 ranks with small per-rank batches, (a) LN all-reduces nothing beyond DDP's gradients, (b) BN "
                  "with synced statistics reaches a lower valid MSE than BN with per-rank statistics, and (c) syncing "
                  "makes a training step slower than the same loop without it.")
    metric = "valid MSE (eval mode) after a fixed number of steps; step time; bytes all-reduced per step"
    rule = ("supported if LN sends no norm traffic, synced BN beats local BN by more than 0.005 MSE and 2 standard "
            "errors, and synced steps are more than 5% slower than local steps of the same loop (all seeds); "
            "depends if only the accuracy part or only the cost part holds; refuted if neither holds or LN sends "
            "norm traffic; inconclusive when the accuracy comparison is within noise and the cost part alone holds.")

    def steps(self, ctx: StudyContext) -> int:
        return ctx.pick(smoke=8, quick=100, full=1000)

    def describe_setup(self, ctx: StudyContext) -> str:
        return (f"2 processes (gloo, 127.0.0.1), LSTM with 32 units on the adding problem (20 steps), per-rank "
                f"batch 2 (global 4), {self.steps(ctx)} updates, Adam 5e-3, seeds {ctx.seed_list}. Synced layers run "
                "the reference loop (the fused kernels cannot all-reduce), so 'BN, local, reference loop' is the "
                "same loop without communication.")

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        return [Experiment({"seed": s}, {"claim": self.id, "seed": s, "steps": self.steps(ctx), "world": 2,
                                         "batch_per_rank": 2, "profile": ctx.profile}) for s in ctx.seed_list]

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        from ...bench.sync_cost import measure_sync_cost

        s = exp.spec
        report = measure_sync_cost(world=s["world"], batch_per_rank=s["batch_per_rank"], steps=s["steps"],
                                   warmup=min(5, s["steps"] // 2), seed=s["seed"])
        return {name: {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
                for name, r in report["variants"].items()}

    def _values(self, records: list[Record], variant: str, field: str) -> list[float]:
        return group(records, lambda k: 0, lambda r: r[variant][field])[0]

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        ln_bytes = max(self._values(records, "ln", "norm_allreduce_bytes_per_step"))
        acc = compare(self._values(records, "bn_sync", "valid_mse"), self._values(records, "bn_local", "valid_mse"),
                      higher_is_better=False)  # positive: synced BN better
        slow = [s / r for s, r in zip(self._values(records, "bn_sync", "step_ms"),
                                      self._values(records, "bn_local_reference", "step_ms"))]
        sync_bytes = mean(self._values(records, "bn_sync", "norm_allreduce_bytes_per_step"))
        numbers = {"ln_norm_bytes": ln_bytes, "accuracy": acc, "slowdown": slow, "sync_bytes": sync_bytes}
        effect = (f"synced - local BN valid MSE {-acc['diff']:+.4f} (± {acc['se']:.4f}); synced step "
                  f"{mean(slow):.2f}x the same loop unsynced; {sync_bytes / 1024:.0f} KiB of statistics per step; "
                  f"LN {ln_bytes:.0f} B")
        accuracy = acc["diff"] > MSE_MARGIN and acc["z"] > 2
        cost = min(slow) > TIME_MARGIN
        if ln_bytes > 0:
            return Verdict("refuted", effect, "LN sent normalization traffic.", numbers)
        if accuracy and cost:
            return Verdict("supported", effect, "Synced statistics help small per-rank batches and cost time; LN "
                                                "needs neither.", numbers)
        if accuracy:
            return Verdict("depends", effect, "Syncing helps accuracy here, but its cost is below 5% of a step.",
                           numbers)
        if cost and acc["diff"] < -MSE_MARGIN and acc["z"] < -2:
            return Verdict("refuted", effect, "Syncing costs time but local statistics trained better.", numbers)
        if cost:
            return Verdict("inconclusive", effect, "Syncing costs time, but its effect on accuracy is within the "
                                                   "seed-to-seed spread at this budget.", numbers)
        return Verdict("refuted", effect, "Neither an accuracy gain nor a time cost was measured.", numbers)

    def table(self, records: list[Record]):
        rows = []
        for name, label in VARIANTS:
            rows.append([label, records[0].result[name]["backend"], fmt(self._values(records, name, "step_ms"), 1),
                         fmt(self._values(records, name, "valid_mse"), 4),
                         f"{mean(self._values(records, name, 'norm_allreduce_bytes_per_step')):.0f}",
                         f"{mean(self._values(records, name, 'ddp_grad_bytes_per_step')):.0f}"])
        return ["variant", "loop", "step ms", "valid MSE", "norm bytes/step", "DDP grad bytes/step"], rows

    def figure(self, records: list[Record], ax) -> None:
        labels = [label for _, label in VARIANTS]
        times = [mean(self._values(records, name, "step_ms")) for name, _ in VARIANTS]
        ax.bar(range(len(labels)), times, color=["#4c72b0", "#dd8452", "#c44e52", "#55a868"])
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("step time (ms, 2 ranks)")
        ax2 = ax.twinx()
        ax2.plot(range(len(labels)), [mean(self._values(records, name, "valid_mse")) for name, _ in VARIANTS],
                 "ko-", label="valid MSE")
        ax2.set_ylabel("valid MSE")
        ax2.legend(loc="upper left", fontsize=8)

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict:
        n = verdict.numbers
        if not n:
            return {}
        return {"Distributed (2 ranks)": {
            "BN": f"sync sends {n['sync_bytes'] / 1024:.0f} KiB/step, {mean(n['slowdown']):.1f}x step time",
            "LN": f"no sync needed ({n['ln_norm_bytes']:.0f} B of statistics)"}}


CLAIM = Distributed()
