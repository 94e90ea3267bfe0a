"""The autograd glue: one node per fused loop, and the nodes of the input term's native norms.

A loop's node calls the engine's ``*_forward``, keeps the :class:`~.contract.Saved` it returns (tensors with
``save_for_backward``, flags on the node) and hands it back unread to the same engine's ``*_backward``. Without
a graph to record, :func:`run_loop` calls ``*_infer`` instead (inference and streaming pay for no saved state).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .contract import (Engine, GRUGrads, GRUJointGrads, InferResult, LSTMGrads, RNNGrads, Saved, Stats)


class Loop(NamedTuple):
    """One loop of the contract: its entry points, how many state tensors it carries, which of its arguments
    are differentiable (the fields of its gradients after the input term and the states) and how backward
    takes the output gradient (``rows``: through its strides, see :func:`_rows`; else made contiguous)."""

    forward: str
    infer: str
    backward: str
    states: int
    grads: type
    rows: bool

    @property
    def params(self) -> tuple:
        return self.grads._fields[1 + self.states:]


LSTM = Loop("lstm_forward", "lstm_infer", "lstm_backward", 2, LSTMGrads, True)
GRU = Loop("gru_forward", "gru_infer", "gru_backward", 1, GRUGrads, True)
GRU_JOINT = Loop("gru_joint_forward", "gru_joint_infer", "gru_joint_backward", 1, GRUJointGrads, False)
RNN = Loop("rnn_forward", "rnn_infer", "rnn_backward", 1, RNNGrads, True)


def _needed(ctx, grads, first: int) -> tuple:
    """Only the gradients autograd asked for (an absent bias or gain is an empty tensor that wants none)."""
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[first:]))


def _rows(grad: Tensor) -> Tensor:
    """The output gradient (T, N, H) for the kernels, which read it row by row through its strides: rows made
    contiguous, but an expanded gradient (``out.sum()``'s) not copied T*N times."""
    if grad.stride(-1) == 1:
        return grad
    rows = tuple(slice(0, 1) if st == 0 else slice(None) for st in grad.stride()[:-1])
    return grad[rows].contiguous().expand_as(grad)


class _LoopFunction(torch.autograd.Function):
    """Inputs: the engine, the :class:`Loop`, the loop's arguments (a named tuple of the contract), the input
    term, the initial state and the differentiable arguments (the same tensors as in the named tuple, passed
    again so that autograd sees them). Outputs: out, the final state, then each norm's stats flat."""

    @staticmethod
    def forward(ctx, eng: Engine, kind: Loop, args, xa: Tensor, *inputs: Tensor):
        r = getattr(eng, kind.forward)(xa, *inputs[:kind.states], args)
        ctx.eng, ctx.kind, ctx.flags = eng, kind, r.saved.flags
        ctx.save_for_backward(*r.saved.tensors)
        stats = [t for s in r.stats for t in s]
        ctx.mark_non_differentiable(*stats)
        return (r.out, *r.state, *stats)

    @staticmethod
    def backward(ctx, dout: Tensor, *grads: Tensor):
        kind = ctx.kind
        dstate = [g.contiguous() for g in grads[:kind.states]]
        dout = _rows(dout) if kind.rows else dout.contiguous()
        g = getattr(ctx.eng, kind.backward)(dout, *dstate, Saved(ctx.saved_tensors, ctx.flags))
        return (None, None, None, *_needed(ctx, g, 3))


def needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run_loop(eng: Engine, kind: Loop, xa: Tensor, state: tuple, args) -> InferResult:
    """One loop on ``eng``: through an autograd node when a gradient is needed, else its ``*_infer``. Returns
    out, the final state and the stats of each norm of the loop."""
    params = tuple(getattr(args, name) for name in kind.params)
    if not needs_graph(xa, *state, *params):
        return getattr(eng, kind.infer)(xa, *state, args)
    r = _LoopFunction.apply(eng, kind, args, xa, *state, *params)
    out, final, flat = r[0], tuple(r[1:1 + kind.states]), r[1 + kind.states:]
    return InferResult(out, final, tuple(Stats(*flat[i:i + 3]) for i in range(0, len(flat), 3)))


# ------------------------------------------------------------------------------------------------ input-term norms


class BatchNormSteps(torch.autograd.Function):
    """The input term's recurrent batch norm for all steps at once on an engine's kernels (no bias: the layer's
    biases follow). Returns y and, for the running averages, the per-step statistics and counts."""

    @staticmethod
    def forward(ctx, x, weight, mask, fixed, eps, training, eng):
        r = eng.bn_steps_forward(x, weight, mask, fixed, eps, training)
        ctx.eng, ctx.flags = eng, r.saved.flags
        ctx.save_for_backward(*r.saved.tensors)
        ctx.mark_non_differentiable(*r.stats)
        return (r.y, *r.stats)

    @staticmethod
    def backward(ctx, dy, *_):
        g = ctx.eng.bn_steps_backward(dy.contiguous(), Saved(ctx.saved_tensors, ctx.flags))
        return g.x, g.weight, None, None, None, None, None


class NormRows(torch.autograd.Function):
    """Layer norm or RMSNorm (``kind``) with gain and no bias on an engine's kernels, rows of the last axis:
    y = (x - mean) / sqrt(var + eps) · weight, or x / sqrt(mean(x²) + eps) · weight."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, kind: int, eps: float, eng) -> Tensor:
        r = eng.row_norm_forward(x, weight, kind, eps)
        ctx.eng, ctx.flags = eng, r.saved.flags
        ctx.save_for_backward(*r.saved.tensors)
        return r.y

    @staticmethod
    def backward(ctx, dy: Tensor):
        g = ctx.eng.row_norm_backward(dy.contiguous(), Saved(ctx.saved_tensors, ctx.flags))
        return g.x, g.weight, None, None, None


class Projection(torch.autograd.Function):
    """The input projection x W^T over all steps, x (..., I), on an engine's GEMM path (``eng.mm``), forward and
    backward: the same products as ``F.linear``'s, with the path measured fastest on this machine."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eng) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.eng = eng
        ctx.save_for_backward(x2, weight)
        ctx.lead = x.shape[:-1]
        return eng.mm(x2, weight.t(), scratch=True).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = ctx.eng.mm(dy2, weight).view(*ctx.lead, weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = ctx.eng.mm(dy2.t(), x2)
        return dx, dw, None
