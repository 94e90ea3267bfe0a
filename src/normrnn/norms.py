"""The normalizations a recurrent cell can use, behind one call signature.

Every norm is called as ``norm(x, step, mask)``:

* ``x``: ``(..., N, F)``, features last; for batch norm either ``(N, F)`` (one time step) or ``(T, N, F)``
  (``T`` consecutive steps starting at ``step``, so the input term of a whole sequence is normalized at once).
* ``step``: the time index of the first row block (only batch norm uses it).
* ``mask``: ``(N,)`` or ``(T, N)`` bool, ``True`` where a sequence is still running, or ``None`` (all valid).
  Layer norm and RMSNorm work per sample and step, so they ignore it; batch norm leaves padded positions out of
  its statistics.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import moments
from .tracing import is_exporting

NORM_KINDS = ("layer", "rms", "batch", "none")


class IdentityNorm(nn.Module):
    """``norm="none"``: leaves its input alone, so a normrnn layer reproduces the plain ``nn`` layer."""

    def forward(self, x: Tensor, step: int = 0, mask: Optional[Tensor] = None) -> Tensor:
        return x


class LayerNorm(nn.Module):
    """Layer normalization over the feature axis (Ba et al., 2016), per sample and per step."""

    def __init__(self, num_features: int, eps: float = 1e-5, gamma_init: float = 1.0, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init), device=device, dtype=dtype))
        # A gate pre-activation already gets the layer's bias_ih/bias_hh, so the term norms carry no beta.
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor, step: int = 0, mask: Optional[Tensor] = None) -> Tensor:
        return nn.functional.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Root-mean-square normalization (Zhang & Sennrich, 2019): no centring, gain only (bias optional)."""

    def __init__(self, num_features: int, eps: float = 1e-5, gamma_init: float = 1.0, bias: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor, step: int = 0, mask: Optional[Tensor] = None) -> Tensor:
        # (the fused backend normalizes the input term in one native pass instead: normrnn.fused.input_term)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, bias={self.bias is not None}"


