"""The Triton kernels of the GPU engine (:mod:`normrnn.fused.triton_engine`): one fused kernel per time step and
cell, forward and backward. Imported only where Triton is (``triton_engine`` loads it lazily): a CPU install
never imports this module.

Every kernel works on one step ``t`` of the loop and reads the whole loop's buffers at ``t`` (one argument per
buffer: no two arguments alias, which Triton's interpreter needs). A program owns a tile of ``BN`` rows
(sequences) by ``BH`` hidden units and, for each unit, all the gate columns of that unit (``g * H + unit``):
a 3-d tile (BN, GP, BH), GP the gate count rounded up to a power of two (padded gates masked off). So one
program can

* reduce a row (layer and RMS norm): the host makes ``BH >= H`` (one program per block of rows);
* reduce a column over the step's running rows (recurrent batch norm): the host makes ``BN >= N``;
* both (a loop that mixes the two kinds): one program.

The step index ``t`` is not specialized (``do_not_specialize``): one compiled kernel serves every step (Triton
would otherwise compile extra variants for t = 1 and multiples of 16), and it is widened to int64 for offsets.

Computation runs in the buffers' dtype (float32, or float64 under the tests' interpreter; the layers run half
precision calls in float32 before the engine sees them). Finished sequences (``mask`` False) keep their state
and output zero by *selection* (``tl.where``), so whatever a padded row holds reaches no output and no batch
statistic; the backward's mask arithmetic follows :mod:`normrnn.fused.torch_engine` (the specification these
kernels implement line by line). ``tanh`` is ``2 sigmoid(2x) - 1`` (no libdevice call: the same code runs in the
interpreter and on every Triton version), and ReLU is written so that NaN propagates.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Norm kinds, as in normrnn.fused.contract (repeated: jit code reads module-level ints as constants).
NONE: tl.constexpr = tl.constexpr(0)
LAYER: tl.constexpr = tl.constexpr(1)
RMS: tl.constexpr = tl.constexpr(2)
BATCH: tl.constexpr = tl.constexpr(3)
BATCH_FIXED: tl.constexpr = tl.constexpr(4)


# ------------------------------------------------------------------------------------------------ helpers


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    """``tl.sum`` written on the core ``tl.reduce``: the kernels use no jit function of Triton's standard library,
    so a copy of this module decorated under the interpreter runs whole (see ``triton_engine._load``)."""
    return tl.reduce(x, axis, _add)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _gate(x, g3, k: tl.constexpr):
    """Gate k of a (BN, GP, BH) tile as (BN, 1, BH) (selection: NaN elsewhere does not leak in)."""
    return tl.expand_dims(_sum(tl.where(g3 == k, x, 0.0), 1), 1)


@triton.jit
def _row_norm(x, valid, nfeat, eps, KIND: tl.constexpr):
    """Layer or RMS norm of every row of a (BN, GP, BH) tile holding whole rows (zero where not ``valid``):
    (x̂, rstd (BN, 1, 1))."""
    if KIND == LAYER:
        mean = (_sum(_sum(x, 2), 1) / nfeat)[:, None, None]
        d = tl.where(valid, x - mean, 0.0)
        rstd = (1.0 / tl.sqrt(_sum(_sum(d * d, 2), 1) / nfeat + eps))[:, None, None]
        xh = d * rstd
    else:
        rstd = (1.0 / tl.sqrt(_sum(_sum(x * x, 2), 1) / nfeat + eps))[:, None, None]
        xh = x * rstd
    return xh, rstd


@triton.jit
def _col_stats(x, run, cnt, fmean, fvar):
    """Batch statistics of the running rows (``run``, (BN, 1, 1)) of a tile holding all rows: mean and biased
    variance (1, GP, BH); with fewer than 2 running rows the given ones (``fmean``, ``fvar``) instead."""
    denom = tl.maximum(cnt, 1).to(x.dtype)
    mean = _sum(tl.where(run, x, 0.0), 0) / denom
    d = tl.where(run, x - mean[None, :, :], 0.0)
    var = _sum(d * d, 0) / denom
    use = cnt >= 2
    return tl.where(use, mean[None, :, :], fmean), tl.where(use, var[None, :, :], fvar)


@triton.jit
def _norm_fwd(x, valid, run, cnt, t, N, nfeat, fo, fvalid, rows, eps,
              fmean_ptr, fvar_ptr, smean_ptr, svar_ptr, scount_ptr, rstd_ptr,
              KIND: tl.constexpr, SAVE: tl.constexpr):
    """Normalize a tile x (BN, GP, BH) of step t without gain: returns x̂ (zero where not ``valid``). ``fo``
    (1, GP, BH): the feature index of each column (nfeat features); ``rows`` (BN,). Stores the batch statistics
    of a ``BATCH`` norm (mean, var at (t, feature), the count at t) and, when ``SAVE``, rstd: (t, row) for layer
    and RMS, (t, feature) for the batch kinds."""
    if KIND == LAYER or KIND == RMS:
        xh, rstd = _row_norm(x, valid, nfeat, eps, KIND)
        if SAVE:
            tl.store(rstd_ptr + t * N + rows, _sum(_sum(rstd, 2), 1), mask=rows < N)
    else:
        fmean = tl.load(fmean_ptr + t * nfeat + fo, mask=fvalid, other=0.0)
        fvar = tl.load(fvar_ptr + t * nfeat + fo, mask=fvalid, other=1.0)
        if KIND == BATCH:
            mean, var = _col_stats(x, run, cnt, fmean, fvar)
            tl.store(smean_ptr + t * nfeat + fo, mean, mask=fvalid)
            tl.store(svar_ptr + t * nfeat + fo, var, mask=fvalid)
            tl.store(scount_ptr + t, cnt.to(x.dtype))
        else:
            mean, var = fmean, fvar
        rstd = 1.0 / tl.sqrt(var + eps)
        if SAVE:
            tl.store(rstd_ptr + t * nfeat + fo, rstd, mask=fvalid)
        xh = (x - mean) * rstd
    return tl.where(valid, xh, 0.0)


@triton.jit
def _norm_gain(x, valid, run, cnt, t, N, nfeat, fo, fvalid, rows, eps,
               fmean_ptr, fvar_ptr, smean_ptr, svar_ptr, scount_ptr, rstd_ptr, xhat_ptr, xhat_off, gain_ptr,
               KIND: tl.constexpr, SAVE: tl.constexpr):
    """x̂ · gain of a tile (:func:`_norm_fwd`), x̂ stored at ``xhat_ptr + xhat_off`` for backward when ``SAVE``."""
    xh = _norm_fwd(x, valid, run, cnt, t, N, nfeat, fo, fvalid, rows, eps, fmean_ptr, fvar_ptr, smean_ptr, svar_ptr,
                   scount_ptr, rstd_ptr, KIND, SAVE)
    if SAVE:
        tl.store(xhat_ptr + xhat_off, xh, mask=valid)
    return xh * tl.load(gain_ptr + fo, mask=fvalid, other=0.0)


@triton.jit
def _norm_bwd(dxh, xh, t, N, nfeat, fo, fvalid, rows, keep, rstd_ptr, count_ptr, KIND: tl.constexpr):
    """ds from dx̂ (gain already applied) of a tile; dxh, xh zero where not valid. As
    :func:`normrnn.fused.torch_engine.norm_backward`: batch statistics (count >= 2) spread the gradient over
    the running rows (``keep``, (BN, 1, 1) bool); given statistics only scale it."""
    if KIND == LAYER or KIND == RMS:
        rstd = tl.load(rstd_ptr + t * N + rows, mask=rows < N, other=0.0)[:, None, None]
        p = _sum(_sum(dxh * xh, 2), 1)[:, None, None] / nfeat
        if KIND == LAYER:
            m = _sum(_sum(dxh, 2), 1)[:, None, None] / nfeat
            ds = rstd * (dxh - m - xh * p)
        else:
            ds = rstd * (dxh - xh * p)
    else:
        rstd = tl.load(rstd_ptr + t * nfeat + fo, mask=fvalid, other=0.0)
        ds = dxh * rstd
        if KIND == BATCH:
            cnt = tl.load(count_ptr + t)
            c = tl.maximum(cnt, 1.0)
            # finished rows are selected out, not multiplied by 0: their ŝ (from a held state) may be NaN
            dxh = tl.where(keep, dxh, 0.0)
            xh = tl.where(keep, xh, 0.0)
            m = _sum(dxh, 0)[None, :, :] / c
            p = _sum(dxh * xh, 0)[None, :, :] / c
            full = tl.where(keep, rstd * (dxh - m - xh * p), 0.0)
            ds = tl.where(cnt >= 2, full, ds)
    return ds


@triton.jit
def _tile(N, H, GP: tl.constexpr, NG: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr):
    """Index tiles of this program: rows (BN,), r3 (BN,1,1), g3 (1,GP,1), u3 (1,1,BH), validity of the (BN,GP,BH)
    tile (``NG`` real gates) and of its feature columns (1,GP,BH), and of the (BN,1,BH) state tile."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    units = tl.program_id(1) * BH + tl.arange(0, BH)
    g3 = tl.arange(0, GP)[None, :, None]
    r3 = rows[:, None, None]
    u3 = units[None, None, :]
    fvalid = (g3 < NG) & (u3 < H)
    v1 = (r3 < N) & (u3 < H)
    return rows, r3, g3, u3, fvalid & (r3 < N), fvalid, v1


