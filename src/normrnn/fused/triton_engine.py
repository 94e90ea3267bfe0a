"""The Triton engine: the fused time loop on the GPU, one GEMM and one fused kernel per step.

An engine of :mod:`normrnn.fused.contract`, and the one :mod:`normrnn.fused.select` picks for CUDA tensors where
Triton imports. Per step, forward: the recurrent GEMM ``h_t W_hhᵀ`` through torch (cuBLAS) into a preallocated
buffer, then **one** kernel of :mod:`normrnn.fused.triton_kernels` for the recurrent (or joint) term's norm, the
input term, the biases, the gates, the cell update, the cell norm, the output and the padding. Backward: one
kernel and one GEMM (``ds_t W_hh``) per step; the weight, bias and gain gradients as single reductions over all
T·N rows after the loop. Batch statistics come back in :class:`~.contract.Stats` as from the other engines.
:mod:`normrnn.fused.torch_engine` is the specification this engine follows step for step (the same formulas,
the same order); what it saves differs (its own layout, opaque outside this module).

Launch overhead: on CUDA the whole time loop, forward or backward, is captured once per shape and flags as a
CUDA graph and replayed (:mod:`normrnn.fused.cuda_graphs`); the loop has no host synchronisation, so it can be.

Kernels: CUDA tensors run the compiled kernels. CPU tensors (only reachable through
``force_engine("triton")``: the tests) run a second copy of the kernels module made under Triton's interpreter
(``TRITON_INTERPRET=1`` while it is decorated), so the same kernel code is checked on machines without a GPU.

Precision: the engine computes in its inputs' dtype, float32 or float64 (the layers run half-precision calls in
float32 before the engine sees them: :mod:`normrnn.layers`).
"""
from __future__ import annotations

import importlib.util
import os
import threading

import torch
from torch import Tensor

from . import cuda_graphs
from .contract import (BATCH, LAYER, NONE, RMS, ForwardResult, GRUGrads, GRUJointGrads, GRUJointLoop,
                       GRULoop, InferResult, LSTMGrads, LSTMLoop, RNNGrads, RNNLoop, Saved, Stats)

name = "triton"
devices = ("cuda", "cpu")  # CPU tensors run under Triton's interpreter (tests)
has_stream = False  # LSTM.step runs the general path (one loop of T = 1)
has_input_kernels = False  # the input term's norms run as ordinary PyTorch

DTYPES = (torch.float32, torch.float64)
_ROW_KINDS = (LAYER, RMS)
_TILE = 4096  # elements of a program's (rows x gates x units) tile, at most (unless a norm needs more)

_lock = threading.Lock()
_kernels: dict = {}


def kernels(device: torch.device):
    """The kernels module for tensors on ``device``: compiled for CUDA, interpreted for CPU."""
    interpret = device.type != "cuda"
    with _lock:
        if interpret not in _kernels:
            _kernels[interpret] = _load(interpret)
        return _kernels[interpret]


def _load(interpret: bool):
    if not interpret:
        from . import triton_kernels

        return triton_kernels
    # A separate copy of the module, decorated while TRITON_INTERPRET=1 (triton.jit reads it then, and only then).
    # Triton itself is imported first, outside the flag: its own library must stay compiled code for CUDA.
    import triton.language  # noqa: F401

    spec = importlib.util.find_spec(f"{__package__}.triton_kernels")
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


