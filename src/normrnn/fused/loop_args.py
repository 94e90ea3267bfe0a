"""From a cell's norm modules to what the engines read, and back: norm kinds, gains, given statistics, and the
running averages after a call.

The engines see norms as a kind (an int of :mod:`normrnn.fused.contract`), a gain and, for batch norm, per-step
statistics; this module is the one translation between the two.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import moments
from ..norms import IdentityNorm, LayerNorm, RecurrentBatchNorm, RMSNorm
from .contract import BATCH, BATCH_FIXED, LAYER, NONE, RMS, Engine, Fixed, Stats


def kind_of(norm: Optional[nn.Module]) -> int:
    """The engine's norm kind for a norm module (``None``: no norm)."""
    if norm is None or isinstance(norm, IdentityNorm):
        return NONE
    if isinstance(norm, LayerNorm):
        return LAYER
    if isinstance(norm, RMSNorm):
        return RMS
    if isinstance(norm, RecurrentBatchNorm):
        return BATCH if norm.training else BATCH_FIXED
    raise TypeError(f"no fused kernel for norm {type(norm).__name__}")


def gain_of(norm: Optional[nn.Module]) -> Optional[Tensor]:
    return None if norm is None or isinstance(norm, IdentityNorm) else norm.weight


def bias_of(norm: Optional[nn.Module]) -> Optional[Tensor]:
    return getattr(norm, "bias", None)


def or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An absent tensor as the engines take it: empty."""
    return like.new_empty(0) if t is None else t


def fixed_stats(norm: Optional[nn.Module], steps: Tensor, like: Tensor) -> Fixed:
    """Batch norm's per-step running statistics (T, F), read where batch statistics are unusable or in eval;
    empty for other norms."""
    if not isinstance(norm, RecurrentBatchNorm):
        return Fixed(like.new_empty(0), like.new_empty(0))
    return Fixed(*norm.running_statistics(steps))


def update_running(norm: Optional[nn.Module], stats: Stats, steps: Tensor, eng: Engine) -> None:
    """Batch norm's running averages after a training call over the consecutive ``steps``, from the statistics
    (T, F) and counts (T,) an engine reported."""
    if not (isinstance(norm, RecurrentBatchNorm) and norm.training):
        return
    with torch.no_grad():
        if not eng.has_input_kernels:
            norm.update_running(stats.mean, stats.var, stats.count, steps)
            return
        # The same update in one native pass, instead of a dozen small ATen calls per norm.
        longest = eng.bn_update_running_(norm.running_mean, norm.running_var, stats, int(steps[0]), norm.momentum)
        if longest > int(norm.steps_tracked):
            norm.steps_tracked.fill_(longest)


class Reducer:
    """A loop's ``reduce`` for synchronised batch norm (:mod:`normrnn.fused.contract`): sums a flat tensor over
    ``process_group`` in place through :func:`normrnn.moments.all_reduce_sum`, which counts the call and its
    bytes in :data:`normrnn.moments.COUNTER`."""

    __slots__ = ("process_group",)

    def __init__(self, process_group: Optional[object] = None) -> None:
        self.process_group = process_group

    def __call__(self, buf: Tensor) -> None:
        moments.all_reduce_sum(buf, self.process_group)

    def __repr__(self) -> str:
        return f"Reducer({self.process_group!r})"


def reducer(*norms: Optional[nn.Module]) -> Optional[Reducer]:
    """The loop's reducer when one of its norms trains batch norm with synchronised statistics under a process
    group of more than one rank (the norms of one layer share the group: :func:`normrnn.sync.sync_batch_norm`
    sets it on all of them), else ``None``."""
    for norm in norms:
        if (isinstance(norm, RecurrentBatchNorm) and norm.training and norm.sync_stats
                and moments.is_active(norm.process_group)):
            return Reducer(norm.process_group)
    return None


def syncs(norm: Optional[nn.Module]) -> bool:
    """Whether ``norm`` is a training batch norm whose statistics are synchronised now."""
    return reducer(norm) is not None
