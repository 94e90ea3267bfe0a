"""Synchronised recurrent batch norm: per-step statistics over the whole process group.

With ``sync_stats=True`` a :class:`~normrnn.norms.RecurrentBatchNorm` asks
:func:`normrnn.moments.global_moments` for the mean and variance of each time step instead of computing them
from its own rank's batch (one all-reduce per call forward and one backward; the fused loops make the same calls
through their reducer, :mod:`normrnn.fused.contract`). :func:`sync_batch_norm` turns
that on in a built model; the collective primitives are re-exported here from :mod:`normrnn.moments`.

``torch.nn.SyncBatchNorm`` does the same for feed-forward batch norm, but only on CUDA and without time steps or
padding; this works on any backend (gloo on CPU, NCCL on CUDA) and keeps padded positions out of the statistics.

Every rank must make the same sequence of calls (same layers, same number of time steps): the trainer pads each
step's batches to the longest sequence across ranks (:func:`normrnn.train.distributed.pad_to_common_length`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from torch import nn

from .moments import COUNTER, CommCounter, all_reduce_sum, global_moments, is_active
from .norms import RecurrentBatchNorm


def sync_batch_norm(module: nn.Module, process_group: Optional[object] = None, enabled: bool = True) -> nn.Module:
    """Turn synchronised statistics on (or off) in every recurrent batch norm inside ``module``, in place.

    The normrnn counterpart of ``nn.SyncBatchNorm.convert_sync_batchnorm``: nothing is replaced, the norms and
    the layers' ``options`` get ``sync_stats=enabled``, so state dicts are unchanged. Layers with synced batch
    norm keep their loop: the fused engines all-reduce each step's sums through the loop's reducer
    (:mod:`normrnn.fused.contract`), the reference loop per norm call (:func:`global_moments`). Per-sample norms
    (layer, RMS) need nothing and are left alone.
    Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, RecurrentBatchNorm):
            m.sync_stats = bool(enabled)
            m.process_group = process_group if enabled else None
        options = getattr(m, "options", None)
        if options is not None and hasattr(options, "sync_stats") and options.norm == "batch":
            m.options = dataclasses.replace(options, sync_stats=bool(enabled))
    return module


__all__ = ["COUNTER", "CommCounter", "all_reduce_sum", "global_moments", "is_active", "sync_batch_norm"]
