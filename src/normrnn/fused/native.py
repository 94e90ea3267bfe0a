"""The native engine: the C++ kernels (``csrc/``), built on first use, and the adapter that gives them the engine
contract of :mod:`normrnn.fused.contract`.

:func:`load` returns the compiled module (``None`` when it cannot be built); :func:`engine` the
:class:`NativeEngine` over it. The module's bindings already return the contract's parts (out, state, stats,
saved) as plain tuples; the adapter only names them, and passes a loop's named arguments in the kernels' order.

Built with ``torch.utils.cpp_extension.load`` into ``$NORMRNN_BUILD`` (default ``~/.cache/normrnn/build``), in a
folder named by a hash of the source, the torch and Python versions and the CPU, so a rebuild happens only when
one of those changes. Building in place at first use, rather than at install time, keeps pip from fetching a
second torch into an isolated build environment. Set ``NORMRNN_NATIVE=0`` to skip the kernels.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import torch
from torch import Tensor

from .contract import (Fixed, ForwardResult, GRUGrads, GRUJointGrads, GRUJointLoop, GRULoop, InferResult,
                       LSTMGrads, LSTMLoop, NormGrads, NormResult, RNNGrads, RNNLoop, Saved, Stats, StreamLayer,
                       StreamResult)

CSRC = Path(__file__).parent / "csrc"
SOURCE = CSRC / "engine.cpp"  # includes the headers of csrc/ (all of them are hashed into the build key)
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]
# at::parallel_for is header code: without -fopenmp its "#pragma omp parallel" is dropped and every row loop runs
# on one thread. Linux only: there torch ships libgomp, which the extension then shares (one OpenMP runtime).
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
_lock = threading.Lock()
_module: Optional[ModuleType] = None
_failed: Optional[str] = None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("model name", "flags"))), platform.processor())
    except OSError:
        return platform.processor()


def build_dir(openmp: bool = True) -> Path:
    flags = FLAGS + (OPENMP if openmp else [])
    sources = b"".join(p.read_bytes() for p in sorted(CSRC.glob("*.[ch]*")))
    key = hashlib.sha256(
        sources + " ".join([torch.__version__, sys.version, _cpu_id(), *flags]).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("NORMRNN_BUILD", Path.home() / ".cache" / "normrnn" / "build"))
    return root / f"engine-{key}"


def load() -> Optional[ModuleType]:
    """The compiled kernels, building them the first time; ``None`` (after one warning) if that fails."""
    global _module
    if _module is not None or _failed is not None or os.environ.get("NORMRNN_NATIVE", "1") == "0":
        return _module
    with _lock:
        if _module is None and _failed is None:
            module = _build()
            if module is not None:
                _configure_gemm(module, Path(module.__file__).parent)
            _module = module
    return _module


def set_pool_limit(nbytes: int) -> int:
    """The most memory (bytes) the buffer pool (csrc/pool.h) keeps unused between calls (512 MiB by default; 0
    keeps none: every call takes fresh pages from the system). Returns the previous limit; 0 where the kernels
    cannot load. Blocks beyond a lower limit go at the next block freed, or with release_scratch()."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"set_pool_limit: nbytes must be an int >= 0, got {nbytes!r}")
    module = load()
    return 0 if module is None else module.set_pool_limit(nbytes)


def release_pool() -> None:
    """Free what the buffer pool of the loaded kernels holds unused (csrc/pool.h); nothing if they are not
    loaded (this builds nothing)."""
    if _module is not None:
        _module.release_pool()


# ------------------------------------------------------------------------------------------------ GEMM paths
# The kernels' products run on one of several GEMM paths (csrc/gemm.h): "plain" (at::mm_out, torch's sgemm),
# "packed" (MKL's packed GEMM, per-step products), "onednn" (oneDNN's matmul) and "avx512" (the engine's own
# kernel on a once-packed B, where the build targets AVX-512). Which is fastest depends on the
# CPU (MKL is tuned for Intel) and the shape, so by default ("auto") each shape class is measured at its first
# use and the choice kept in GEMM_CACHE, next to the build, for later processes; the file's first line names the
# CPU and torch it was measured with, and a file that does not match or does not parse is measured again.
# NORMRNN_GEMM=plain|packed|onednn|avx512|auto (or set_gemm_path) forces a path; NORMRNN_GEMM_CACHE names
# another file.
GEMM_CACHE = "gemm-choice.tsv"
GEMM_PATHS = ("plain", "packed", "onednn", "avx512")