@triton.jit
def _running(mask_ptr, t, N, rows, HAS_MASK: tl.constexpr):
    """The step's running rows (BN,) as bool, and their count."""
    if HAS_MASK:
        run = tl.load(mask_ptr + t * N + rows, mask=rows < N, other=0) != 0
    else:
        run = rows < N
    return run, _sum(run.to(tl.int32), 0)


@triton.jit
def _store_h(h_ptr, out_ptr, t, N, H, off1, v1, run3, h_new, HAS_MASK: tl.constexpr):
    """Stores h_{t+1} and, with padding, the step's output: a finished row outputs zero and keeps h_t, by
    selection. (Without padding the output is h_1..h_T itself.)"""
    if HAS_MASK:
        h = tl.load(h_ptr + t * N * H + off1, mask=v1, other=0.0)
        tl.store(out_ptr + t * N * H + off1, tl.where(run3, h_new, 0.0), mask=v1)
        h_new = tl.where(run3, h_new, h)
    tl.store(h_ptr + (t + 1) * N * H + off1, h_new, mask=v1)


@triton.jit
def _dh_in(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, t, r3, u3, off1, v1, keep, HAS_MASK: tl.constexpr):
    """The gradient reaching h_{t+1}: dh (through the next step's product, ``dhmm``, plus what a finished row
    passed through, ``dhp``) and dh_step (dh plus the step's output gradient ``dout``, strided (sdt, sdn)), which
    is zero on finished rows (selected)."""
    dh = tl.load(dhmm_ptr + off1, mask=v1, other=0.0) + tl.load(dhp_ptr + off1, mask=v1, other=0.0)
    dh_step = dh + tl.load(dout_ptr + t * sdt + r3 * sdn + u3, mask=v1, other=0.0)
    if HAS_MASK:
        dh_step = tl.where(keep, dh_step, 0.0)
    return dh, dh_step