class RecurrentBatchNorm(nn.Module):
    """Batch normalization with separate statistics for every time step (Cooijmans et al., 2017).

    Training: the mean and (biased) variance of step ``t`` are taken over the sequences still running at ``t``
    (``mask``), so padding never enters them; the running averages of step ``t`` are updated with the unbiased
    variance. Steps at or past ``max_steps`` share the statistics of the last kept step. A step where fewer than
    two sequences are running has no usable batch variance: it is normalized with that step's running statistics
    (and they are not updated), never with a NaN.

    Eval: the running statistics of step ``min(t, steps_tracked - 1)``, where ``steps_tracked`` is the longest
    training length seen (at most ``max_steps``), so test sequences longer than any training sequence reuse the
    last trained step's statistics rather than never-updated ones.

    Buffers: ``running_mean``/``running_var`` ``(max_steps, F)``, ``steps_tracked`` (scalar int64).

    ``sync_stats=True``: while a process group of more than one rank is initialised, the training statistics of
    each step are those of the batches of all ranks of ``process_group`` (``None``: the default group): count,
    sum and sum of squares are all-reduced in forward and the matching gradients in backward (:mod:`normrnn.moments`),
    and the running statistics, updated from the global ones, stay identical on every rank. Without a process
    group each rank uses its own batch, as without the flag.
    """

    def __init__(self, num_features: int, max_steps: int = 256, eps: float = 1e-5, momentum: float = 0.1,
                 gamma_init: float = 0.1, bias: bool = True, device=None, dtype=None, *,
                 sync_stats: bool = False, process_group: Optional[object] = None) -> None:
        super().__init__()
        self.num_features, self.max_steps, self.eps, self.momentum = num_features, max_steps, eps, momentum
        # Synchronised statistics (normrnn.sync): plain attributes, not state, so state dicts stay the same.
        self.sync_stats, self.process_group = bool(sync_stats), process_group
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(max_steps, num_features, device=device, dtype=dtype))
        self.register_buffer("steps_tracked", torch.zeros((), dtype=torch.long, device=device))

    def stat_index(self, steps: Tensor) -> Tensor:
        """Which row of the running statistics time steps ``steps`` (int64) read in eval mode."""
        last = torch.clamp(self.steps_tracked, min=1, max=self.max_steps) - 1
        return torch.minimum(steps, last)

    def running_statistics(self, steps: Tensor) -> tuple[Tensor, Tensor]:
        """The running mean and variance (T, F) that the consecutive time steps ``steps`` read: in training row
        min(t, max_steps - 1), in eval :meth:`stat_index`'s. Where every step reads its own row, views of the
        buffers (no (T, F) copies: three gathers per layer were a tenth of a small batch's inference)."""
        if steps.device.type == "cpu" and steps.numel() and not is_exporting():  # (int() would guard on data)
            first, last = int(steps[0]), int(steps[-1])
            own = self.max_steps if self.training else min(self.max_steps, max(int(self.steps_tracked), 1))
            if last < own:
                return self.running_mean[first:last + 1], self.running_var[first:last + 1]
        idx = torch.clamp(steps, max=self.max_steps - 1) if self.training else self.stat_index(steps)
        return self.running_mean[idx], self.running_var[idx]

    def forward(self, x: Tensor, step: int = 0, mask: Optional[Tensor] = None) -> Tensor:
        one_step = x.dim() == 2
        if one_step:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        # (step may be a 0-dim tensor: an exported streaming step takes its index as an input)
        steps = torch.arange(x.shape[0], device=x.device) + step
        if mask is not None:
            # Padded rows are normalized too (callers drop them), but what they hold must not reach a statistic or
            # a gradient: (NaN - mean) * rstd would make d rstd, and with it every row's gradient, NaN.
            x = torch.where(mask.unsqueeze(-1), x, 0)
        if self.training:
            mean, var = self._batch_statistics(x, steps, mask)
        else:
            mean, var = self.running_statistics(steps)
        y = (x - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + self.eps) * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.squeeze(0) if one_step else y

    def _batch_statistics(self, x: Tensor, steps: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-step masked mean and biased variance of ``x`` (T, N, F); updates the running averages."""
        if self.sync_stats and moments.is_active(self.process_group):
            count, mean, var = moments.global_moments(x, mask, self.process_group)  # the same on every rank
        else:
            count, mean, var = moments.local_moments(x, mask)
        idx = torch.clamp(steps, max=self.max_steps - 1)
        usable = count >= 2  # (T, 1)
        with torch.no_grad():
            self._update_running(mean, var, count, usable, steps, idx)
        fallback_mean, fallback_var = self.running_statistics(steps)
        return torch.where(usable, mean, fallback_mean), torch.where(usable, var, fallback_var)

    def update_running(self, mean: Tensor, var: Tensor, count: Tensor, steps: Tensor) -> None:
        """The running averages after a training call over the consecutive ``steps`` (T,), from its per-step
        statistics: mean and biased variance (T, F) and the count of running sequences (T,) or (T, 1). Steps
        with fewer than two sequences and steps at or past ``max_steps`` leave no trace."""
        count = count.reshape(-1, 1)
        self._update_running(mean, var, count, count >= 2, steps, torch.clamp(steps, max=self.max_steps - 1))

    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor, usable: Tensor, steps: Tensor,
                        idx: Tensor) -> None:
        m = self.momentum
        first, T = int(steps[0]), steps.shape[0]
        if first + T <= self.max_steps and bool(usable.all()) and bool((steps[1:] - steps[:-1] == 1).all()):
            # The usual case, consecutive steps that all own a row: update those rows in place, no temporaries
            # of the statistics' size (they raised the peak memory of small-batch training).
            rows = slice(first, first + T)
            self.running_mean[rows].lerp_(mean.detach(), m)
            self.running_var[rows].mul_(1 - m).addcmul_(var.detach(), m * count / (count - 1))
            if first + T > int(self.steps_tracked):
                self.steps_tracked.fill_(first + T)
            return
        # Only steps below max_steps own a row; later steps are normalized by their batch but leave no trace.
        own = (usable.squeeze(1) & (steps < self.max_steps)).nonzero().squeeze(1)
        if own.numel() == 0:
            return
        rows = idx[own]
        unbiased = var[own] * (count[own] / (count[own] - 1))
        self.running_mean[rows] = (1 - m) * self.running_mean[rows] + m * mean[own].detach()
        self.running_var[rows] = (1 - m) * self.running_var[rows] + m * unbiased.detach()
        longest = int(steps[own].max()) + 1
        if longest > int(self.steps_tracked):
            self.steps_tracked.fill_(longest)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, max_steps={self.max_steps}, eps={self.eps}, momentum={self.momentum}"
        return s + (", sync_stats=True" if self.sync_stats else "")


def make_norm(kind: str, num_features: int, *, eps: float, gamma_init: Optional[float], bias: bool,
              max_steps: int, momentum: float, device=None, dtype=None) -> nn.Module:
    """Build the norm named ``kind`` for ``num_features`` features (``gamma_init=None``: the kind's default)."""
    if kind == "none":
        return IdentityNorm()
    if gamma_init is None:
        gamma_init = 0.1 if kind == "batch" else 1.0
    if kind == "layer":
        return LayerNorm(num_features, eps, gamma_init, bias, device=device, dtype=dtype)
    if kind == "rms":
        return RMSNorm(num_features, eps, gamma_init, bias, device=device, dtype=dtype)
    if kind == "batch":
        return RecurrentBatchNorm(num_features, max_steps, eps, momentum, gamma_init, bias,
                                  device=device, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(map(repr, NORM_KINDS))}")
