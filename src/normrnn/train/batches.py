"""Deterministic batch plans over ``normrnn.data``'s batchers: an epoch's batches are a pure function of
(seed, epoch).

A :class:`BatchPlan` is a lazy, indexable list of batches, so resuming at batch ``i`` of an epoch costs nothing
(``plan[i]`` builds only that batch) and a later DDP issue can shard a plan per rank (:func:`shard`).
A batch is a dict of CPU tensors; the trainer moves it to the device.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from ..data import BatchIterator, StreamBatcher

Batch = dict[str, Tensor]


class BatchPlan:
    """``len(plan)`` batches; ``plan[i]`` builds batch ``i``. ``make(i) -> Batch`` must be deterministic."""

    def __init__(self, count: int, make: Callable[[int], Batch]) -> None:
        self.count, self.make = count, make

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Batch:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.make(i)


def shard(plan: BatchPlan, rank: int, world: int) -> BatchPlan:
    """The batches rank ``rank`` of ``world`` trains on: every ``world``-th batch starting at ``rank``.

    The DDP seam: with world=1 it is the plan itself. (Equal counts per rank, so no rank waits at an epoch's end.)
    """
    if world == 1:
        return plan
    count = len(plan) // world
    return BatchPlan(count, lambda i: plan[i * world + rank])


def minibatches(dataset: Any, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False, bucket: Optional[int] = None) -> BatchPlan:
    """Mini-batches ``{"x", "lengths", "y"}`` of a ``normrnn.data`` dataset (anything with ``get_batch(idx) ->
    (x, lengths, y)``), in the order ``normrnn.data.BatchIterator`` draws from (seed, epoch); ``bucket=k`` groups
    similar lengths. Batches come trimmed to their longest sequence."""
    indices = BatchIterator(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            bucket=bucket).batch_indices(epoch)

    def make(i: int) -> Batch:
        x, lengths, y = dataset.get_batch(indices[i])
        return {"x": x, "lengths": lengths, "y": y}

    return BatchPlan(len(indices), make)


def stream_plan(ids: Tensor, batch_size: int, seq_len: int, drop_last: bool) -> BatchPlan:
    """Char-LM batches ``{"x": (B, T), "y": (B, T)}`` from ``normrnn.data.StreamBatcher``: ``batch_size``
    contiguous streams read ``seq_len`` at a time, so row ``b`` of consecutive batches continues the same text
    and the model may carry its state across them (truncated BPTT). The order is fixed: every epoch is the same
    sequence of batches. ``drop_last`` drops a shorter final chunk (training keeps every step the same shape)."""
    streams = StreamBatcher(ids, batch_size, seq_len, drop_last=drop_last)

    def make(i: int) -> Batch:
        x, y = streams.batch(i)
        return {"x": x, "y": y}

    return BatchPlan(len(streams), make)
