"""Per-step masked moments of a batch, on this process or over the whole process group.

Recurrent batch norm (:mod:`normrnn.norms`) takes the count, mean and biased variance of each time step from
here: :func:`local_moments` from this rank's batch, :func:`global_moments` from the batches of every rank. In
forward that is one all-reduce of ``[count, sum, sum of squares]`` per call (a ``(T, 2F+1)`` tensor: ``T`` steps
at once for the input term, one step for the recurrent and cell norms); in backward one all-reduce of the
gradients of the mean and variance (``(T, 2F)``), because the global statistics depend on every rank's inputs.
The result: R ranks with batch B each compute the outputs and gradients of one process with batch R·B.
:mod:`normrnn.sync` turns this on in a model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor


def local_moments(x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """This process's per-step count (T, 1), masked mean (T, F) and biased variance (T, F) of x (T, N, F)."""
    if mask is None:
        count = torch.full((x.shape[0], 1), x.shape[1], dtype=x.dtype, device=x.device)
        mean = x.mean(1)
        var = (x - mean.unsqueeze(1)).pow(2).mean(1)
    else:
        # Selection, not a product with the 0/1 mask: padding holding NaN or inf must not reach the statistics
        # (0 * NaN is NaN).
        keep = mask.unsqueeze(-1)  # (T, N, 1)
        count = keep.sum(1, dtype=x.dtype)  # (T, 1)
        mean = torch.where(keep, x, 0).sum(1) / count.clamp(min=1)
        var = torch.where(keep, x - mean.unsqueeze(1), 0).pow(2).sum(1) / count.clamp(min=1)
    return count, mean, var


@dataclass
class CommCounter:
    """How many all-reduces this process issued through :func:`all_reduce_sum`, and how many bytes they carried."""

    calls: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.calls, self.bytes = 0, 0

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# Process-wide, so a benchmark can read what the norms sent during one training step.
COUNTER = CommCounter()


def is_active(process_group: Optional[object] = None) -> bool:
    """Whether there is a process group of more than one rank to synchronise over."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def all_reduce_sum(t: Tensor, process_group: Optional[object] = None) -> Tensor:
    """Sum ``t`` over the group in place (and return it), counting the call and its bytes in :data:`COUNTER`."""
    COUNTER.calls += 1
    COUNTER.bytes += t.numel() * t.element_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group)
    return t


class _GlobalMoments(torch.autograd.Function):
    """Masked per-step count, mean and biased variance over the batches of every rank.

    Forward: x (T, N, F), w (T, N, 1) the mask as 0/1 in x's dtype -> count (T, 1), mean (T, F), var (T, F).
    Backward: the local gradients of mean and var are summed over ranks (every rank's loss depends on every
    rank's x through them), then d mean/dx_i = w_i / C and d var/dx_i = 2 w_i (x_i - mean) / C.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, process_group: Optional[object]):  # type: ignore[override]
        F = x.shape[-1]
        # Padded positions leave by selection, not by the product with w alone: 0 * NaN (or inf) is NaN.
        x = torch.where(w > 0, x, 0)
        wx = x * w
        # One message per call: [count | sum | sum of squares], (T, 2F+1).
        local = torch.cat([w.sum(1), wx.sum(1), (wx * x).sum(1)], dim=-1)
        total = all_reduce_sum(local, process_group)
        count = total[:, :1]
        denom = count.clamp(min=1)
        mean = total[:, 1:F + 1] / denom
        # E[x^2] - E[x]^2 can round below zero when the variance is tiny next to the mean.
        var = (total[:, F + 1:] / denom - mean.pow(2)).clamp(min=0)
        ctx.process_group = process_group
        ctx.save_for_backward(x, w, mean, denom)
        ctx.mark_non_differentiable(count)
        return count, mean, var

    @staticmethod
    def backward(ctx, _dcount: Tensor, dmean: Tensor, dvar: Tensor):  # type: ignore[override]
        x, w, mean, denom = ctx.saved_tensors
        F = x.shape[-1]
        grads = all_reduce_sum(torch.cat([dmean, dvar], dim=-1).contiguous(), ctx.process_group)  # (T, 2F)
        dmean, dvar = grads[:, :F].unsqueeze(1), grads[:, F:].unsqueeze(1)
        dx = w * (dmean + 2.0 * (x - mean.unsqueeze(1)) * dvar) / denom.unsqueeze(1)
        return dx, None, None


def global_moments(x: Tensor, mask: Optional[Tensor], process_group: Optional[object] = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-step masked statistics of ``x`` over all ranks of ``process_group`` (``None``: the default group).

    x: (T, N, F); mask: (T, N) bool or None (every position counts).
    Returns count (T, 1), mean (T, F) and biased variance (T, F), differentiable in ``x``.
    """
    w = x.new_ones(x.shape[0], x.shape[1], 1) if mask is None else mask.to(x.dtype).unsqueeze(-1)
    return _GlobalMoments.apply(x, w, process_group)


__all__ = ["COUNTER", "CommCounter", "all_reduce_sum", "global_moments", "is_active", "local_moments"]
