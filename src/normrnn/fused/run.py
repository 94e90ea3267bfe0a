"""Running one direction of one layer on the fused backend: the input term, then one engine loop.

Same contract as :func:`normrnn.reference.run_direction` (without zoneout). Everything that does not depend on
the previous state stays outside the loop, vectorized over all T steps with ordinary autograd: the input
projection W_ih·x, its norm and the biases (:mod:`.input_term`). The loop itself is one autograd node
(:mod:`.autograd`) on the engine :mod:`.select` picks.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import CellParams, State
from ..checks import reverse_padded
from ..reference import run_direction as reference_run
from . import select, torch_engine
from .autograd import GRU, GRU_JOINT, LSTM, RNN, needs_graph, run_loop
from .contract import GRUJointLoop, GRULoop, LSTMLoop, RNNLoop
from .input_term import input_term
from .loop_args import bias_of, fixed_stats, gain_of, kind_of, or_empty, reducer, update_running
from .stream import one_step


def _sum_bias(p: CellParams, like: Tensor) -> Tensor:
    if p.bias_ih is None:
        return like.new_zeros(p.weight_hh.shape[0])
    return p.bias_ih + p.bias_hh


def run_direction(p: CellParams, x: Tensor, state: State, mask: Optional[Tensor], lengths: Optional[Tensor],
                  reverse: bool = False, start: int = 0, eps: float = 1e-5) -> tuple[Tensor, State]:
    """Same contract as :func:`normrnn.reference.run_direction` (without zoneout), on the fused engine."""
    if p.weight_hr is not None:
        return _run_projected(p, x, state, mask, lengths, reverse, start, eps)
    eng = select.engine(x.device)
    if not getattr(eng, "reduces", False) and reducer(p.norm_hh, p.norm_gates, p.norm_new, p.norm_cell) is not None:
        eng = torch_engine  # synced batch norm on an engine that cannot call the loop's reducer: its PyTorch twin
    if select.one_step(p.mode, x.shape[0], eng):
        stepped = one_step(eng, p, x[0], state, start, eps)
        if stepped is not None:
            return stepped[0].unsqueeze(0), stepped
    if reverse:
        x = reverse_padded(x, lengths)
    T = x.shape[0]
    steps = torch.arange(start, start + T, device=x.device)
    # The input term and its norm for all steps at once. (Normalizing it inside the loop instead, step by step,
    # measured slower in training and in inference: 1.15x against 1.34x nn.LSTM's inference at 100x32x256.)
    xp = input_term(p, x, start, mask, eng)
    m = x.new_empty(0, dtype=torch.bool) if mask is None else mask.contiguous()
    joint = p.norm_gates is not None
    norm_h = p.norm_gates if joint else p.norm_hh
    kind_h = kind_of(norm_h)
    gamma_h = or_empty(gain_of(norm_h), x)
    fixed_h = fixed_stats(norm_h, steps, x)
    w_hh = p.weight_hh.contiguous()
    h0 = state[0].contiguous()
    if p.mode == "LSTM":
        loop = LSTMLoop(w_hh, _sum_bias(p, x), gamma_h, or_empty(gain_of(p.norm_cell), x),
                        or_empty(bias_of(p.norm_cell), x), m, fixed_h, fixed_stats(p.norm_cell, steps, x), kind_h,
                        kind_of(p.norm_cell), joint, p.carry_normalized_cell, eps, reducer(norm_h, p.norm_cell))
        r = run_loop(eng, LSTM, xp.contiguous(), (h0, state[1].contiguous()), loop)
        update_running(p.norm_cell, r.stats[1], steps, eng)
    elif p.mode == "GRU" and joint:
        loop = GRUJointLoop(w_hh, or_empty(p.bias_ih, x), or_empty(p.bias_hh, x), gamma_h,
                            or_empty(gain_of(p.norm_new), x), m, fixed_h, fixed_stats(p.norm_new, steps, x), kind_h,
                            kind_of(p.norm_new), eps, reducer(norm_h, p.norm_new))
        r = run_loop(eng, GRU_JOINT, xp.contiguous(), (h0,), loop)
        update_running(p.norm_new, r.stats[1], steps, eng)
    elif p.mode == "GRU":
        if p.bias_ih is None:
            xa = xp
        elif needs_graph(xp, p.bias_ih):
            xa = xp + p.bias_ih
        else:  # nothing records a graph: add in place (xp may be the kept inference memory)
            xa = xp.add_(p.bias_ih)
        del xp  # the normalized term is not needed once xa has the bias: free it before the time loop
        loop = GRULoop(w_hh, or_empty(p.bias_hh, x), gamma_h, m, fixed_h, kind_h, eps, reducer(norm_h))
        r = run_loop(eng, GRU, xa.contiguous(), (h0,), loop)
    else:
        loop = RNNLoop(w_hh, _sum_bias(p, x), gamma_h, m, fixed_h, kind_h, joint, p.mode == "RNN_RELU", eps,
                       reducer(norm_h))
        r = run_loop(eng, RNN, xp.contiguous(), (h0,), loop)
    update_running(norm_h, r.stats[0], steps, eng)
    return (reverse_padded(r.out, lengths) if reverse else r.out), r.state


def _run_projected(p: CellParams, x: Tensor, state: State, mask: Optional[Tensor], lengths: Optional[Tensor],
                   reverse: bool, start: int, eps: float) -> tuple[Tensor, State]:
    """An LSTM with a projection on the loop of a plain one. h = W_hr m with m = o * tanh(c) enters the next step
    only through W_hh h = (W_hh W_hr) m, so the loop runs on m (H units) with W_hh W_hr (4H x H), and the outputs
    and final h are W_hr m, one GEMM over all steps after the loop (zero stays zero past a sequence's end). The
    loop starts from the m_0 of least norm with W_hr m_0 = h_0, which exists when W_hr (P x H, P < H) has full
    row rank, as it has unless set so on purpose; otherwise the reference loop runs. Autograd differentiates
    the whole composition, so the gradients are those of nn.LSTM's. The price: a 4H x H GEMM per step where
    nn.LSTM has 4H x P and P x H."""
    w_hr = p.weight_hr
    h0, c0 = state
    if not h0.requires_grad and not bool(h0.any()):
        m0 = h0.new_zeros(h0.shape[0], w_hr.shape[1])
    else:
        try:
            m0 = torch.linalg.solve(w_hr @ w_hr.T, h0.T).T @ w_hr
        except RuntimeError:  # W_hr W_hr^T singular
            return reference_run(p, x, state, mask, lengths, reverse=reverse, start=start)
        residual = (F.linear(m0.detach(), w_hr.detach()) - h0.detach()).norm()
        if not bool(residual <= 1e-3 * h0.detach().norm()):  # (NaN too: nearly singular, or a NaN in h_0)
            return reference_run(p, x, state, mask, lengths, reverse=reverse, start=start)
    inner = p._replace(weight_hh=p.weight_hh @ w_hr, weight_hr=None)
    out, (m, c) = run_direction(inner, x, (m0, c0), mask, lengths, reverse=reverse, start=start, eps=eps)
    return F.linear(out, w_hr), (F.linear(m, w_hr), c)