def cpu_model() -> str:
    """The CPU's vendor and model name, as /proc/cpuinfo (or the platform) gives them."""
    vendor = model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "model name" and not model:
                    model = value.strip()
                if vendor and model:
                    break
    except OSError:
        pass
    return " ".join(p for p in (vendor, model) if p) or platform.processor() or platform.machine()


def gemm_header() -> str:
    """The first line of the GEMM choice file: what its measurements hold for."""
    return f"normrnn-gemm/1\t{cpu_model()}\ttorch {torch.__version__}\tcores {os.cpu_count()}"


def _configure_gemm(module: ModuleType, where: Path) -> None:
    module.gemm_configure(os.environ.get("NORMRNN_GEMM_CACHE") or str(where / GEMM_CACHE), gemm_header())
    forced = os.environ.get("NORMRNN_GEMM", "").strip().lower()
    if forced:
        try:
            module.set_gemm_path(forced)
        except Exception:  # (an unknown name: say so once, measure as usual)
            warnings.warn(f"normrnn: NORMRNN_GEMM={forced!r} is not one of auto, {', '.join(GEMM_PATHS)}; "
                          "measuring", RuntimeWarning, stacklevel=2)


def set_gemm_path(name: str) -> str:
    """Force the GEMM path of the native kernels ("plain", "packed", "onednn", "avx512"; "auto": measured per shape class,
    the default). Returns the previous setting. A path this torch lacks runs "plain"."""
    module = load()
    if module is None:
        return "auto"
    return module.set_gemm_path(name)


def gemm_info() -> dict:
    """What the native kernels' GEMM paths are here: available, forced, and the choice per shape class (those
    this process used or read from the cache file), with the timings of those measured in this process."""
    module = load()
    if module is None:
        return {"available": [], "forced": None, "chosen": {}, "timings_us": {}}
    return dict(module.gemm_state())


def failure() -> Optional[str]:
    """Why the kernels could not be built, if they could not."""
    return _failed


def _import_cpp_extension() -> ModuleType:
    # setuptools' distutils shim insists on loading before any distutils; when something in this process already
    # imported the standard library's distutils, the shim raises on import. Ask setuptools to use that one.
    loaded = sys.modules.get("distutils")
    if loaded is not None and "_distutils" not in (getattr(loaded, "__file__", None) or ""):
        os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    from torch.utils import cpp_extension

    return cpp_extension


def _build() -> Optional[ModuleType]:
    """Build (or load the cached build); with OpenMP first, then, should that fail (a compiler without OpenMP
    support), without it: slower row loops, but still the kernels."""
    global _failed
    error = ""
    for openmp in ([True, False] if OPENMP else [False]):
        extra = OPENMP if openmp else []
        try:
            # (inside the try: a missing source, say an install without the package data, or an unwritable cache
            # folder must fall back like a failed compile, not raise from the first forward call)
            where = build_dir(openmp)
            where.mkdir(parents=True, exist_ok=True)
            if not any(where.glob("*.so")):
                print(f"normrnn: building the fused C++ kernels once into {where} (about a minute)...",
                      file=sys.stderr, flush=True)
            # (copies: cpp_extension appends torch's libraries to extra_ldflags in place, which changed OPENMP and
            # with it build_dir()'s answer for the rest of the process)
            module = _import_cpp_extension().load(name="normrnn_engine", sources=[str(SOURCE)],
                                                  extra_cflags=FLAGS + extra, extra_ldflags=list(extra),
                                                  build_directory=str(where), verbose=False)
            return module
        except Exception as e:  # no compiler, no ninja, a failed build: the reference loop does the same work
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    _failed = error
    warnings.warn(f"normrnn: the fused C++ kernels could not be built ({_failed}); on CPU, backend='auto' "
                  "runs the reference loop instead (backend='fused' runs their slower PyTorch twin)",
                  RuntimeWarning, stacklevel=3)
    return None


# ------------------------------------------------------------------------------------------------ the adapter


def _stats(flat: Sequence[Tensor]) -> tuple:
    """[mean, var, count] per norm, flat, as the bindings return them -> one Stats per norm."""
    return tuple(Stats(*flat[i:i + 3]) for i in range(0, len(flat), 3))


