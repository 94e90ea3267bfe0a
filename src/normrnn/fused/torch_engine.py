"""The PyTorch engine: the fused time loop in plain PyTorch, with hand-written backpropagation through time.

This module is an engine of :mod:`normrnn.fused.contract` (a module implementing :class:`~.contract.Engine`):
the fallback when the C++ kernels cannot be built, the engine for tensors the C++ kernels cannot read (CUDA),
and the executable specification the native engine (``csrc/``) follows step for step. Its ``saved`` holds the
same tensors, in the same order, as the native engine's.

Why it is faster than the reference loop: autograd records nothing per step. Forward keeps only what backward
needs; backward runs one pass per step and computes the recurrent weight gradient as a single GEMM over all
T·N rows (dW_hh = Σ_t dS_tᵀ h_{t-1}).

Shapes: T steps, N sequences, H hidden units, F = gates·H features of the recurrent term; norm kinds as in
:mod:`normrnn.fused.contract`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .contract import (BATCH, BATCH_FIXED, LAYER, NONE, RMS, ForwardResult, GRUGrads, GRUJointGrads, GRUJointLoop,
                       GRULoop, InferResult, LSTMGrads, LSTMLoop, RNNGrads, RNNLoop, Saved, Stats)

name = "torch"
devices = ("cpu", "cuda", "meta")  # any device PyTorch runs on
has_stream = False  # no one-call streaming step: LSTM.step runs the general path
has_input_kernels = False  # the input term's norms run as ordinary PyTorch (normrnn.cells.input_term)
reduces = True  # calls a loop's reducer (synchronised batch norm, see .contract)

__all__ = ["NONE", "LAYER", "RMS", "BATCH", "BATCH_FIXED", "lstm_forward", "lstm_infer", "lstm_backward",
           "gru_forward", "gru_infer", "gru_backward", "gru_joint_forward", "gru_joint_infer", "gru_joint_backward",
           "rnn_forward", "rnn_infer", "rnn_backward", "norm_rows_"]


# ------------------------------------------------------------------------------------------------ norms


def norm_forward(s: Tensor, kind: int, mask: Optional[Tensor], fix_mean: Tensor, fix_var: Tensor, eps: float,
                 reduce=None):
    """Normalize one step s (N, F) without gain. Returns (ŝ, rstd, mean, var, count).

    rstd is (N, 1) for layer/rms and (1, F) for batch; mean/var/count are the batch statistics (batch kind only,
    for the running averages; ``count`` < 2 means the step used ``fix_mean``/``fix_var`` instead). ``reduce``
    (synchronised batch norm, see :mod:`.contract`): the statistics and the count are those of every rank's
    running rows, from one reduced ``[count | sum | sum of squares]``.
    """
    if kind == LAYER:
        shat, _, rstd = torch.native_layer_norm(s, (s.shape[1],), None, None, eps)
        return shat, rstd, None, None, None
    if kind == RMS:
        rstd = torch.rsqrt(s.pow(2).mean(1, keepdim=True) + eps)
        return s * rstd, rstd, None, None, None
    if kind == BATCH:
        if reduce is not None:
            F = s.shape[1]
            sel = s if mask is None else torch.where(mask.unsqueeze(1), s, 0)
            n = s.new_full((1,), s.shape[0]) if mask is None else mask.sum(0, dtype=s.dtype).reshape(1)
            buf = torch.cat([n, sel.sum(0), (sel * sel).sum(0)])
            reduce(buf)
            count = round(float(buf[0]))
            mean = buf[1:F + 1].unsqueeze(0) / max(count, 1)
            # (E[x²] - E[x]² can round below zero when the variance is tiny next to the mean)
            var = (buf[F + 1:].unsqueeze(0) / max(count, 1) - mean * mean).clamp(min=0)
        elif mask is None:
            count = s.shape[0]
            mean = s.mean(0, keepdim=True)
            var = (s - mean).pow(2).mean(0, keepdim=True)
        else:
            # (rows selected, not multiplied by a 0/1 mask: a finished row's held NaN state must not leak in)
            w = mask.unsqueeze(1)
            count = int(mask.sum())
            denom = max(count, 1)
            mean = torch.where(w, s, 0.0).sum(0, keepdim=True) / denom
            var = torch.where(w, (s - mean).pow(2), 0.0).sum(0, keepdim=True) / denom
        if count >= 2:
            rstd = torch.rsqrt(var + eps)
            return (s - mean) * rstd, rstd, mean.squeeze(0), var.squeeze(0), count
        mean, var = fix_mean.unsqueeze(0), fix_var.unsqueeze(0)
        rstd = torch.rsqrt(var + eps)
        return (s - mean) * rstd, rstd, mean.squeeze(0), var.squeeze(0), count
    if kind == BATCH_FIXED:
        rstd = torch.rsqrt(fix_var.unsqueeze(0) + eps)
        return (s - fix_mean.unsqueeze(0)) * rstd, rstd, None, None, None
    return s, None, None, None, None


def norm_backward(dshat: Tensor, shat: Tensor, rstd: Tensor, kind: int, mask: Optional[Tensor],
                  count: int, reduce=None) -> Tensor:
    """ds from dŝ for one step (the gain is applied by the caller). count: the batch kind's valid rows (on every
    rank when ``reduce``: then the column sums of dŝ and dŝ·ŝ are reduced over the ranks too)."""
    if kind == LAYER:
        return rstd * (dshat - dshat.mean(1, keepdim=True) - shat * (dshat * shat).mean(1, keepdim=True))
    if kind == RMS:
        return rstd * (dshat - shat * (dshat * shat).mean(1, keepdim=True))
    if kind == BATCH and count >= 2:
        # Rows of finished sequences carry dŝ = 0 and must not receive any gradient: their s was not counted
        # (and their ŝ, from a held state, may be anything: selected out, not multiplied by 0).
        if mask is not None:
            dshat = torch.where(mask.unsqueeze(1), dshat, 0.0)
            shat = torch.where(mask.unsqueeze(1), shat, 0.0)
        if reduce is None:
            ds = rstd * (dshat - dshat.sum(0, keepdim=True) / count
                         - shat * (dshat * shat).sum(0, keepdim=True) / count)
        else:  # one reduced [sum dŝ | sum dŝ·ŝ]
            F = dshat.shape[1]
            sums = torch.cat([dshat.sum(0), (dshat * shat).sum(0)])
            reduce(sums)
            ds = rstd * (dshat - sums[:F] / count - shat * sums[F:] / count)
        return ds if mask is None else torch.where(mask.unsqueeze(1), ds, 0.0)
    if kind in (BATCH, BATCH_FIXED):
        return dshat * rstd
    return dshat


def norm_rows_(x: Tensor, weight: Tensor, kind: int, eps: float, fix_mean: Tensor, fix_var: Tensor) -> None:
    """The input term's norm in inference, in place: x (T, N, F) ← norm(x) · weight (an empty weight: no gain).
    kind: layer or rms per row, or batch with the given per-step statistics fix_mean/fix_var (T, F)."""
    if kind not in (LAYER, RMS, BATCH_FIXED):
        raise ValueError("norm_rows_: layer, rms or batch norm with given statistics only")
    T, N, F = x.shape
    if kind == BATCH_FIXED:
        y = (x - fix_mean.unsqueeze(1)) * torch.rsqrt(fix_var.unsqueeze(1) + eps)
    else:
        y = norm_forward(x.reshape(T * N, F), kind, None, fix_mean, fix_var, eps)[0].view(T, N, F)
    x.copy_(y * weight if weight.numel() else y)


def _stats(T: int, F: int, like: Tensor, kind: int):
    if kind != BATCH:
        return like.new_empty(0), like.new_empty(0), like.new_empty(0)
    return like.new_zeros(T, F), like.new_ones(T, F), like.new_zeros(T)


def o_masked(h_all: Tensor, mask: Tensor) -> Tensor:
    """The outputs: every step's state, zero where the sequence has ended. h_all (T+1, N, H), mask (T, N).
    (Selected, not multiplied by the mask: a finished sequence's held NaN state must not leak into its padding.)"""
    return torch.where(mask.unsqueeze(-1), h_all[1:], 0.0)


def _row(t: Tensor, i: int) -> Tensor:
    return t[i] if t.numel() else t


def _mask_at(mask: Tensor, t: int) -> Optional[Tensor]:
    return mask[t] if mask.numel() else None


def _norm_step(s: Tensor, kind: int, m: Optional[Tensor], t: int, fix_mean: Tensor, fix_var: Tensor, eps: float,
               shat_all: Tensor, rstd: Tensor, stats: tuple[Tensor, Tensor, Tensor], reduce=None) -> Tensor:
    """:func:`norm_forward` of step t: keeps ŝ and rstd for backward and, for batch statistics, the step's
    (mean, var, count) in ``stats``. Returns ŝ."""
    shat, r, mu, var, cnt = norm_forward(s, kind, m, _row(fix_mean, t), _row(fix_var, t), eps, reduce)
    shat_all[t], rstd[t] = shat, r
    if kind == BATCH:
        stats[0][t], stats[1][t], stats[2][t] = mu, var, cnt
    return shat


def _hold_finished(h_all: Tensor, out: Tensor, t: int, h_new: Tensor, h: Tensor, m: Optional[Tensor]) -> None:
    """Step t's state and output; a finished sequence (m False) keeps its state and outputs zero."""
    if m is None:
        h_all[t + 1], out[t] = h_new, h_new
    else:
        keep = m.unsqueeze(1)
        h_all[t + 1] = torch.where(keep, h_new, h)
        out[t] = torch.where(keep, h_new, 0.0)


def _split_finished(dh: Tensor, dh_step: Tensor, m: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Backward of :func:`_hold_finished`: (the gradient into step t, the part a finished row passes straight
    to its held state, or None without a mask)."""
    if m is None:
        return dh_step, None
    keep = m.unsqueeze(1)  # (selected, not multiplied: a NaN in padding's gradient must not reach a running row)
    return torch.where(keep, dh_step, 0.0), torch.where(keep, 0.0, dh)


# ------------------------------------------------------------------------------------------------ LSTM


def _lstm(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop):
    """LSTM over T steps (:class:`~.contract.LSTMLoop`). Returns out, h_all (T+1,N,H), c_all (T+1,N,H), acts
    (T,N,4H), shat (T,N,4H), rstd_h, chat (T,N,H), rstd_c and the stats of norm_h and norm_c. Backward recomputes
    tanh(c_out) from chat (or c) rather than keep T steps of it; chat is empty unless the normalized cell is
    carried (backward renormalizes c_all), and so is shat without a recurrent-term norm. Without padding, out is a
    view of h_all[1:].
    """
    w_hh, bias, gamma_h, gamma_c, beta_c = loop.w_hh, loop.bias, loop.gamma_h, loop.gamma_c, loop.beta_c
    mask, (fix_mean_h, fix_var_h), (fix_mean_c, fix_var_c) = loop.mask, loop.fixed_h, loop.fixed_c
    kind_h, kind_c, joint, carry, eps = loop.kind_h, loop.kind_c, loop.joint, loop.carry, loop.eps
    T, N, G = xa.shape
    H = G // 4
    h_all, c_all = xa.new_empty(T + 1, N, H), xa.new_empty(T + 1, N, H)
    h_all[0], c_all[0] = h0, c0
    acts, chat_all = xa.new_empty(T, N, G), xa.new_empty(T, N, H)
    shat_all = xa.new_empty(T, N, G) if gamma_h.numel() else xa.new_empty(0)  # (no norm: nothing to keep)
    rstd_h = xa.new_empty(T, *((N, 1) if kind_h in (LAYER, RMS) else (1, G)))
    rstd_c = xa.new_empty(T, *((N, 1) if kind_c in (LAYER, RMS) else (1, H)))
    mean_h, var_h, count_h = _stats(T, G, xa, kind_h)
    mean_c, var_c, count_c = _stats(T, H, xa, kind_c)
    wt = w_hh.t().contiguous()  # (H, G): per-step GEMMs run faster than on a transposed view
    # The bias (and, for separate terms, the input term) added to the gates, for all steps at once.
    base = (xa + bias) if not joint else bias.expand(T, N, G)
    for t in range(T):
        h, c = h_all[t], c_all[t]
        m = _mask_at(mask, t)
        s = torch.addmm(xa[t], h, wt) if joint else torch.mm(h, wt)
        a = acts[t]  # the gates are computed in place in the saved buffer
        if gamma_h.numel():
            shat = _norm_step(s, kind_h, m, t, fix_mean_h, fix_var_h, eps, shat_all, rstd_h,
                              (mean_h, var_h, count_h), loop.reduce)
            torch.addcmul(base[t], shat, gamma_h, out=a)
        else:
            torch.add(base[t], s, out=a)
        a[:, :2 * H].sigmoid_()
        a[:, 3 * H:].sigmoid_()
        a[:, 2 * H:3 * H].tanh_()
        i, f, g, o = a.chunk(4, 1)
        c_new = torch.addcmul(f * c, i, g)
        if gamma_c.numel():
            chat = _norm_step(c_new, kind_c, m, t, fix_mean_c, fix_var_c, eps, chat_all, rstd_c,
                              (mean_c, var_c, count_c), loop.reduce)
            c_out = torch.addcmul(beta_c, chat, gamma_c) if beta_c.numel() else chat * gamma_c
        else:
            c_out = c_new
        tc = torch.tanh(c_out)
        c_keep = c_out if carry else c_new
        if m is None:
            torch.mul(o, tc, out=h_all[t + 1])
            c_all[t + 1] = c_keep
        else:
            keep = m.unsqueeze(1)
            h_all[t + 1] = torch.where(keep, o * tc, h)
            c_all[t + 1] = torch.where(keep, c_keep, c)
    out = h_all[1:] if mask.numel() == 0 else o_masked(h_all, mask)  # (a view of the states: no second copy)
    # chat is kept only when the normalized cell is carried: else backward renormalizes c_all (_renormalized)
    return (out, h_all, c_all, acts, shat_all, rstd_h, chat_all if carry else xa.new_empty(0), rstd_c,
            Stats(mean_h, var_h, count_h), Stats(mean_c, var_c, count_c))


def lstm_forward(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> ForwardResult:
    out, h_all, c_all, acts, shat, rstd_h, chat, rstd_c, stats_h, stats_c = _lstm(xa, h0, c0, loop)
    # the column means the batch kinds used, for backward's renormalized cell (the given ones copied: they may be
    # a view of the running statistics, which a later training call updates in place)
    mean_c = stats_c.mean if loop.kind_c == BATCH else loop.fixed_c.mean.clone()
    saved = Saved((loop.w_hh, loop.gamma_h, loop.gamma_c, loop.beta_c, loop.mask, h_all, c_all, acts, shat, rstd_h,
                   chat, rstd_c, mean_c, stats_h.count, stats_c.count),
                  (loop.kind_h, loop.kind_c, loop.joint, loop.carry, loop.reduce))
    return ForwardResult(out, (h_all[-1].clone(), c_all[-1].clone()), (stats_h, stats_c), saved)


def lstm_infer(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> InferResult:
    out, h_all, c_all, *_, stats_h, stats_c = _lstm(xa, h0, c0, loop)
    return InferResult(out, (h_all[-1], c_all[-1]), (stats_h, stats_c))


def _renormalized(c: Tensor, kind: int, rstd: Tensor, mean: Tensor) -> Tensor:
    """ĉ of every step again from the raw cells c (T, N, H), with the rstd forward kept and, for the batch kinds,
    the column means it used (T, H)."""
    if kind == LAYER:
        return (c - c.mean(-1, keepdim=True)) * rstd
    if kind == RMS:
        return c * rstd
    return (c - mean.unsqueeze(1)) * rstd


def lstm_backward(dout: Tensor, dhT: Tensor, dcT: Tensor, saved: Saved) -> LSTMGrads:
    """Gradients of :func:`lstm_forward`. The input term itself is not kept: its shape is that of ``acts``.
    ``chat_all`` empty (the raw cell carried): ĉ is recomputed from c_all; ``mean_c`` (T, H) holds the column
    means the batch kinds used (batch statistics or given)."""
    (w_hh, gamma_h, gamma_c, beta_c, mask, h_all, c_all, acts, shat_all, rstd_h, chat_all, rstd_c, mean_c, count_h,
     count_c) = saved.tensors
    kind_h, kind_c, joint, carry, reduce = saved.flags
    T, N, G = acts.shape
    H = G // 4
    if gamma_c.numel() and not chat_all.numel():
        chat_all = _renormalized(c_all[1:], kind_c, rstd_c, mean_c)
    dxa = torch.empty_like(acts)
    # d(pre-activation) and d(recurrent product h W_hhᵀ) of every step; separate terms: dxa = da, joint: dxa = ds
    da_all = torch.empty_like(acts) if joint and gamma_h.numel() else dxa
    ds_all = da_all if not gamma_h.numel() else (dxa if joint else torch.empty_like(acts))
    dcout_all = torch.empty_like(chat_all) if gamma_c.numel() else None
    dh, dc = dhT.clone(), dcT.clone()
    for t in range(T - 1, -1, -1):
        m = _mask_at(mask, t)
        dh_step = dh + dout[t]
        if m is not None:
            # A finished sequence's state passes through unchanged and its output is a constant zero.
            keep = m.unsqueeze(1)  # (selected, not multiplied: see _split_finished)
            dh_pass, dc_pass = torch.where(keep, 0.0, dh), torch.where(keep, 0.0, dc)
            dh_step, dc_step = torch.where(keep, dh_step, 0.0), torch.where(keep, dc, 0.0)
        else:
            dc_step = dc
        i, f, g, o = acts[t].chunk(4, 1)
        # tanh(c_out) again: c_out = gamma_c * chat + beta_c, or the new raw cell (c_all of a running row)
        if gamma_c.numel():
            c_out = torch.addcmul(beta_c, chat_all[t], gamma_c) if beta_c.numel() else chat_all[t] * gamma_c
        else:
            c_out = c_all[t + 1]
        tc = torch.tanh(c_out)
        dcout = dh_step * o * (1 - tc * tc)
        if carry:
            dcout += dc_step
        if gamma_c.numel():
            dcout_all[t] = dcout
            dc_new = norm_backward(dcout * gamma_c, chat_all[t], rstd_c[t], kind_c, m,
                                   int(count_c[t]) if count_c.numel() else 0, reduce)
        else:
            dc_new = dcout
        if not carry:
            dc_new = dc_new + dc_step
        di, df, dg, do = da_all[t].chunk(4, 1)
        torch.mul(dc_new * g, i * (1 - i), out=di)
        torch.mul(dc_new * c_all[t], f * (1 - f), out=df)
        torch.mul(dc_new * i, 1 - g * g, out=dg)
        torch.mul(dh_step * tc, o * (1 - o), out=do)
        if gamma_h.numel():
            ds_all[t] = norm_backward(da_all[t] * gamma_h, shat_all[t], rstd_h[t], kind_h, m,
                                      int(count_h[t]) if count_h.numel() else 0, reduce)
        dh = ds_all[t] @ w_hh
        dc = dc_new * f
        if m is not None:
            dh, dc = dh + dh_pass, dc + dc_pass
    rows = T * N
    dw_hh = ds_all.reshape(rows, G).t() @ h_all[:-1].reshape(rows, H)
    dbias = da_all.reshape(rows, G).sum(0)
    dgamma_h = (da_all * shat_all).reshape(rows, G).sum(0) if gamma_h.numel() else torch.zeros_like(gamma_h)
    if gamma_c.numel():
        dgamma_c = (dcout_all * chat_all).reshape(rows, H).sum(0)
        dbeta_c = dcout_all.reshape(rows, H).sum(0)
    else:
        dgamma_c = dbeta_c = torch.zeros_like(gamma_c)
    return LSTMGrads(dxa, dh, dc, dw_hh, dbias, dgamma_h, dgamma_c, dbeta_c)


# ------------------------------------------------------------------------------------------------ GRU


def _gru(xa: Tensor, h0: Tensor, loop: GRULoop):
    """GRU over T steps (separate terms, :class:`~.contract.GRULoop`). Returns out, h_all (T+1,N,H),
    acts (T,N,3H) = (r, u, n), rec_n (T,N,H), shat (T,N,3H), rstd_h and the stats of norm_h."""
    w_hh, bias_hh, gamma_h, mask, (fix_mean_h, fix_var_h) = loop.w_hh, loop.bias_hh, loop.gamma_h, loop.mask, loop.fixed_h
    kind_h, eps = loop.kind_h, loop.eps
    T, N, G = xa.shape
    H = G // 3
    h_all = xa.new_empty(T + 1, N, H)
    h_all[0] = h0
    acts, rec_n_all = xa.new_empty(T, N, G), xa.new_empty(T, N, H)
    shat_all = xa.new_empty(T, N, G) if gamma_h.numel() else xa.new_empty(0)
    rstd_h = xa.new_empty(T, *((N, 1) if kind_h in (LAYER, RMS) else (1, G)))
    mean_h, var_h, count_h = _stats(T, G, xa, kind_h)
    out = xa.new_empty(T, N, H)
    wt = w_hh.t().contiguous()  # (H, G): per-step GEMMs run faster than on a transposed view
    for t in range(T):
        h = h_all[t]
        m = _mask_at(mask, t)
        s = h @ wt
        if gamma_h.numel():
            shat = _norm_step(s, kind_h, m, t, fix_mean_h, fix_var_h, eps, shat_all, rstd_h,
                              (mean_h, var_h, count_h), loop.reduce)
            s = shat * gamma_h
        rec = s + bias_hh if bias_hh.numel() else s
        x_r, x_u, x_n = xa[t].chunk(3, 1)
        rec_r, rec_u, rec_n = rec.chunk(3, 1)
        r, u = torch.sigmoid(x_r + rec_r), torch.sigmoid(x_u + rec_u)
        n = torch.tanh(x_n + r * rec_n)
        acts[t] = torch.cat([r, u, n], 1)
        rec_n_all[t] = rec_n
        h_new = n + u * (h - n)
        _hold_finished(h_all, out, t, h_new, h, m)
    return out, h_all, acts, rec_n_all, shat_all, rstd_h, Stats(mean_h, var_h, count_h)


def gru_forward(xa: Tensor, h0: Tensor, loop: GRULoop) -> ForwardResult:
    out, h_all, acts, rec_n, shat, rstd_h, stats_h = _gru(xa, h0, loop)
    saved = Saved((loop.w_hh, loop.gamma_h, loop.mask, h_all, acts, rec_n, shat, rstd_h, stats_h.count),
                  (loop.kind_h, loop.reduce))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_h,), saved)


def gru_infer(xa: Tensor, h0: Tensor, loop: GRULoop) -> InferResult:
    out, h_all, *_, stats_h = _gru(xa, h0, loop)
    return InferResult(out, (h_all[-1],), (stats_h,))


def gru_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> GRUGrads:
    """Gradients of :func:`gru_forward`."""
    w_hh, gamma_h, mask, h_all, acts, rec_n_all, shat_all, rstd_h, count_h = saved.tensors
    kind_h, reduce = saved.flags
    T, N, G = acts.shape
    H = G // 3
    dxa, ds_all = torch.empty_like(acts), torch.empty_like(acts)
    dbias = acts.new_zeros(G)
    dgamma_h = torch.zeros_like(gamma_h)
    dh = dhT.clone()
    for t in range(T - 1, -1, -1):
        m = _mask_at(mask, t)
        dh_step = dh + dout[t]
        dh_step, dh_pass = _split_finished(dh, dh_step, m)
        r, u, n = acts[t].chunk(3, 1)
        h = h_all[t]
        dn = dh_step * (1 - u)
        da_n = dn * (1 - n * n)
        da_r = da_n * rec_n_all[t] * r * (1 - r)
        da_u = dh_step * (h - n) * u * (1 - u)
        dxa[t] = torch.cat([da_r, da_u, da_n], 1)
        drec = torch.cat([da_r, da_u, da_n * r], 1)
        dbias += drec.sum(0)
        if gamma_h.numel():
            shat = shat_all[t]
            dgamma_h += (drec * shat).sum(0)
            ds = norm_backward(drec * gamma_h, shat, rstd_h[t], kind_h, m, int(count_h[t]) if count_h.numel() else 0,
                               reduce)
        else:
            ds = drec
        ds_all[t] = ds
        dh = ds @ w_hh + dh_step * u
        if dh_pass is not None:
            dh = dh + dh_pass
    dw_hh = ds_all.reshape(T * N, G).t() @ h_all[:-1].reshape(T * N, H)
    return GRUGrads(dxa, dh, dw_hh, dbias, dgamma_h)


# ------------------------------------------------------------------------------------------------ GRU, joint terms


def _gru_joint(xa: Tensor, h0: Tensor, loop: GRUJointLoop):
    """GRU over T steps with joint terms (:func:`normrnn.cells.gru_step`): the gates see
    ``norm_gates(x_rz + s_rz) + b_ih_rz + b_hh_rz``, the candidate ``norm_new(x_n + r * (s_n + b_hh_n)) + b_ih_n``.

    xa (T, N, 3H): the raw input term W_ih x (with joint terms it is normalized together with the state, so no
    bias is folded in); bias_ih/bias_hh (3H,) or empty; gamma_g (2H,) and gamma_n (H,) or empty (no norm).
    The candidate's pre-norm sum v depends on r, which depends on the first norm: batch statistics of u come
    before r is known, those of v after, so every step normalizes twice.
    Returns out, h_all (T+1,N,H), acts (T,N,3H) = (r, z, n), rec_n (T,N,H) = s_n + b_hh_n, uhat (T,N,2H),
    vhat (T,N,H), rstd_g, rstd_n and the stats of norm_gates and norm_new."""
    w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask = (loop.w_hh, loop.bias_ih, loop.bias_hh, loop.gamma_g,
                                                      loop.gamma_n, loop.mask)
    (fix_mean_g, fix_var_g), (fix_mean_n, fix_var_n) = loop.fixed_g, loop.fixed_n
    kind_g, kind_n, eps = loop.kind_g, loop.kind_n, loop.eps
    T, N, G = xa.shape
    H = G // 3
    h_all = xa.new_empty(T + 1, N, H)
    h_all[0] = h0
    acts, rec_n_all = xa.new_empty(T, N, G), xa.new_empty(T, N, H)
    uhat_all, vhat_all = xa.new_empty(T, N, 2 * H), xa.new_empty(T, N, H)
    rstd_g = xa.new_empty(T, *((N, 1) if kind_g in (LAYER, RMS) else (1, 2 * H)))
    rstd_n = xa.new_empty(T, *((N, 1) if kind_n in (LAYER, RMS) else (1, H)))
    mean_g, var_g, count_g = _stats(T, 2 * H, xa, kind_g)
    mean_n, var_n, count_n = _stats(T, H, xa, kind_n)
    out = xa.new_empty(T, N, H)
    b_ih = bias_ih if bias_ih.numel() else xa.new_zeros(G)
    b_hh = bias_hh if bias_hh.numel() else xa.new_zeros(G)
    b_rz, b_hn, b_in = b_ih[:2 * H] + b_hh[:2 * H], b_hh[2 * H:], b_ih[2 * H:]
    wt = w_hh.t().contiguous()  # (H, G): per-step GEMMs run faster than on a transposed view
    for t in range(T):
        h = h_all[t]
        m = _mask_at(mask, t)
        s = h @ wt
        x_rz, x_n = xa[t].split([2 * H, H], 1)
        u = x_rz + s[:, :2 * H]
        if gamma_g.numel():
            uhat = _norm_step(u, kind_g, m, t, fix_mean_g, fix_var_g, eps, uhat_all, rstd_g,
                              (mean_g, var_g, count_g), loop.reduce)
            u = uhat * gamma_g
        r, z = torch.sigmoid(u + b_rz).chunk(2, 1)
        rec_n = s[:, 2 * H:] + b_hn
        v = x_n + r * rec_n
        if gamma_n.numel():
            vhat = _norm_step(v, kind_n, m, t, fix_mean_n, fix_var_n, eps, vhat_all, rstd_n,
                              (mean_n, var_n, count_n), loop.reduce)
            v = vhat * gamma_n
        n = torch.tanh(v + b_in)
        acts[t] = torch.cat([r, z, n], 1)
        rec_n_all[t] = rec_n
        h_new = n + z * (h - n)
        _hold_finished(h_all, out, t, h_new, h, m)
    return (out, h_all, acts, rec_n_all, uhat_all, vhat_all, rstd_g, rstd_n, Stats(mean_g, var_g, count_g),
            Stats(mean_n, var_n, count_n))


def gru_joint_forward(xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> ForwardResult:
    out, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n, stats_g, stats_n = _gru_joint(xa, h0, loop)
    saved = Saved((loop.w_hh, loop.gamma_g, loop.gamma_n, loop.mask, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n,
                   stats_g.count, stats_n.count), (loop.kind_g, loop.kind_n, loop.reduce))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_g, stats_n), saved)


def gru_joint_infer(xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> InferResult:
    out, h_all, *_, stats_g, stats_n = _gru_joint(xa, h0, loop)
    return InferResult(out, (h_all[-1],), (stats_g, stats_n))


def gru_joint_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> GRUJointGrads:
    """Gradients of :func:`gru_joint_forward`.

    Backward runs the forward's order in reverse: the candidate's norm first (dv), then through r to the gates'
    norm (du). dpre holds the gradients of the three pre-activations (after the norms, where the biases and gains
    act), from which the bias and gain gradients are reduced once after the loop."""
    (w_hh, gamma_g, gamma_n, mask, h_all, acts, rec_n_all, uhat_all, vhat_all, rstd_g, rstd_n, count_g,
     count_n) = saved.tensors
    kind_g, kind_n, reduce = saved.flags
    T, N, G = acts.shape
    H = G // 3
    dxa, ds_all, dpre = torch.empty_like(acts), torch.empty_like(acts), torch.empty_like(acts)
    dh = dhT.clone()
    for t in range(T - 1, -1, -1):
        m = _mask_at(mask, t)
        dh_step = dh + dout[t]
        dh_step, dh_pass = _split_finished(dh, dh_step, m)
        r, z, n = acts[t].chunk(3, 1)
        h = h_all[t]
        e_n = dh_step * (1 - z) * (1 - n * n)
        e_z = dh_step * (h - n) * z * (1 - z)
        if gamma_n.numel():
            dv = norm_backward(e_n * gamma_n, vhat_all[t], rstd_n[t], kind_n, m,
                               int(count_n[t]) if count_n.numel() else 0, reduce)
        else:
            dv = e_n
        e_r = dv * rec_n_all[t] * r * (1 - r)
        e_rz = torch.cat([e_r, e_z], 1)
        if gamma_g.numel():
            du = norm_backward(e_rz * gamma_g, uhat_all[t], rstd_g[t], kind_g, m,
                               int(count_g[t]) if count_g.numel() else 0, reduce)
        else:
            du = e_rz
        dpre[t] = torch.cat([e_rz, e_n], 1)
        dxa[t] = torch.cat([du, dv], 1)
        ds_all[t] = torch.cat([du, dv * r], 1)
        dh = ds_all[t] @ w_hh + dh_step * z
        if dh_pass is not None:
            dh = dh + dh_pass
    rows = T * N
    dw_hh = ds_all.reshape(rows, G).t() @ h_all[:-1].reshape(rows, H)
    d_rz = dpre[..., :2 * H].reshape(rows, 2 * H).sum(0)
    dbias_ih = torch.cat([d_rz, dpre[..., 2 * H:].reshape(rows, H).sum(0)])
    dbias_hh = torch.cat([d_rz, ds_all[..., 2 * H:].reshape(rows, H).sum(0)])  # b_hh_n sits inside r * (...)
    dgamma_g = (dpre[..., :2 * H] * uhat_all).reshape(rows, 2 * H).sum(0) if gamma_g.numel() else \
        torch.zeros_like(gamma_g)
    dgamma_n = (dpre[..., 2 * H:] * vhat_all).reshape(rows, H).sum(0) if gamma_n.numel() else \
        torch.zeros_like(gamma_n)
    return GRUJointGrads(dxa, dh, dw_hh, dbias_ih, dbias_hh, dgamma_g, dgamma_n)


# ------------------------------------------------------------------------------------------------ Elman RNN


def _rnn(xa: Tensor, h0: Tensor, loop: RNNLoop):
    """Elman RNN over T steps (:class:`~.contract.RNNLoop`). Returns out, h_all, act, shat, rstd_h and the stats
    of norm_h; h_all[t+1] holds the new state (the activation's output)."""
    w_hh, bias, gamma_h, mask, (fix_mean_h, fix_var_h) = loop.w_hh, loop.bias, loop.gamma_h, loop.mask, loop.fixed_h
    kind_h, joint, relu, eps = loop.kind_h, loop.joint, loop.relu, loop.eps
    T, N, H = xa.shape
    h_all = xa.new_empty(T + 1, N, H)
    h_all[0] = h0
    act_all = xa.new_empty(T, N, H)
    shat_all = xa.new_empty(T, N, H) if gamma_h.numel() else xa.new_empty(0)
    rstd_h = xa.new_empty(T, *((N, 1) if kind_h in (LAYER, RMS) else (1, H)))
    mean_h, var_h, count_h = _stats(T, H, xa, kind_h)
    out = xa.new_empty(T, N, H)
    wt = w_hh.t().contiguous()  # (H, G): per-step GEMMs run faster than on a transposed view
    for t in range(T):
        h = h_all[t]
        m = _mask_at(mask, t)
        s = xa[t] + h @ wt if joint else h @ wt
        if gamma_h.numel():
            shat = _norm_step(s, kind_h, m, t, fix_mean_h, fix_var_h, eps, shat_all, rstd_h,
                              (mean_h, var_h, count_h), loop.reduce)
            s = shat * gamma_h
        a = s + bias if joint else xa[t] + s + bias
        h_new = torch.relu(a) if relu else torch.tanh(a)
        act_all[t] = h_new
        _hold_finished(h_all, out, t, h_new, h, m)
    return out, h_all, act_all, shat_all, rstd_h, Stats(mean_h, var_h, count_h)


def rnn_forward(xa: Tensor, h0: Tensor, loop: RNNLoop) -> ForwardResult:
    out, h_all, act, shat, rstd_h, stats_h = _rnn(xa, h0, loop)
    saved = Saved((loop.w_hh, loop.gamma_h, loop.mask, h_all, act, shat, rstd_h, stats_h.count),
                  (loop.kind_h, loop.joint, loop.relu, loop.reduce))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_h,), saved)


def rnn_infer(xa: Tensor, h0: Tensor, loop: RNNLoop) -> InferResult:
    out, h_all, *_, stats_h = _rnn(xa, h0, loop)
    return InferResult(out, (h_all[-1],), (stats_h,))


def rnn_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> RNNGrads:
    """Gradients of :func:`rnn_forward`."""
    w_hh, gamma_h, mask, h_all, act_all, shat_all, rstd_h, count_h = saved.tensors
    kind_h, joint, relu, reduce = saved.flags
    T, N, H = act_all.shape
    dxa, ds_all = torch.empty_like(act_all), torch.empty_like(act_all)
    dbias = act_all.new_zeros(H)
    dgamma_h = torch.zeros_like(gamma_h)
    dh = dhT.clone()
    for t in range(T - 1, -1, -1):
        m = _mask_at(mask, t)
        dh_step = dh + dout[t]
        dh_step, dh_pass = _split_finished(dh, dh_step, m)
        y = act_all[t]
        da = dh_step * (y > 0).to(y.dtype) if relu else dh_step * (1 - y * y)
        dbias += da.sum(0)
        if gamma_h.numel():
            shat = shat_all[t]
            dgamma_h += (da * shat).sum(0)
            ds = norm_backward(da * gamma_h, shat, rstd_h[t], kind_h, m, int(count_h[t]) if count_h.numel() else 0,
                               reduce)
        else:
            ds = da
        dxa[t] = ds if joint else da
        ds_all[t] = ds
        dh = ds @ w_hh
        if dh_pass is not None:
            dh = dh + dh_pass
    dw_hh = ds_all.reshape(T * N, H).t() @ h_all[:-1].reshape(T * N, H)
    return RNNGrads(dxa, dh, dw_hh, dbias, dgamma_h)
