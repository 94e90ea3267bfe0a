"""Seams for multi-process training (a later issue adds DDP). Today every function is the single-process case.

* :func:`wrap_model`: where ``DistributedDataParallel`` will wrap the model;
* :func:`shard` (from :mod:`.batches`): which batches a rank trains on;
* :func:`all_reduce_mean`: averaging a metric over ranks;
* ``TrainConfig.is_main_process``: only rank 0 logs, evaluates and checkpoints.
"""
from __future__ import annotations

from torch import nn

from .batches import shard
from .config import TrainConfig


def wrap_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The module the loop calls. Single process: the model itself."""
    if config.world_size != 1:
        raise NotImplementedError("multi-process training is not implemented yet (world_size must be 1)")
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a wrapper (for state dicts and evaluation)."""
    return getattr(model, "module", model)


def all_reduce_mean(value: float, config: TrainConfig) -> float:
    """Mean of ``value`` over ranks. Single process: ``value``."""
    return value


__all__ = ["wrap_model", "unwrap_model", "all_reduce_mean", "shard"]
