"""The input term W_ih·x and its norm for all steps at once, on an engine's kernels where it has them, and the
memory inference keeps for it between calls.

It does not depend on the state, so it stays outside the loop's autograd node, vectorized over all T steps.
:func:`normrnn.cells.input_term` is its definition; here: recurrent batch norm's per-step masked statistics and
RMSNorm in one native pass each (otherwise some fifteen and five full-size ATen passes, forward and backward),
and in inference the projection into kept memory, normalized there in place.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch
from torch import Tensor, nn

from ..cells import CellParams
from ..cells import input_term as reference_input_term
from ..norms import IdentityNorm, LayerNorm, RecurrentBatchNorm, RMSNorm
from .autograd import BatchNormSteps, NormRows, Projection, needs_graph
from .contract import NONE, Engine, Stats
from .loop_args import fixed_stats, gain_of, kind_of, syncs, update_running


class Scratch(threading.local):
    """Memory for the input term W_ih·x in inference, kept between calls (per thread, device and dtype), as
    oneDNN keeps a scratchpad for ``nn.LSTM``. A fresh (T, N, G) buffer pays a page fault per 4 KiB at every
    call: at 200x8x128 the projection and its layer norm took 1.3 and 0.8 ms inside a forward call against 0.7
    and 0.2 ms on reused memory. Buffers above ``max_bytes`` are not kept. :func:`release_scratch` frees it."""

    max_bytes = 64 << 20

    def __init__(self) -> None:
        self.buffers: dict = {}

    def take(self, shape: tuple, like: Tensor) -> Tensor:
        numel = math.prod(shape)
        if numel * like.element_size() > self.max_bytes:
            return like.new_empty(shape)
        key = (like.device, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            del buf
            self.buffers.pop(key, None)  # the smaller one goes before the larger one is allocated
            self.buffers[key] = buf = like.new_empty(numel)
        return buf[:numel].view(shape)


_scratch = Scratch()


def release_scratch() -> None:
    """Free the memory kept between calls: the input-term memory of inference in this thread, and what the
    native engine's buffer pool holds unused (its T-step buffers, reused by the next call of a similar shape)."""
    _scratch.buffers.clear()
    from . import native  # (here: the native module loads on first use, and input_term does not need it)
    native.release_pool()



def normalize(norm: Optional[nn.Module], x: Tensor, step: int, mask: Optional[Tensor], eng: Engine) -> Tensor:
    """``norm(x, step, mask)``, with a layer norm or RMSNorm without bias on the engine's kernels (x (..., F))."""
    if norm is None:
        return x
    if (eng.has_input_kernels and isinstance(norm, (LayerNorm, RMSNorm)) and norm.bias is None
            and x.device.type in eng.devices and x.dtype in (torch.float32, torch.float64)):
        return NormRows.apply(x.contiguous(), norm.weight, kind_of(norm), norm.eps, eng)
    return norm(x, step, mask)


def _engine_mm(x: Tensor, eng: Engine) -> bool:
    """Whether the input projection runs on the engine's GEMM path (measured per machine) rather than torch.mm."""
    return (getattr(eng, "mm", None) is not None and x.device.type in eng.devices and x.dtype == torch.float32
            and x.dim() == 3)


def project(x: Tensor, weight: Tensor, eng: Engine) -> Tensor:
    """W_ih·x for all steps: on the engine's GEMM path where it has one, else F.linear."""
    if _engine_mm(x, eng) and weight.dtype == x.dtype:
        return Projection.apply(x, weight, eng)
    return torch.nn.functional.linear(x, weight)


def _inference(p: CellParams, x: Tensor, start: int, eng: Engine) -> Optional[Tensor]:
    """The input term when nothing records a graph: W_ih·x into kept memory, normalized there in place (one
    pass, no second buffer). ``None`` where it does not apply (batch statistics, a norm bias, another norm)."""
    norm = p.norm_ih
    if isinstance(norm, (LayerNorm, RMSNorm, RecurrentBatchNorm)):
        if getattr(norm, "bias", None) is not None or (isinstance(norm, RecurrentBatchNorm) and norm.training):
            return None
    elif not (norm is None or isinstance(norm, IdentityNorm)):
        return None
    T, N, I = x.shape
    G = p.weight_ih.shape[0]
    xp = _scratch.take((T, N, G), x)
    if _engine_mm(x, eng):
        eng.mm(x.reshape(T * N, I), p.weight_ih.t(), out=xp.view(T * N, G))
    else:
        torch.mm(x.reshape(T * N, I), p.weight_ih.t(), out=xp.view(T * N, G))
    kind = kind_of(norm)
    if kind != NONE:
        eng.norm_rows_(xp, norm.weight, kind, norm.eps, fixed_stats(norm, torch.arange(start, start + T, device=x.device), x))
    return xp


def input_term(p: CellParams, x: Tensor, start: int, mask: Optional[Tensor], eng: Engine) -> Tensor:
    """:func:`normrnn.cells.input_term` for a whole sequence x (T, N, I), on ``eng``'s kernels where it has
    them; the running averages of a training batch norm are updated."""
    norm = p.norm_ih
    if not eng.has_input_kernels:
        return reference_input_term(p, x, start, mask)
    gain = gain_of(norm)
    if not needs_graph(x, p.weight_ih, *(() if gain is None else (gain,))):
        xp = _inference(p, x, start, eng)
        if xp is not None:
            return xp
    # Synchronised batch norm: the module's own path, one all-reduce of every step's [count | sum | sum of
    # squares] before the loop (and one of the matching gradients in backward: normrnn.moments).
    if not isinstance(norm, RecurrentBatchNorm) or norm.bias is not None or syncs(norm):
        return normalize(norm, project(x, p.weight_ih, eng), start, mask, eng)
    xp = project(x, p.weight_ih, eng).contiguous()
    steps = torch.arange(start, start + x.shape[0], device=x.device)
    fixed = fixed_stats(norm, steps, x)
    m = x.new_empty(0, dtype=torch.bool) if mask is None else mask.contiguous()
    if needs_graph(xp, norm.weight):
        y, *stats = BatchNormSteps.apply(xp, norm.weight, m, fixed, norm.eps, norm.training, eng)
    else:
        r = eng.bn_steps_forward(xp, norm.weight, m, fixed, norm.eps, norm.training)
        y, stats = r.y, r.stats
    update_running(norm, Stats(*stats), steps, eng)
    return y
