"""``normrnn study --dry-run``: what a study would run, without training or fetching anything.

For each claim: the number of runs, how many are already in the run cache of ``--out``, the models and budgets
the remaining ones train (from :meth:`Claim.train_plans`), how many learning-rate searches they start, and how many
updates that is in all, so a user can see what a profile costs before starting it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .core import Claim, Experiment, StudyContext
from .experiments import LR_GRID, TrainPlan, load_searches, tuning_key
from .runner import SEARCHES, RunCache

SEARCH_FRACTION = 0.2  # choose_lr's default: each trial runs this fraction of the run's updates
SEQUENCE = {"pixel": "784 steps of 1 pixel", "permuted": "784 steps of 1 pixel, permuted", "row": "28 steps of a row",
            "cnn": "CNN, then 7 steps"}


@dataclass
class ClaimPlan:
    claim: Claim
    experiments: list[Experiment]
    cached: list[bool]
    plans: list[list[TrainPlan]]  # per experiment
    searches: int = 0  # learning-rate searches the runs still to do would start
    updates: int = 0  # updates of the runs still to do
    search_updates: int = 0  # updates of those searches' trials
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.experiments)

    @property
    def n_cached(self) -> int:
        return sum(self.cached)


def estimated_steps(cfg) -> int:
    """The updates of an epoch-based run (no ``max_steps``), estimated without loading its data: epochs × the batches
    of 80% of ``limit`` examples (5,000 when unlimited)."""
    return cfg.epochs * max(1, (cfg.limit or 5000) * 4 // 5 // cfg.batch_size)


def plan_claims(claims: list[Claim], ctx: StudyContext, out: Path) -> list[ClaimPlan]:
    """Every claim's runs, their cache state under ``out``, and what the remaining ones would train."""
    cache = RunCache(Path(out) / "runs")
    searched = load_searches(cache.root / SEARCHES)
    result = []
    for claim in claims:
        exps = claim.experiments(ctx)
        cp = ClaimPlan(claim, exps, [cache.get(claim, e) is not None for e in exps],
                       [claim.train_plans(e, ctx) for e in exps])
        searches: dict[str, int] = {}
        for done, plans in zip(cp.cached, cp.plans):
            if done:
                continue
            for p in plans:
                steps = p.cfg.max_steps or estimated_steps(p.cfg)
                cp.updates += steps
                if p.tune_lr and tuning_key(p.cfg, p.variant) not in searched:
                    searches[tuning_key(p.cfg, p.variant)] = len(LR_GRID) * max(1, int((steps or 200)
                                                                                       * SEARCH_FRACTION))
        cp.searches, cp.search_updates = len(searches), sum(searches.values())
        result.append(cp)
    return result


def _span(values) -> str:
    vals = sorted(set(v for v in values if v is not None))
    if not vals:
        return "–"
    if len(vals) <= 4:
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals)
    return f"{vals[0]}…{vals[-1]} ({len(vals)} values)"


def _sequence(cfg) -> str:
    if cfg.task == "image":
        return SEQUENCE.get(cfg.image_mode, cfg.image_mode)
    if cfg.task == "charlm":
        return f"BPTT {cfg.seq_len}"
    if cfg.task == "classify":
        return f"≤ {cfg.seq_len} tokens"
    return f"{cfg.seq_len} steps"


def model_lines(plans: list[TrainPlan]) -> list[str]:
    """One line per distinct model (task, data, sequence, cell, depth, width): norms, batch sizes, updates,
    optimizer and whether the learning rate is searched."""
    groups: dict[tuple, list] = {}
    for p in plans:
        c = p.cfg
        sig = (c.task, c.data_name, _sequence(c), c.cell.upper(), c.hidden, c.layers, c.residual)
        groups.setdefault(sig, []).append(p)
    lines = []
    for (task, data, seq, cell, hidden, layers, residual), ps in groups.items():
        cfgs = [p.cfg for p in ps]
        tuned = {p.tune_lr for p in ps}
        variants = sorted({f"{k}={v}" for p in ps for k, v in p.variant.items()})
        lines.append(
            f"{task} on {data} ({seq}): {cell} {hidden} units × {layers} layer{'s' if layers > 1 else ''}"
            f"{' (residual)' if residual else ''}; norm {_span(c.norm for c in cfgs)}"
            + (f"; variants {', '.join(variants)}" if variants else "")
            + f"; batch {_span(c.batch_size for c in cfgs)}; updates {_span(c.max_steps for c in cfgs)}; "
            f"{_span(c.optimizer for c in cfgs)} {_span(c.lr for c in cfgs)}, clip {_span(c.clip for c in cfgs)}; "
            + ("lr searched" if tuned == {True} else "lr as given" if tuned == {False} else "lr searched for some"))
    return lines


def format_plan(plans: list[ClaimPlan], ctx: StudyContext) -> str:
    out = [f"normrnn study --dry-run: profile {ctx.profile}, {ctx.seeds} seed{'s' if ctx.seeds > 1 else ''}; "
           f"nothing is trained. 'updates' counts optimizer steps of the runs not yet cached (and of the "
           f"learning-rate searches they would start: {len(LR_GRID)} trials at {SEARCH_FRACTION:.0%} of a run's "
           f"updates per compared setting)."]
    total = {"runs": 0, "cached": 0, "updates": 0, "search": 0}
    for cp in plans:
        c = cp.claim
        todo = cp.runs - cp.n_cached
        out.append("")
        out.append(f"{c.id} {c.title}: {cp.runs} runs, {cp.n_cached} cached, {todo} to run"
                   + (f"; {cp.updates:,} updates" if cp.updates else "")
                   + (f" + {cp.search_updates:,} in {cp.searches} learning-rate search"
                      f"{'es' if cp.searches != 1 else ''}" if cp.searches else ""))
        lines = model_lines([p for ps in cp.plans for p in ps])
        out += [f"    {line}" for line in lines]
        untrained = sum(1 for ps in cp.plans if not ps)
        if untrained:
            out.append(f"    {untrained} run{'s' if untrained > 1 else ''} without training through the trainer"
                       + (f": {c.describe_setup(ctx)}" if not lines else " (measurements of their own: see the "
                                                                           "claim's setup)"))
        if ctx.profile == "full" and c.paper_deviations:
            out.append("    departs from the paper set-up: " + "; ".join(f"{k}: {why}" for k, why
                                                                        in c.paper_deviations.items()))
        total["runs"] += cp.runs
        total["cached"] += cp.n_cached
        total["updates"] += cp.updates
        total["search"] += cp.search_updates
    out.append("")
    out.append(f"total: {total['runs']} runs, {total['cached']} cached, {total['runs'] - total['cached']} to run; "
               f"{total['updates']:,} updates + {total['search']:,} in learning-rate searches.")
    return "\n".join(out)


__all__ = ["ClaimPlan", "plan_claims", "format_plan", "model_lines"]