# ------------------------------------------------------------------------------------------------ LSTM


@triton.jit(do_not_specialize=["t", "ci", "co"])
def lstm_fwd_kernel(s_ptr, xa_ptr, bias_ptr, gh_ptr, gc_ptr, bc_ptr, mask_ptr,
                    fmh_ptr, fvh_ptr, fmc_ptr, fvc_ptr,
                    h_ptr, c_ptr, out_ptr, acts_ptr, shat_ptr, rstdh_ptr, chat_ptr, rstdc_ptr,
                    smh_ptr, svh_ptr, sch_ptr, smc_ptr, svc_ptr, scc_ptr,
                    t, ci, co, N, H, eps,
                    KIND_H: tl.constexpr, KIND_C: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BC: tl.constexpr,
                    JOINT: tl.constexpr, CARRY: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
                    BN: tl.constexpr, BH: tl.constexpr):
    """One LSTM step after its GEMM ``s = h_t W_hhᵀ`` (N, 4H): the recurrent (or joint) norm, gates, cell update,
    cell norm, output and padding. h (T+1, N, H) step t -> t+1; the cell at index ci -> co of ``c_ptr`` (the
    whole T+1 history in training, two alternating rows in inference)."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    ci = ci.to(tl.int64)
    co = co.to(tl.int64)
    rows, r3, g3, u3, v4, fv4, v1 = _tile(N, H, 4, 4, BN, BH)
    G = 4 * H
    fo = g3 * H + u3
    off4 = r3 * G + fo
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    run3 = run[:, None, None]
    pre = tl.load(s_ptr + off4, mask=v4, other=0.0)
    xa = tl.load(xa_ptr + t * N * G + off4, mask=v4, other=0.0)
    if JOINT:
        pre = pre + xa
    if KIND_H != NONE:
        pre = _norm_gain(pre, v4, run3, cnt, t, N, G, fo, fv4, rows, eps, fmh_ptr, fvh_ptr, smh_ptr, svh_ptr,
                         sch_ptr, rstdh_ptr, shat_ptr, t * N * G + off4, gh_ptr, KIND_H, SAVE)
    if not JOINT:
        xa_b = xa
        if HAS_BIAS:
            xa_b = xa + tl.load(bias_ptr + fo, mask=fv4, other=0.0)
        a = xa_b + pre
    else:
        a = pre
        if HAS_BIAS:
            a = tl.load(bias_ptr + fo, mask=fv4, other=0.0) + pre
    act = tl.where(g3 == 2, _tanh(a), _sigmoid(a))
    if SAVE:
        tl.store(acts_ptr + t * N * G + off4, act, mask=v4)
    i = _gate(act, g3, 0)
    f = _gate(act, g3, 1)
    g = _gate(act, g3, 2)
    o = _gate(act, g3, 3)
    c = tl.load(c_ptr + ci * N * H + off1, mask=v1, other=0.0)
    c_new = f * c + i * g
    if KIND_C != NONE:
        f1 = u3 < H
        c_out = _norm_gain(c_new, v1, run3, cnt, t, N, H, u3, f1, rows, eps, fmc_ptr, fvc_ptr, smc_ptr, svc_ptr,
                           scc_ptr, rstdc_ptr, chat_ptr, t * N * H + off1, gc_ptr, KIND_C, SAVE)
        if HAS_BC:
            c_out = tl.load(bc_ptr + u3, mask=f1, other=0.0) + c_out
    else:
        c_out = c_new
    h_new = o * _tanh(c_out)
    if CARRY:
        c_keep = c_out
    else:
        c_keep = c_new
    if HAS_MASK:
        c_keep = tl.where(run3, c_keep, c)
    _store_h(h_ptr, out_ptr, t, N, H, off1, v1, run3, h_new, HAS_MASK)
    tl.store(c_ptr + co * N * H + off1, c_keep, mask=v1)


@triton.jit(do_not_specialize=["t"])
def lstm_bwd_kernel(dhmm_ptr, dhp_ptr, dc_ptr, dout_ptr, sdt, sdn,
                    acts_ptr, c_ptr, chat_ptr, rstdc_ptr, shat_ptr, rstdh_ptr,
                    gh_ptr, gc_ptr, bc_ptr, mask_ptr, cnth_ptr, cntc_ptr,
                    da_ptr, ds_ptr, dcout_ptr,
                    t, N, H,
                    KIND_H: tl.constexpr, KIND_C: tl.constexpr, HAS_BC: tl.constexpr, CARRY: tl.constexpr,
                    HAS_MASK: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr):
    """Backward of one LSTM step (:func:`normrnn.fused.torch_engine.lstm_backward`'s loop body). Reads
    dh = dh_mm (the previous GEMM ds W_hh) + dh_pass, and dc; writes da (pre-activation gradients), ds (the
    recurrent product's gradient, = da without a norm), dcout, dc <- the gradient into c_t, dh_pass <- the part
    of dh_t that does not go through the next GEMM."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v4, fv4, v1 = _tile(N, H, 4, 4, BN, BH)
    G = 4 * H
    fo = g3 * H + u3
    off4 = r3 * G + fo
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    keep = run[:, None, None]  # selected, never multiplied: a NaN held by a finished row stays there
    dh, dh_step = _dh_in(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, t, r3, u3, off1, v1, keep, HAS_MASK)
    dc = tl.load(dc_ptr + off1, mask=v1, other=0.0)
    dc_step = dc
    if HAS_MASK:
        dh_pass = tl.where(keep, 0.0, dh)
        dc_pass = tl.where(keep, 0.0, dc)
        dc_step = tl.where(keep, dc, 0.0)
    act = tl.load(acts_ptr + t * N * G + off4, mask=v4, other=0.0)
    i = _gate(act, g3, 0)
    f = _gate(act, g3, 1)
    g = _gate(act, g3, 2)
    o = _gate(act, g3, 3)
    f1 = u3 < H
    if KIND_C != NONE:
        chat = tl.load(chat_ptr + t * N * H + off1, mask=v1, other=0.0)
        gc = tl.load(gc_ptr + u3, mask=f1, other=0.0)
        c_out = chat * gc
        if HAS_BC:
            c_out = tl.load(bc_ptr + u3, mask=f1, other=0.0) + c_out
    else:
        c_out = tl.load(c_ptr + (t + 1) * N * H + off1, mask=v1, other=0.0)
    tc = _tanh(c_out)
    dcout = dh_step * o * (1 - tc * tc)
    if CARRY:
        dcout = dcout + dc_step
    if KIND_C != NONE:
        tl.store(dcout_ptr + t * N * H + off1, dcout, mask=v1)
        dc_new = _norm_bwd(dcout * gc, chat, t, N, H, u3, f1, rows, keep, rstdc_ptr, cntc_ptr, KIND_C)
    else:
        dc_new = dcout
    if not CARRY:
        dc_new = dc_new + dc_step
    c = tl.load(c_ptr + t * N * H + off1, mask=v1, other=0.0)
    di = dc_new * g * (i * (1 - i))
    df = dc_new * c * (f * (1 - f))
    dg = dc_new * i * (1 - g * g)
    do = dh_step * tc * (o * (1 - o))
    da = tl.where(g3 == 0, di, tl.where(g3 == 1, df, tl.where(g3 == 2, dg, do)))
    da = tl.where(v4, da, 0.0)
    tl.store(da_ptr + t * N * G + off4, da, mask=v4)
    if KIND_H != NONE:
        shat = tl.load(shat_ptr + t * N * G + off4, mask=v4, other=0.0)
        dxh = da * tl.load(gh_ptr + fo, mask=fv4, other=0.0)
        ds = _norm_bwd(dxh, shat, t, N, G, fo, fv4, rows, keep, rstdh_ptr, cnth_ptr, KIND_H)
        tl.store(ds_ptr + t * N * G + off4, ds, mask=v4)
    dc_next = dc_new * f
    if HAS_MASK:
        dc_next = dc_next + dc_pass
        tl.store(dhp_ptr + off1, dh_pass, mask=v1)
    else:
        tl.store(dhp_ptr + off1, tl.full((BN, 1, BH), 0.0, dh.dtype), mask=v1)
    tl.store(dc_ptr + off1, dc_next, mask=v1)


# ------------------------------------------------------------------------------------------------ GRU


@triton.jit(do_not_specialize=["t"])
def gru_fwd_kernel(s_ptr, xa_ptr, bhh_ptr, gh_ptr, mask_ptr, fmh_ptr, fvh_ptr,
                   h_ptr, out_ptr, acts_ptr, recn_ptr, shat_ptr, rstdh_ptr, smh_ptr, svh_ptr, sch_ptr,
                   t, N, H, eps,
                   KIND_H: tl.constexpr, HAS_BHH: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
                   BN: tl.constexpr, BH: tl.constexpr):
    """One GRU step with separate terms (:func:`normrnn.fused.torch_engine._gru`) after its GEMM (N, 3H)."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v3, fv3, v1 = _tile(N, H, 4, 3, BN, BH)
    G = 3 * H
    fo = g3 * H + u3
    off3 = r3 * G + fo
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    run3 = run[:, None, None]
    rec = tl.load(s_ptr + off3, mask=v3, other=0.0)
    if KIND_H != NONE:
        rec = _norm_gain(rec, v3, run3, cnt, t, N, G, fo, fv3, rows, eps, fmh_ptr, fvh_ptr, smh_ptr, svh_ptr,
                         sch_ptr, rstdh_ptr, shat_ptr, t * N * G + off3, gh_ptr, KIND_H, SAVE)
    if HAS_BHH:
        rec = rec + tl.load(bhh_ptr + fo, mask=fv3, other=0.0)
    xa = tl.load(xa_ptr + t * N * G + off3, mask=v3, other=0.0)
    r = _sigmoid(_gate(xa, g3, 0) + _gate(rec, g3, 0))
    u = _sigmoid(_gate(xa, g3, 1) + _gate(rec, g3, 1))
    rec_n = _gate(rec, g3, 2)
    n = _tanh(_gate(xa, g3, 2) + r * rec_n)
    h = tl.load(h_ptr + t * N * H + off1, mask=v1, other=0.0)
    h_new = n + u * (h - n)
    if SAVE:
        base = acts_ptr + t * N * G + r3 * G + u3
        tl.store(base, r, mask=v1)
        tl.store(base + H, u, mask=v1)
        tl.store(base + 2 * H, n, mask=v1)
        tl.store(recn_ptr + t * N * H + off1, rec_n, mask=v1)
    _store_h(h_ptr, out_ptr, t, N, H, off1, v1, run3, h_new, HAS_MASK)


@triton.jit(do_not_specialize=["t"])
def gru_bwd_kernel(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, h_ptr, acts_ptr, recn_ptr, shat_ptr, rstdh_ptr,
                   gh_ptr, mask_ptr, cnth_ptr, dxa_ptr, drec_ptr, ds_ptr,
                   t, N, H,
                   KIND_H: tl.constexpr, HAS_MASK: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr):
    """Backward of one GRU step (:func:`normrnn.fused.torch_engine.gru_backward`'s loop body): writes dxa, drec
    (the normalized recurrent term's gradient, for the bias and gain), ds and dh_pass (dh_step u plus what a
    finished row passes through)."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v3, fv3, v1 = _tile(N, H, 4, 3, BN, BH)
    G = 3 * H
    fo = g3 * H + u3
    off3 = r3 * G + fo
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    keep = run[:, None, None]  # selected, never multiplied: a NaN held by a finished row stays there
    dh, dh_step = _dh_in(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, t, r3, u3, off1, v1, keep, HAS_MASK)
    act = tl.load(acts_ptr + t * N * G + off3, mask=v3, other=0.0)
    r = _gate(act, g3, 0)
    u = _gate(act, g3, 1)
    n = _gate(act, g3, 2)
    h = tl.load(h_ptr + t * N * H + off1, mask=v1, other=0.0)
    rec_n = tl.load(recn_ptr + t * N * H + off1, mask=v1, other=0.0)
    dn = dh_step * (1 - u)
    da_n = dn * (1 - n * n)
    da_r = da_n * rec_n * r * (1 - r)
    da_u = dh_step * (h - n) * u * (1 - u)
    dxa = tl.where(g3 == 0, da_r, tl.where(g3 == 1, da_u, da_n))
    drec = tl.where(g3 == 0, da_r, tl.where(g3 == 1, da_u, da_n * r))
    drec = tl.where(v3, drec, 0.0)
    tl.store(dxa_ptr + t * N * G + off3, dxa, mask=v3)
    tl.store(drec_ptr + t * N * G + off3, drec, mask=v3)
    if KIND_H != NONE:
        shat = tl.load(shat_ptr + t * N * G + off3, mask=v3, other=0.0)
        dxh = drec * tl.load(gh_ptr + fo, mask=fv3, other=0.0)
        ds = _norm_bwd(dxh, shat, t, N, G, fo, fv3, rows, keep, rstdh_ptr, cnth_ptr, KIND_H)
        tl.store(ds_ptr + t * N * G + off3, ds, mask=v3)
    dh_pass = dh_step * u
    if HAS_MASK:
        dh_pass = dh_pass + tl.where(keep, 0.0, dh)
    tl.store(dhp_ptr + off1, dh_pass, mask=v1)


@triton.jit(do_not_specialize=["t"])
def gru_joint_fwd_kernel(s_ptr, xa_ptr, bih_ptr, bhh_ptr, gg_ptr, gn_ptr, mask_ptr,
                         fmg_ptr, fvg_ptr, fmn_ptr, fvn_ptr,
                         h_ptr, out_ptr, acts_ptr, recn_ptr, uhat_ptr, vhat_ptr, rstdg_ptr, rstdn_ptr,
                         smg_ptr, svg_ptr, scg_ptr, smn_ptr, svn_ptr, scn_ptr,
                         t, N, H, eps,
                         KIND_G: tl.constexpr, KIND_N: tl.constexpr, HAS_BIH: tl.constexpr,
                         HAS_BHH: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
                         BN: tl.constexpr, BH: tl.constexpr):
    """One GRU step with joint terms (:func:`normrnn.fused.torch_engine._gru_joint`): norm_gates(x_rz + s_rz)
    then the candidate's norm_new(x_n + r (s_n + b_hh_n)), both in this kernel."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v2, fv2, v1 = _tile(N, H, 2, 2, BN, BH)
    G = 3 * H
    fo = g3 * H + u3
    off2 = r3 * G + fo
    off1 = r3 * H + u3
    f1 = u3 < H
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    run3 = run[:, None, None]
    x = t * N * G
    u = tl.load(xa_ptr + x + off2, mask=v2, other=0.0) + tl.load(s_ptr + off2, mask=v2, other=0.0)
    if KIND_G != NONE:
        u = _norm_gain(u, v2, run3, cnt, t, N, 2 * H, fo, fv2, rows, eps, fmg_ptr, fvg_ptr, smg_ptr, svg_ptr,
                       scg_ptr, rstdg_ptr, uhat_ptr, t * N * 2 * H + r3 * 2 * H + fo, gg_ptr, KIND_G, SAVE)
    b_rz = tl.full((BN, 2, BH), 0.0, u.dtype)
    b_hn = tl.full((BN, 1, BH), 0.0, u.dtype)
    b_in = tl.full((BN, 1, BH), 0.0, u.dtype)
    if HAS_BIH:
        b_rz = b_rz + tl.load(bih_ptr + fo, mask=fv2, other=0.0)
        b_in = b_in + tl.load(bih_ptr + 2 * H + u3, mask=f1, other=0.0)
    if HAS_BHH:
        b_rz = b_rz + tl.load(bhh_ptr + fo, mask=fv2, other=0.0)
        b_hn = b_hn + tl.load(bhh_ptr + 2 * H + u3, mask=f1, other=0.0)
    rz = _sigmoid(u + b_rz)
    r = _gate(rz, g3, 0)
    z = _gate(rz, g3, 1)
    rec_n = tl.load(s_ptr + r3 * G + 2 * H + u3, mask=v1, other=0.0) + b_hn
    v = tl.load(xa_ptr + x + r3 * G + 2 * H + u3, mask=v1, other=0.0) + r * rec_n
    if KIND_N != NONE:
        v = _norm_gain(v, v1, run3, cnt, t, N, H, u3, f1, rows, eps, fmn_ptr, fvn_ptr, smn_ptr, svn_ptr,
                       scn_ptr, rstdn_ptr, vhat_ptr, t * N * H + off1, gn_ptr, KIND_N, SAVE)
    n = _tanh(v + b_in)
    h = tl.load(h_ptr + t * N * H + off1, mask=v1, other=0.0)
    h_new = n + z * (h - n)
    if SAVE:
        base = acts_ptr + x + r3 * G + u3
        tl.store(base, r, mask=v1)
        tl.store(base + H, z, mask=v1)
        tl.store(base + 2 * H, n, mask=v1)
        tl.store(recn_ptr + t * N * H + off1, rec_n, mask=v1)
    _store_h(h_ptr, out_ptr, t, N, H, off1, v1, run3, h_new, HAS_MASK)


@triton.jit(do_not_specialize=["t"])
def gru_joint_bwd_kernel(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, h_ptr, acts_ptr, recn_ptr, uhat_ptr, vhat_ptr,
                         rstdg_ptr, rstdn_ptr, gg_ptr, gn_ptr, mask_ptr, cntg_ptr, cntn_ptr,
                         dpre_ptr, dxa_ptr, ds_ptr,
                         t, N, H,
                         KIND_G: tl.constexpr, KIND_N: tl.constexpr, HAS_MASK: tl.constexpr,
                         BN: tl.constexpr, BH: tl.constexpr):
    """Backward of one joint-terms GRU step (:func:`normrnn.fused.torch_engine.gru_joint_backward`'s loop body):
    the candidate's norm first, then through r to the gates' norm. Writes dpre (e_r, e_z, e_n), dxa, ds and
    dh_pass."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v2, fv2, v1 = _tile(N, H, 2, 2, BN, BH)
    G = 3 * H
    fo = g3 * H + u3
    off1 = r3 * H + u3
    f1 = u3 < H
    x = t * N * G
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    keep = run[:, None, None]  # selected, never multiplied: a NaN held by a finished row stays there
    dh, dh_step = _dh_in(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, t, r3, u3, off1, v1, keep, HAS_MASK)
    base = acts_ptr + x + r3 * G + u3
    r = tl.load(base, mask=v1, other=0.0)
    z = tl.load(base + H, mask=v1, other=0.0)
    n = tl.load(base + 2 * H, mask=v1, other=0.0)
    h = tl.load(h_ptr + t * N * H + off1, mask=v1, other=0.0)
    e_n = dh_step * (1 - z) * (1 - n * n)
    e_z = dh_step * (h - n) * z * (1 - z)
    if KIND_N != NONE:
        vhat = tl.load(vhat_ptr + t * N * H + off1, mask=v1, other=0.0)
        dxh = e_n * tl.load(gn_ptr + u3, mask=f1, other=0.0)
        dv = _norm_bwd(dxh, vhat, t, N, H, u3, f1, rows, keep, rstdn_ptr, cntn_ptr, KIND_N)
    else:
        dv = e_n
    e_r = dv * tl.load(recn_ptr + t * N * H + off1, mask=v1, other=0.0) * r * (1 - r)
    e_rz = tl.where(v2, tl.where(g3 == 0, e_r, e_z), 0.0)
    if KIND_G != NONE:
        uhat = tl.load(uhat_ptr + t * N * 2 * H + r3 * 2 * H + fo, mask=v2, other=0.0)
        dxh = e_rz * tl.load(gg_ptr + fo, mask=fv2, other=0.0)
        du = _norm_bwd(dxh, uhat, t, N, 2 * H, fo, fv2, rows, keep, rstdg_ptr, cntg_ptr, KIND_G)
    else:
        du = e_rz
    off2 = r3 * G + fo
    tl.store(dpre_ptr + x + off2, e_rz, mask=v2)
    tl.store(dpre_ptr + x + r3 * G + 2 * H + u3, e_n, mask=v1)
    tl.store(dxa_ptr + x + off2, du, mask=v2)
    tl.store(dxa_ptr + x + r3 * G + 2 * H + u3, dv, mask=v1)
    tl.store(ds_ptr + x + off2, du, mask=v2)
    tl.store(ds_ptr + x + r3 * G + 2 * H + u3, dv * r, mask=v1)
    dh_pass = dh_step * z
    if HAS_MASK:
        dh_pass = dh_pass + tl.where(keep, 0.0, dh)
    tl.store(dhp_ptr + off1, dh_pass, mask=v1)


# ------------------------------------------------------------------------------------------------ Elman RNN


@triton.jit(do_not_specialize=["t"])
def rnn_fwd_kernel(s_ptr, xa_ptr, bias_ptr, gh_ptr, mask_ptr, fmh_ptr, fvh_ptr,
                   h_ptr, out_ptr, act_ptr, shat_ptr, rstdh_ptr, smh_ptr, svh_ptr, sch_ptr,
                   t, N, H, eps,
                   KIND_H: tl.constexpr, HAS_BIAS: tl.constexpr, JOINT: tl.constexpr, RELU: tl.constexpr,
                   HAS_MASK: tl.constexpr, SAVE: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr):
    """One Elman step (:func:`normrnn.fused.torch_engine._rnn`) after its GEMM (N, H); ``act`` (T, N, H): the
    activation before a finished row's state is held (what backward reads)."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v1, f1, _ = _tile(N, H, 1, 1, BN, BH)
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    run3 = run[:, None, None]
    pre = tl.load(s_ptr + off1, mask=v1, other=0.0)
    xa = tl.load(xa_ptr + t * N * H + off1, mask=v1, other=0.0)
    if JOINT:
        pre = xa + pre
    if KIND_H != NONE:
        pre = _norm_gain(pre, v1, run3, cnt, t, N, H, u3, f1, rows, eps, fmh_ptr, fvh_ptr, smh_ptr, svh_ptr,
                         sch_ptr, rstdh_ptr, shat_ptr, t * N * H + off1, gh_ptr, KIND_H, SAVE)
    if not JOINT:
        pre = xa + pre
    if HAS_BIAS:
        pre = pre + tl.load(bias_ptr + u3, mask=f1, other=0.0)
    if RELU:
        h_new = tl.where(pre < 0, 0.0, pre)  # (NaN stays NaN)
    else:
        h_new = _tanh(pre)
    if SAVE and HAS_MASK:  # (without padding the activations are the states h_{t+1})
        tl.store(act_ptr + t * N * H + off1, h_new, mask=v1)
    _store_h(h_ptr, out_ptr, t, N, H, off1, v1, run3, h_new, HAS_MASK)


@triton.jit(do_not_specialize=["t"])
def rnn_bwd_kernel(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, act_ptr, shat_ptr, rstdh_ptr, gh_ptr, mask_ptr,
                   cnth_ptr, da_ptr, ds_ptr,
                   t, N, H,
                   KIND_H: tl.constexpr, RELU: tl.constexpr, HAS_MASK: tl.constexpr,
                   BN: tl.constexpr, BH: tl.constexpr):
    """Backward of one Elman step (:func:`normrnn.fused.torch_engine.rnn_backward`'s loop body). ``act``: the
    step's activation (T, N, H)."""
    t = t.to(tl.int64)  # (offsets such as t * N * 4H pass 2**31 on long, wide loops)
    rows, r3, g3, u3, v1, f1, _ = _tile(N, H, 1, 1, BN, BH)
    off1 = r3 * H + u3
    run, cnt = _running(mask_ptr, t, N, rows, HAS_MASK)
    keep = run[:, None, None]  # selected, never multiplied: a NaN held by a finished row stays there
    dh, dh_step = _dh_in(dhmm_ptr, dhp_ptr, dout_ptr, sdt, sdn, t, r3, u3, off1, v1, keep, HAS_MASK)
    y = tl.load(act_ptr + t * N * H + off1, mask=v1, other=0.0)
    if RELU:
        da = dh_step * (y > 0).to(dh.dtype)
    else:
        da = dh_step * (1 - y * y)
    da = tl.where(v1, da, 0.0)
    tl.store(da_ptr + t * N * H + off1, da, mask=v1)
    if KIND_H != NONE:
        shat = tl.load(shat_ptr + t * N * H + off1, mask=v1, other=0.0)
        dxh = da * tl.load(gh_ptr + u3, mask=f1, other=0.0)
        ds = _norm_bwd(dxh, shat, t, N, H, u3, f1, rows, keep, rstdh_ptr, cnth_ptr, KIND_H)
        tl.store(ds_ptr + t * N * H + off1, ds, mask=v1)
    if HAS_MASK:
        tl.store(dhp_ptr + off1, tl.where(keep, 0.0, dh), mask=v1)
    else:
        tl.store(dhp_ptr + off1, tl.full((BN, 1, BH), 0.0, dh.dtype), mask=v1)