class NativeEngine:
    """The compiled kernels behind :class:`~normrnn.fused.contract.Engine` (CPU tensors, float32/float64)."""

    name = "native"
    devices = ("cpu",)
    has_stream = True
    has_input_kernels = True
    reduces = True  # the loops call a loop's reducer (csrc/reduce.h)

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    # -- LSTM
    @staticmethod
    def _lstm_args(xa: Tensor, h0: Tensor, c0: Tensor, p: LSTMLoop) -> tuple:
        return (xa, h0, c0, p.w_hh, p.bias, p.gamma_h, p.gamma_c, p.beta_c, p.mask, *p.fixed_h, *p.fixed_c, p.kind_h,
                p.kind_c, p.joint, p.carry, p.eps, p.reduce)

    def lstm_forward(self, xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> ForwardResult:
        out, state, stats, saved = self.module.lstm_forward(*self._lstm_args(xa, h0, c0, loop))
        return ForwardResult(out, tuple(state), _stats(stats),
                             Saved(tuple(saved), (loop.kind_h, loop.kind_c, loop.joint, loop.carry, loop.reduce)))

    def lstm_infer(self, xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> InferResult:
        out, state, stats = self.module.lstm_infer(*self._lstm_args(xa, h0, c0, loop))
        return InferResult(out, tuple(state), _stats(stats))

    def lstm_backward(self, dout: Tensor, dh: Tensor, dc: Tensor, saved: Saved) -> LSTMGrads:
        return LSTMGrads(*self.module.lstm_backward(dout, dh, dc, list(saved.tensors), *saved.flags))

    # -- GRU, separate terms
    @staticmethod
    def _gru_args(xa: Tensor, h0: Tensor, p: GRULoop) -> tuple:
        return xa, h0, p.w_hh, p.bias_hh, p.gamma_h, p.mask, *p.fixed_h, p.kind_h, p.eps, p.reduce

    def gru_forward(self, xa: Tensor, h0: Tensor, loop: GRULoop) -> ForwardResult:
        out, state, stats, saved = self.module.gru_forward(*self._gru_args(xa, h0, loop))
        return ForwardResult(out, tuple(state), _stats(stats), Saved(tuple(saved), (loop.kind_h, loop.reduce)))

    def gru_infer(self, xa: Tensor, h0: Tensor, loop: GRULoop) -> InferResult:
        out, state, stats = self.module.gru_infer(*self._gru_args(xa, h0, loop))
        return InferResult(out, tuple(state), _stats(stats))

    def gru_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> GRUGrads:
        return GRUGrads(*self.module.gru_backward(dout, dh, list(saved.tensors), *saved.flags))

    # -- GRU, joint terms
    @staticmethod
    def _gru_joint_args(xa: Tensor, h0: Tensor, p: GRUJointLoop) -> tuple:
        return (xa, h0, p.w_hh, p.bias_ih, p.bias_hh, p.gamma_g, p.gamma_n, p.mask, *p.fixed_g, *p.fixed_n, p.kind_g,
                p.kind_n, p.eps, p.reduce)

    def gru_joint_forward(self, xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> ForwardResult:
        out, state, stats, saved = self.module.gru_joint_forward(*self._gru_joint_args(xa, h0, loop))
        return ForwardResult(out, tuple(state), _stats(stats),
                             Saved(tuple(saved), (loop.kind_g, loop.kind_n, loop.reduce)))

    def gru_joint_infer(self, xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> InferResult:
        out, state, stats = self.module.gru_joint_infer(*self._gru_joint_args(xa, h0, loop))
        return InferResult(out, tuple(state), _stats(stats))

    def gru_joint_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> GRUJointGrads:
        return GRUJointGrads(*self.module.gru_joint_backward(dout, dh, list(saved.tensors), *saved.flags))

    # -- Elman RNN
    @staticmethod
    def _rnn_args(xa: Tensor, h0: Tensor, p: RNNLoop) -> tuple:
        return xa, h0, p.w_hh, p.bias, p.gamma_h, p.mask, *p.fixed_h, p.kind_h, p.joint, p.relu, p.eps, p.reduce

    def rnn_forward(self, xa: Tensor, h0: Tensor, loop: RNNLoop) -> ForwardResult:
        out, state, stats, saved = self.module.rnn_forward(*self._rnn_args(xa, h0, loop))
        return ForwardResult(out, tuple(state), _stats(stats), Saved(tuple(saved), (loop.kind_h, loop.joint, loop.relu,
                                                                                   loop.reduce)))

    def rnn_infer(self, xa: Tensor, h0: Tensor, loop: RNNLoop) -> InferResult:
        out, state, stats = self.module.rnn_infer(*self._rnn_args(xa, h0, loop))
        return InferResult(out, tuple(state), _stats(stats))

    def rnn_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> RNNGrads:
        return RNNGrads(*self.module.rnn_backward(dout, dh, list(saved.tensors), *saved.flags))

    # -- streaming
    def prepare_stream(self, layers: Sequence[StreamLayer]) -> object:
        m = self.module
        return m.StreamStack([m.StreamLayer(l.w_ih, l.w_hh, l.b_ih, l.b_hh, m.StreamNorm(*l.norm_x),
                                            m.StreamNorm(*l.norm_h), m.StreamNorm(*l.norm_c), l.joint, l.carry,
                                            l.cell) for l in layers])

    def lstm_stream(self, x: Tensor, h0: Tensor, c0: Tensor, layers: object, step: int, eps: float) -> StreamResult:
        return StreamResult(*self.module.lstm_stream(x, h0, c0, layers, step, eps))

    def hidden_stream(self, x: Tensor, h0: Optional[Tensor], layers: object, step: int,
                      eps: float) -> Optional[StreamResult]:
        r = self.module.hidden_stream(x, h0, layers, step, eps)
        return None if r is None else StreamResult(r[0], r[1], _EMPTY)

    # -- large products (the input projection and its gradients) on the GEMM path measured for their shape
    def mm(self, a: Tensor, b: Tensor, out: Optional[Tensor] = None, scratch: bool = False) -> Tensor:
        """a (M, K) · b (K, N) into ``out`` (contiguous) or a new tensor; no autograd. ``scratch``: the product
        stays inside the engine (never a user's gradient or output), so a large one comes from the buffer pool
        the time loops use (csrc/pool.h), whose memory is reused from call to call."""
        if out is None:
            out = (self.module.pooled_empty([a.shape[0], b.shape[1]], a.dtype) if scratch and a.device.type == "cpu"
                   else a.new_empty(a.shape[0], b.shape[1]))
        self.module.mm_into(out, a, b, False)
        return out

    # -- the input term's norms over all steps
    def norm_rows_(self, x: Tensor, weight: Tensor, kind: int, eps: float, fixed: Fixed) -> None:
        self.module.norm_rows_(x, weight, kind, eps, fixed.mean.contiguous(), fixed.var.contiguous())

    def bn_steps_forward(self, x: Tensor, weight: Tensor, mask: Tensor, fixed: Fixed, eps: float,
                         training: bool) -> NormResult:
        y, mean, rstd, mean_out, var_out, count = self.module.bn_steps_forward(
            x, weight, mask, fixed.mean.contiguous(), fixed.var.contiguous(), eps, training)
        return NormResult(y, Stats(mean_out, var_out, count), Saved((x, weight, mask, mean, rstd, count), (training,)))

    def bn_steps_backward(self, dy: Tensor, saved: Saved) -> NormGrads:
        return NormGrads(*self.module.bn_steps_backward(dy, *saved.tensors, *saved.flags))

    def bn_update_running_(self, running_mean: Tensor, running_var: Tensor, stats: Stats, first: int,
                           momentum: float) -> int:
        return self.module.bn_update_running_(running_mean, running_var, stats.mean, stats.var, stats.count, first,
                                              momentum)

    def row_norm_forward(self, x: Tensor, weight: Tensor, kind: int, eps: float) -> NormResult:
        y, mean, rstd = self.module.row_norm_forward(x, weight, kind, eps)
        return NormResult(y, None, Saved((x, weight, mean, rstd), (kind,)))

    def row_norm_backward(self, dy: Tensor, saved: Saved) -> NormGrads:
        return NormGrads(*self.module.row_norm_backward(dy, *saved.tensors, *saved.flags))


_EMPTY = torch.empty(0)
_engine: Optional[NativeEngine] = None


def engine() -> Optional[NativeEngine]:
    """The native engine, building the kernels the first time; ``None`` where they cannot be built."""
    global _engine
    module = load()
    if module is None:
        return None
    if _engine is None or _engine.module is not module:
        _engine = NativeEngine(module)
    return _engine
