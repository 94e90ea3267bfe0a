"""Picking the path: the one place that decides what runs.

* which *engine* runs the fused loop for tensors of a device and dtype (:func:`engine`, :func:`force_engine`);
* whether a layer runs the fused backend or the reference loop (the reference while exporting: an exported
  graph holds ATen ops only), and why a variant has no fused path (:func:`uses_fused`, :func:`unsupported_reason`);
* whether a call can take a one-call kernel: a whole stack's streaming step (:func:`streams`) or a
  one-step LSTM sequence (:func:`one_step`).

Everything here works from flags and the parameters' device and dtype, never from a layer module: the layers
(:mod:`normrnn.layers`) pass what they are.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional

import torch

from ..tracing import is_exporting
from . import native, torch_engine, triton_engine
from .contract import Engine

BACKENDS = ("auto", "fused", "reference")
NATIVE_DTYPES = (torch.float32, torch.float64)
ENGINES = ("native", "torch", "triton")

_forced: Optional[str] = None
_triton: Optional[bool] = None  # whether Triton imports (asked on the first CUDA call, never on a CPU-only run)


def forced() -> Optional[str]:
    """The engine forced by :func:`force_engine` (``"native"``, ``"torch"``, ``"triton"``) or ``None``."""
    return _forced


@contextlib.contextmanager
def force_engine(name: Optional[str]):
    """Run the fused backend on ``"native"``, ``"torch"`` or ``"triton"`` inside the ``with`` block (tests,
    benchmarks). ``"triton"`` on CPU tensors runs the kernels under Triton's interpreter (slow: tests only)."""
    global _forced
    if name not in (None, *ENGINES):
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def triton_available() -> bool:
    """Whether Triton imports here (asked once; the answer is kept). Without it CUDA runs the PyTorch engine,
    with one warning."""
    global _triton
    if _triton is None:
        try:
            import triton  # noqa: F401
            _triton = True
        except Exception:  # not installed, or an install that fails to import: the PyTorch engine runs instead
            _triton = False
            warnings.warn("normrnn: Triton is not available, so CUDA tensors run the fused backend's PyTorch engine "
                          "(a Python loop of ATen calls, several times slower); install triton for the GPU engine",
                          RuntimeWarning, stacklevel=3)
    return _triton


def engine(device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Engine:
    """The engine for tensors on ``device`` of ``dtype``: on the CPU the native one if it is (or can be) built
    and reads them (float32/float64), else the PyTorch one; on CUDA the Triton one where Triton imports
    (float32/float64: the layers run half precision in float32), else the PyTorch one (see
    :func:`force_engine`)."""
    if _forced == "triton":
        if not triton_available():
            raise RuntimeError("the Triton engine is forced but Triton is not available")
        return triton_engine
    if device is not None and device.type == "cuda" and _forced is None and (
            dtype is None or dtype in triton_engine.DTYPES) and triton_available():
        return triton_engine
    if _forced == "torch" or (device is not None and device.type != "cpu") or (
            dtype is not None and dtype not in NATIVE_DTYPES):
        return torch_engine
    loaded = native.engine()
    if _forced == "native" and loaded is None:
        raise RuntimeError("the native fused kernels are not available on this machine")
    return loaded or torch_engine


def engine_name(device: Optional[torch.device] = None) -> str:
    """``"native"``, ``"torch"`` or ``"triton"``: which engine the fused backend runs for tensors on ``device``."""
    return engine(device).name


def auto_prefers_reference(device: torch.device) -> bool:
    """Whether ``backend="auto"`` should run the reference loop: on a CPU without the native kernels (and no
    engine forced), the PyTorch engine is not faster than the reference loop, which lets autograd's C++ backward
    do the per-step work (benchmarks/fallback.py: 0.80x-1.03x of its time here)."""
    return _forced is None and device.type == "cpu" and native.load() is None


def unsupported_reason(mode: str, norm_terms: str, zoneout: float, sync_stats: bool = False) -> Optional[str]:
    """Why a configuration has no fused path, or ``None`` when it has one.

    ``sync_stats`` (the layer trains batch norm with synchronised statistics) is covered: the engines all-reduce
    each step's sums through the loop's reducer (:mod:`.contract`).
    """
    if zoneout:
        return "zoneout is only in the reference loop"
    return None


def uses_fused(backend: str, mode: str, norm_terms: str, device: torch.device, zoneout: float,
               sync_stats: bool) -> bool:
    """Whether a layer with these settings runs the fused backend; ``backend="fused"`` on a configuration it
    does not cover is an error. ``sync_stats``: batch norm trains with synchronised statistics now."""
    if backend == "reference" or is_exporting():  # (an exported graph holds ATen ops only)
        return False
    reason = unsupported_reason(mode, norm_terms, zoneout, sync_stats=sync_stats)
    if reason and backend == "fused":
        raise ValueError(f"backend='fused' cannot run this layer: {reason}; use backend='auto' or 'reference'")
    if backend == "auto" and auto_prefers_reference(device):
        return False
    return reason is None


def active_backend(fused: bool, device: torch.device) -> str:
    """``"reference"``, ``"fused-native"`` (C++ kernels), ``"fused-triton"`` (the GPU kernels) or ``"fused-torch"``
    (their PyTorch twin)."""
    return f"fused-{engine_name(device)}" if fused else "reference"


def streams(fused: bool, mode: str, bidirectional: bool, zoneout: float, residual: bool, dropout_active: bool,
            device: torch.device, dtype: torch.dtype, proj_size: int = 0) -> Optional[Engine]:
    """The engine that runs a streaming step of a whole stack (LSTM, GRU, Elman RNN) in one call, or ``None`` when
    the general path must (bidirectional, residual, zoneout, training-mode dropout or DropConnect, a projection, the
    reference backend, an engine without the kernel: CUDA tensors, the PyTorch engine). Per-norm and per-call
    conditions (batch statistics, gradients) are :mod:`normrnn.fused.stream`'s."""
    if not fused or bidirectional or zoneout or residual or dropout_active or proj_size:
        return None
    eng = engine(device, dtype)
    return eng if eng.has_stream and device.type in eng.devices else None


def one_step(mode: str, steps: int, eng: Engine) -> bool:
    """Whether a fused call over ``steps`` steps should try the one-step kernel (an LSTM step in one call: at
    T = 1 the per-call overhead of the sequence kernel would dominate)."""
    return steps == 1 and mode == "LSTM" and eng.has_stream
