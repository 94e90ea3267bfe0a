"""Multi-process training: the process group, DDP, each rank's share of the data and the few collectives the
trainer needs. With ``world_size == 1`` every function is the single-process case and touches no process group.

* :func:`init_distributed` / :func:`shutdown`: the process group (gloo on CPU, NCCL on CUDA), with a timeout so a
  lost worker ends the job with an error instead of a hang;
* :func:`wrap_model`: ``DistributedDataParallel`` (after turning on synced batch norm when asked);
* :func:`rank_plan`: the batches a rank trains on: every ``world``-th mini-batch (:func:`shard`), or for the
  char-LM stream ``batch_size`` of the ``world·batch_size`` parallel streams, so truncated BPTT still carries
  each stream's state into its next chunk;
* :func:`pad_to_common_length`: synced batch norm makes one all-reduce per time step, so every rank must run
  the same number of steps;
* :func:`all_reduce_mean`, :func:`broadcast_object`, :func:`gather_objects`: metrics, eval results and the
  per-rank state a checkpoint needs;
* ``TrainConfig.is_main_process``: only rank 0 logs, evaluates and checkpoints.

Launch with ``torchrun --nproc_per_node N -m normrnn train ...`` or ``normrnn train --nproc N ...``.
"""
from __future__ import annotations

import inspect
import os
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..multiproc import close_process_group
from ..sync import sync_batch_norm
from .batches import Batch, BatchPlan, shard, stream_plan
from .config import TrainConfig


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from the variables torchrun sets; (0, 1) outside a launcher."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def init_distributed(config: TrainConfig, device: torch.device) -> bool:
    """Join the process group of ``config.world_size`` ranks (env:// rendezvous: MASTER_ADDR, MASTER_PORT, as
    torchrun sets them). Returns whether this call created it (so the caller knows to destroy it).

    ``config.dist_timeout`` seconds bound every collective: a rank that dies or stops answering makes the
    others raise rather than wait forever (torchrun then stops the job with the failing rank's error).
    """
    if config.world_size == 1 or dist.is_initialized():
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=config.rank, world_size=config.world_size,
                            timeout=timedelta(seconds=config.dist_timeout))
    return True


def shutdown(created: bool) -> None:
    """Destroy the process group if :func:`init_distributed` created it (at the end of a run that succeeded)."""
    if created:
        close_process_group()


def wrap_model(model: nn.Module, config: TrainConfig, device: Optional[torch.device] = None) -> nn.Module:
    """The module the loop calls: the model itself for one process, else the model in DDP.

    With ``sync_stats`` the recurrent batch norms all-reduce their statistics (:func:`normrnn.sync.sync_batch_norm`);
    their running statistics then agree on every rank, so DDP need not broadcast buffers. Without it each
    rank keeps its own running statistics and rank 0's are the ones evaluated and checkpointed.
    """
    if config.world_size == 1:
        return model
    if not dist.is_initialized():
        raise RuntimeError("world_size > 1 needs an initialised process group (see init_distributed)")
    if config.sync_stats:
        sync_batch_norm(model)
    ids = [device] if device is not None and device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **no_buffer_sync())


def no_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast rank 0's buffers before every forward", in this torch version
    (``forward_sync_buffers`` replaced ``broadcast_buffers``; the buffers agree at init either way: same seed)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a wrapper (for state dicts and evaluation)."""
    return getattr(model, "module", model)


def rank_plan(task: Any, epoch: int, config: TrainConfig) -> BatchPlan:
    """The batches this rank trains on in ``epoch``, each of ``config.batch_size`` rows.

    Char-LM: the text is cut into ``world·batch_size`` streams and rank ``r`` reads streams ``r·B .. r·B+B-1``;
    an epoch is then ``1/world`` as many steps, and R ranks together see exactly the batches of one process with
    batch ``R·B``. Other tasks: every ``world``-th mini-batch (:func:`shard`), a disjoint share per rank.
    """
    world, rank = config.world_size, config.rank
    if world == 1:
        return task.train_plan(epoch)
    splits = getattr(task, "splits", None)
    if config.task == "charlm" and splits is not None:
        B = config.batch_size
        total = B * world
        if len(splits["train"]) // total < 2:
            return BatchPlan(0, lambda i: {})
        full = stream_plan(splits["train"], total, config.seq_len, drop_last=True)
        return BatchPlan(len(full), lambda i: {k: v[rank * B:(rank + 1) * B] for k, v in full[i].items()})
    return shard(task.train_plan(epoch), rank, world)


def pad_to_common_length(batch: Batch, config: TrainConfig) -> Batch:
    """Pad a ``{"x", "lengths", ...}`` batch with zeros to the longest ``x`` on any rank (one tiny all-reduce).

    Synced batch norm makes one collective per time step, so every rank has to run as many steps; the padding is
    masked by ``lengths``, so it changes no output and no statistic. Batches without ``lengths`` pass as they are.
    """
    if config.world_size == 1 or not config.syncs_batch_norm or "lengths" not in batch:
        return batch
    x = batch["x"]
    longest = torch.tensor([x.shape[1]], dtype=torch.long, device=x.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    extra = int(longest) - x.shape[1]
    if extra == 0:
        return batch
    pad = [0, 0] * (x.dim() - 2) + [0, extra]  # x: (N, T) ids or (N, T, F) features; pad the time axis
    return {**batch, "x": F.pad(x, pad)}


def all_reduce_mean(value: float, config: TrainConfig, device: Optional[torch.device] = None) -> float:
    """Mean of ``value`` over ranks (every rank gets the same number). Single process: ``value``."""
    if config.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / config.world_size


def broadcast_object(obj: Any, config: TrainConfig) -> Any:
    """Rank 0's ``obj`` on every rank (pickled). Single process: ``obj``."""
    if config.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, config: TrainConfig) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank. Single process: ``[obj]``."""
    if config.world_size == 1:
        return [obj]
    out: list[Any] = [None] * config.world_size
    dist.all_gather_object(out, obj)
    return out


__all__ = ["env_rank_world", "local_device", "init_distributed", "shutdown", "wrap_model", "unwrap_model",
           "rank_plan", "pad_to_common_length", "all_reduce_mean", "broadcast_object", "gather_objects", "shard",
           "no_buffer_sync"]