# ------------------------------------------------------------------------------------------------ launch geometry


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def blocks(N: int, H: int, gates: int, kinds: tuple) -> tuple[int, int]:
    """(BN, BH): rows and hidden units of one program's tile (``gates``: the tile's gate count, a power of two).
    A row norm (layer, RMS) needs whole rows, batch statistics need all rows; otherwise a tile of about
    :data:`_TILE` elements."""
    row = any(k in _ROW_KINDS for k in kinds)
    batch = any(k == BATCH for k in kinds)
    bn, bh = _pow2(N), _pow2(H)
    if row and batch:
        return bn, bh
    if row:
        return max(1, min(bn, _TILE // (gates * bh))), bh
    if batch:
        return bn, max(1, min(bh, _TILE // (gates * bn)))
    bh = min(bh, 64)
    return max(1, min(bn, _TILE // 2 // (gates * bh))), bh


def _meta(N: int, H: int, gates: int, kinds: tuple) -> tuple[tuple, dict]:
    bn, bh = blocks(N, H, gates, kinds)
    grid = (-(-N // bn), -(-H // bh))
    return grid, {"BN": bn, "BH": bh, "num_warps": 8 if bn * gates * bh > 2048 else 4}


def _kind(kind: int, gain: Tensor) -> int:
    """The norm that runs: none without a gain (as in the PyTorch engine)."""
    return kind if gain.numel() else NONE


def _stats(T: int, F: int, like: Tensor, kind: int) -> Stats:
    if kind != BATCH:
        return Stats(like.new_empty(0), like.new_empty(0), like.new_empty(0))
    return Stats(like.new_zeros(T, F), like.new_ones(T, F), like.new_zeros(T))


def _rstd(T: int, N: int, F: int, like: Tensor, kind: int, save: bool) -> Tensor:
    if not save or kind == NONE:
        return like.new_empty(0)
    return like.new_empty(T, N if kind in _ROW_KINDS else F)


class _Args:
    """Pointer arguments: a 1-element stand-in for every absent tensor (no kernel reads it: its flag is off)."""

    def __init__(self, like: Tensor):
        self.one = like.new_zeros(1)
        self.byte = torch.zeros(1, dtype=torch.uint8, device=like.device)

    def __call__(self, t: Tensor) -> Tensor:
        if not t.numel():
            return self.byte if t.dtype == torch.bool else self.one
        if t.dtype == torch.bool:
            return t.contiguous().view(torch.uint8)
        return t.contiguous()


def _h_states(xa: Tensor, h0: Tensor, has_mask: bool) -> tuple[Tensor, Tensor]:
    """h_0..h_T (T+1, N, H), h_0 set, and the output: h_1..h_T itself, or a buffer of its own with padding (where
    a finished row outputs zero but keeps its state)."""
    T, N = xa.shape[:2]
    h_all = xa.new_empty(T + 1, N, h0.shape[1])
    h_all[0] = h0
    return h_all, (xa.new_empty(T, N, h0.shape[1]) if has_mask else h_all[1:])


def _backward_steps(kernel, grid: tuple, dh_mm: Tensor, dh_pass: Tensor, state: tuple, dout: Tensor, args: tuple,
                    ds: Tensor, w_hh: Tensor, N: int, H: int, **flags) -> None:
    """The backward time loop: step t's kernel reads dh_mm (the gradient through step t+1's product) and dh_pass
    and writes ds[t]; one GEMM takes ds[t] back through W_hh. ``state``: further carried gradients (the cell's)."""
    for t in range(ds.shape[0] - 1, -1, -1):
        kernel[grid](dh_mm, dh_pass, *state, dout, dout.stride(0), dout.stride(1), *args, t, N, H, **flags)
        torch.mm(ds[t], w_hh, out=dh_mm)


def _dw_hh(ds: Tensor, h_all: Tensor) -> Tensor:
    """dW_hh = Σ_t ds_tᵀ h_t over all T·N rows, one GEMM."""
    return ds.reshape(-1, ds.shape[2]).t() @ h_all[:-1].reshape(-1, h_all.shape[2])


def _check(xa: Tensor) -> None:
    if xa.dtype not in DTYPES:
        raise TypeError(f"the Triton engine runs float32 and float64 loops, not {xa.dtype}")


# ------------------------------------------------------------------------------------------------ LSTM


def _lstm(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop, save: bool):
    _check(xa)
    K = kernels(xa.device)
    T, N, G = xa.shape
    H = G // 4
    kind_h, kind_c = _kind(loop.kind_h, loop.gamma_h), _kind(loop.kind_c, loop.gamma_c)
    a = _Args(xa)
    has_mask = loop.mask.numel() > 0
    h_all, out = _h_states(xa, h0, has_mask)
    c_all = xa.new_empty(T + 1 if save else 2, N, H)
    c_all[0] = c0
    acts = xa.new_empty(T, N, G) if save else a.one
    shat = xa.new_empty(T, N, G) if save and kind_h else a.one
    chat = xa.new_empty(T, N, H) if save and kind_c else a.one
    rstd_h, rstd_c = _rstd(T, N, G, xa, kind_h, save), _rstd(T, N, H, xa, kind_c, save)
    stats_h, stats_c = _stats(T, G, xa, loop.kind_h), _stats(T, H, xa, loop.kind_c)
    s = xa.new_empty(N, G)
    wt = loop.w_hh.t().contiguous()
    grid, meta = _meta(N, H, 4, (kind_h, kind_c))
    fixed = [a(t) for t in (*loop.fixed_h, *loop.fixed_c)]
    args = (a(loop.bias), a(loop.gamma_h), a(loop.gamma_c), a(loop.beta_c), a(loop.mask), *fixed)
    outs = (h_all, c_all, a(out) if has_mask else a.one, acts, shat, a(rstd_h), chat, a(rstd_c),
            *(a(x) for x in (*stats_h, *stats_c)))
    for t in range(T):
        torch.mm(h_all[t], wt, out=s)
        ci, co = (t, t + 1) if save else (t % 2, (t + 1) % 2)
        K.lstm_fwd_kernel[grid](s, xa, *args, *outs, t, ci, co, N, H, loop.eps,
                                KIND_H=kind_h, KIND_C=kind_c, HAS_BIAS=loop.bias.numel() > 0,
                                HAS_BC=loop.beta_c.numel() > 0, JOINT=loop.joint, CARRY=loop.carry,
                                HAS_MASK=has_mask, SAVE=save, **meta)
    c_last = c_all[T if save else T % 2]
    return out, h_all, c_all, c_last, acts, shat, rstd_h, chat, rstd_c, stats_h, stats_c


def lstm_forward(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> ForwardResult:
    out, h_all, c_all, c_last, acts, shat, rstd_h, chat, rstd_c, stats_h, stats_c = cuda_graphs.run(
        "lstm_forward", _lstm, xa, h0, c0, loop, True)
    saved = Saved((loop.w_hh, loop.gamma_h, loop.gamma_c, loop.beta_c, loop.mask, h_all, c_all, acts, shat,
                   rstd_h, chat, rstd_c, stats_h.count, stats_c.count),
                  (_kind(loop.kind_h, loop.gamma_h), _kind(loop.kind_c, loop.gamma_c), loop.joint, loop.carry))
    return ForwardResult(out, (h_all[-1].clone(), c_last.clone()), (stats_h, stats_c), saved)


def lstm_infer(xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> InferResult:
    out, h_all, _, c_last, *_, stats_h, stats_c = cuda_graphs.run("lstm_infer", _lstm, xa, h0, c0, loop, False)
    return InferResult(out, (h_all[-1], c_last), (stats_h, stats_c))


def _lstm_backward(dout: Tensor, dhT: Tensor, dcT: Tensor, saved: Saved):
    (w_hh, gamma_h, gamma_c, beta_c, mask, h_all, c_all, acts, shat, rstd_h, chat, rstd_c, count_h,
     count_c) = saved.tensors
    kind_h, kind_c, joint, carry = saved.flags
    K = kernels(acts.device)
    T, N, G = acts.shape
    H = G // 4
    a = _Args(acts)
    da = torch.empty_like(acts)
    ds = torch.empty_like(acts) if kind_h else da
    dcout = acts.new_empty(T, N, H) if kind_c else a.one
    dh_mm, dh_pass, dc = acts.new_zeros(N, H), dhT.contiguous().clone(), dcT.contiguous().clone()
    grid, meta = _meta(N, H, 4, (kind_h, kind_c))
    args = (a(acts), c_all, a(chat), a(rstd_c), a(shat), a(rstd_h), a(gamma_h), a(gamma_c), a(beta_c), a(mask),
            a(count_h), a(count_c), da, ds, dcout)
    _backward_steps(K.lstm_bwd_kernel, grid, dh_mm, dh_pass, (dc,), dout, args, ds, w_hh, N, H,
                    KIND_H=kind_h, KIND_C=kind_c, HAS_BC=beta_c.numel() > 0, CARRY=carry,
                    HAS_MASK=mask.numel() > 0, **meta)
    rows = T * N
    dw_hh = _dw_hh(ds, h_all)
    dbias = da.reshape(rows, G).sum(0)
    dgamma_h = (da * shat).reshape(rows, G).sum(0) if kind_h else torch.zeros_like(gamma_h)
    if kind_c:
        dgamma_c = (dcout * chat).reshape(rows, H).sum(0)
        dbeta_c = dcout.reshape(rows, H).sum(0)
    else:
        dgamma_c, dbeta_c = torch.zeros_like(gamma_c), torch.zeros_like(beta_c)
    return ds if joint else da, dh_mm + dh_pass, dc, dw_hh, dbias, dgamma_h, dgamma_c, dbeta_c


def lstm_backward(dout: Tensor, dhT: Tensor, dcT: Tensor, saved: Saved) -> LSTMGrads:
    """Gradients of :func:`lstm_forward` (:func:`normrnn.fused.torch_engine.lstm_backward`'s, step for step)."""
    return LSTMGrads(*cuda_graphs.run("lstm_backward", _lstm_backward, dout, dhT, dcT, saved))


# ------------------------------------------------------------------------------------------------ GRU


def _gru(xa: Tensor, h0: Tensor, loop: GRULoop, save: bool):
    _check(xa)
    K = kernels(xa.device)
    T, N, G = xa.shape
    H = G // 3
    kind_h = _kind(loop.kind_h, loop.gamma_h)
    a = _Args(xa)
    has_mask = loop.mask.numel() > 0
    h_all, out = _h_states(xa, h0, has_mask)
    acts = xa.new_empty(T, N, G) if save else a.one
    rec_n = xa.new_empty(T, N, H) if save else a.one
    shat = xa.new_empty(T, N, G) if save and kind_h else a.one
    rstd_h = _rstd(T, N, G, xa, kind_h, save)
    stats_h = _stats(T, G, xa, loop.kind_h)
    s = xa.new_empty(N, G)
    wt = loop.w_hh.t().contiguous()
    grid, meta = _meta(N, H, 4, (kind_h,))
    args = (a(loop.bias_hh), a(loop.gamma_h), a(loop.mask), a(loop.fixed_h.mean), a(loop.fixed_h.var), h_all,
            a(out) if has_mask else a.one, acts, rec_n, shat, a(rstd_h), *(a(x) for x in stats_h))
    for t in range(T):
        torch.mm(h_all[t], wt, out=s)
        K.gru_fwd_kernel[grid](s, xa, *args, t, N, H, loop.eps, KIND_H=kind_h, HAS_BHH=loop.bias_hh.numel() > 0,
                               HAS_MASK=has_mask, SAVE=save, **meta)
    return out, h_all, acts, rec_n, shat, rstd_h, stats_h


def gru_forward(xa: Tensor, h0: Tensor, loop: GRULoop) -> ForwardResult:
    out, h_all, acts, rec_n, shat, rstd_h, stats_h = cuda_graphs.run("gru_forward", _gru, xa, h0, loop, True)
    saved = Saved((loop.w_hh, loop.gamma_h, loop.mask, h_all, acts, rec_n, shat, rstd_h, stats_h.count),
                  (_kind(loop.kind_h, loop.gamma_h),))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_h,), saved)


def gru_infer(xa: Tensor, h0: Tensor, loop: GRULoop) -> InferResult:
    out, h_all, *_, stats_h = cuda_graphs.run("gru_infer", _gru, xa, h0, loop, False)
    return InferResult(out, (h_all[-1],), (stats_h,))


def _gru_backward(dout: Tensor, dhT: Tensor, saved: Saved):
    w_hh, gamma_h, mask, h_all, acts, rec_n, shat, rstd_h, count_h = saved.tensors
    (kind_h,) = saved.flags
    K = kernels(acts.device)
    T, N, G = acts.shape
    H = G // 3
    a = _Args(acts)
    dxa, drec = torch.empty_like(acts), torch.empty_like(acts)
    ds = torch.empty_like(acts) if kind_h else drec
    dh_mm, dh_pass = acts.new_zeros(N, H), dhT.contiguous().clone()
    grid, meta = _meta(N, H, 4, (kind_h,))
    args = (h_all, acts, rec_n, a(shat), a(rstd_h), a(gamma_h), a(mask), a(count_h), dxa, drec, ds)
    _backward_steps(K.gru_bwd_kernel, grid, dh_mm, dh_pass, (), dout, args, ds, w_hh, N, H,
                    KIND_H=kind_h, HAS_MASK=mask.numel() > 0, **meta)
    rows = T * N
    dw_hh = _dw_hh(ds, h_all)
    dbias = drec.reshape(rows, G).sum(0)
    dgamma_h = (drec * shat).reshape(rows, G).sum(0) if kind_h else torch.zeros_like(gamma_h)
    return dxa, dh_mm + dh_pass, dw_hh, dbias, dgamma_h


def gru_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> GRUGrads:
    """Gradients of :func:`gru_forward`."""
    return GRUGrads(*cuda_graphs.run("gru_backward", _gru_backward, dout, dhT, saved))


# ------------------------------------------------------------------------------------------------ GRU, joint terms


def _gru_joint(xa: Tensor, h0: Tensor, loop: GRUJointLoop, save: bool):
    _check(xa)
    K = kernels(xa.device)
    T, N, G = xa.shape
    H = G // 3
    kind_g, kind_n = _kind(loop.kind_g, loop.gamma_g), _kind(loop.kind_n, loop.gamma_n)
    a = _Args(xa)
    has_mask = loop.mask.numel() > 0
    h_all, out = _h_states(xa, h0, has_mask)
    acts = xa.new_empty(T, N, G) if save else a.one
    rec_n = xa.new_empty(T, N, H) if save else a.one
    uhat = xa.new_empty(T, N, 2 * H) if save and kind_g else a.one
    vhat = xa.new_empty(T, N, H) if save and kind_n else a.one
    rstd_g, rstd_n = _rstd(T, N, 2 * H, xa, kind_g, save), _rstd(T, N, H, xa, kind_n, save)
    stats_g, stats_n = _stats(T, 2 * H, xa, loop.kind_g), _stats(T, H, xa, loop.kind_n)
    s = xa.new_empty(N, G)
    wt = loop.w_hh.t().contiguous()
    grid, meta = _meta(N, H, 2, (kind_g, kind_n))
    fixed = [a(t) for t in (*loop.fixed_g, *loop.fixed_n)]
    args = (a(loop.bias_ih), a(loop.bias_hh), a(loop.gamma_g), a(loop.gamma_n), a(loop.mask), *fixed, h_all,
            a(out) if has_mask else a.one, acts, rec_n, uhat, vhat, a(rstd_g), a(rstd_n),
            *(a(x) for x in (*stats_g, *stats_n)))
    for t in range(T):
        torch.mm(h_all[t], wt, out=s)
        K.gru_joint_fwd_kernel[grid](s, xa, *args, t, N, H, loop.eps, KIND_G=kind_g, KIND_N=kind_n,
                                     HAS_BIH=loop.bias_ih.numel() > 0, HAS_BHH=loop.bias_hh.numel() > 0,
                                     HAS_MASK=has_mask, SAVE=save, **meta)
    return out, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n, stats_g, stats_n


def gru_joint_forward(xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> ForwardResult:
    out, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n, stats_g, stats_n = cuda_graphs.run(
        "gru_joint_forward", _gru_joint, xa, h0, loop, True)
    saved = Saved((loop.w_hh, loop.gamma_g, loop.gamma_n, loop.mask, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n,
                   stats_g.count, stats_n.count),
                  (_kind(loop.kind_g, loop.gamma_g), _kind(loop.kind_n, loop.gamma_n)))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_g, stats_n), saved)


def gru_joint_infer(xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> InferResult:
    out, h_all, *_, stats_g, stats_n = cuda_graphs.run("gru_joint_infer", _gru_joint, xa, h0, loop, False)
    return InferResult(out, (h_all[-1],), (stats_g, stats_n))


def _gru_joint_backward(dout: Tensor, dhT: Tensor, saved: Saved):
    (w_hh, gamma_g, gamma_n, mask, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n, count_g,
     count_n) = saved.tensors
    kind_g, kind_n = saved.flags
    K = kernels(acts.device)
    T, N, G = acts.shape
    H = G // 3
    a = _Args(acts)
    dpre, dxa, ds = torch.empty_like(acts), torch.empty_like(acts), torch.empty_like(acts)
    dh_mm, dh_pass = acts.new_zeros(N, H), dhT.contiguous().clone()
    grid, meta = _meta(N, H, 2, (kind_g, kind_n))
    args = (h_all, acts, rec_n, a(uhat), a(vhat), a(rstd_g), a(rstd_n), a(gamma_g), a(gamma_n), a(mask),
            a(count_g), a(count_n), dpre, dxa, ds)
    _backward_steps(K.gru_joint_bwd_kernel, grid, dh_mm, dh_pass, (), dout, args, ds, w_hh, N, H,
                    KIND_G=kind_g, KIND_N=kind_n, HAS_MASK=mask.numel() > 0, **meta)
    rows = T * N
    dw_hh = _dw_hh(ds, h_all)
    d_rz = dpre[..., :2 * H].reshape(rows, 2 * H).sum(0)
    dbias_ih = torch.cat([d_rz, dpre[..., 2 * H:].reshape(rows, H).sum(0)])
    dbias_hh = torch.cat([d_rz, ds[..., 2 * H:].reshape(rows, H).sum(0)])  # b_hh_n sits inside r * (...)
    dgamma_g = ((dpre[..., :2 * H] * uhat).reshape(rows, 2 * H).sum(0) if kind_g else torch.zeros_like(gamma_g))
    dgamma_n = ((dpre[..., 2 * H:] * vhat).reshape(rows, H).sum(0) if kind_n else torch.zeros_like(gamma_n))
    return dxa, dh_mm + dh_pass, dw_hh, dbias_ih, dbias_hh, dgamma_g, dgamma_n


def gru_joint_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> GRUJointGrads:
    """Gradients of :func:`gru_joint_forward`."""
    return GRUJointGrads(*cuda_graphs.run("gru_joint_backward", _gru_joint_backward, dout, dhT, saved))


# ------------------------------------------------------------------------------------------------ Elman RNN


def _rnn(xa: Tensor, h0: Tensor, loop: RNNLoop, save: bool):
    _check(xa)
    K = kernels(xa.device)
    T, N, H = xa.shape
    kind_h = _kind(loop.kind_h, loop.gamma_h)
    a = _Args(xa)
    has_mask = loop.mask.numel() > 0
    h_all, out = _h_states(xa, h0, has_mask)
    act = (xa.new_empty(T, N, H) if has_mask else h_all[1:]) if save else a.one
    shat = xa.new_empty(T, N, H) if save and kind_h else a.one
    rstd_h = _rstd(T, N, H, xa, kind_h, save)
    stats_h = _stats(T, H, xa, loop.kind_h)
    s = xa.new_empty(N, H)
    wt = loop.w_hh.t().contiguous()
    grid, meta = _meta(N, H, 1, (kind_h,))
    # without padding the activations are the states: no separate buffer (the kernel stores them twice)
    args = (a(loop.bias), a(loop.gamma_h), a(loop.mask), a(loop.fixed_h.mean), a(loop.fixed_h.var), h_all,
            a(out) if has_mask else a.one, act if has_mask and save else a.one, shat, a(rstd_h),
            *(a(x) for x in stats_h))
    for t in range(T):
        torch.mm(h_all[t], wt, out=s)
        K.rnn_fwd_kernel[grid](s, xa, *args, t, N, H, loop.eps, KIND_H=kind_h, HAS_BIAS=loop.bias.numel() > 0,
                               JOINT=loop.joint, RELU=loop.relu, HAS_MASK=has_mask, SAVE=save,
                               **meta)
    return out, h_all, act, shat, rstd_h, stats_h


def rnn_forward(xa: Tensor, h0: Tensor, loop: RNNLoop) -> ForwardResult:
    out, h_all, act, shat, rstd_h, stats_h = cuda_graphs.run("rnn_forward", _rnn, xa, h0, loop, True)
    saved = Saved((loop.w_hh, loop.gamma_h, loop.mask, h_all, act, shat, rstd_h, stats_h.count),
                  (_kind(loop.kind_h, loop.gamma_h), loop.joint, loop.relu))
    return ForwardResult(out, (h_all[-1].clone(),), (stats_h,), saved)


def rnn_infer(xa: Tensor, h0: Tensor, loop: RNNLoop) -> InferResult:
    out, h_all, *_, stats_h = cuda_graphs.run("rnn_infer", _rnn, xa, h0, loop, False)
    return InferResult(out, (h_all[-1],), (stats_h,))


def _rnn_backward(dout: Tensor, dhT: Tensor, saved: Saved):
    w_hh, gamma_h, mask, h_all, act, shat, rstd_h, count_h = saved.tensors
    kind_h, joint, relu = saved.flags
    K = kernels(act.device)
    T, N, H = act.shape
    a = _Args(act)
    da = torch.empty_like(act)
    ds = torch.empty_like(act) if kind_h else da
    dh_mm, dh_pass = act.new_zeros(N, H), dhT.contiguous().clone()
    grid, meta = _meta(N, H, 1, (kind_h,))
    args = (a(act), a(shat), a(rstd_h), a(gamma_h), a(mask), a(count_h), da, ds)
    _backward_steps(K.rnn_bwd_kernel, grid, dh_mm, dh_pass, (), dout, args, ds, w_hh, N, H,
                    KIND_H=kind_h, RELU=relu, HAS_MASK=mask.numel() > 0, **meta)
    rows = T * N
    dw_hh = _dw_hh(ds, h_all)
    dbias = da.reshape(rows, H).sum(0)
    dgamma_h = (da * shat).reshape(rows, H).sum(0) if kind_h else torch.zeros_like(gamma_h)
    return ds if joint else da, dh_mm + dh_pass, dw_hh, dbias, dgamma_h


def rnn_backward(dout: Tensor, dhT: Tensor, saved: Saved) -> RNNGrads:
    """Gradients of :func:`rnn_forward`."""
    return RNNGrads(*cuda_graphs.run("rnn_backward", _rnn_backward, dout, dhT, saved))
