"""Builds the C++ kernels (``csrc/engine.cpp``) on first use and loads them; ``None`` when they cannot be built.

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
from typing import Optional

import torch

SOURCE = Path(__file__).parent / "csrc" / "engine.cpp"
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
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([torch.__version__, sys.version, _cpu_id(), *flags]).encode()
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
            _module = _build()
    return _module


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
            return _import_cpp_extension().load(name="normrnn_engine", sources=[str(SOURCE)],
                                                extra_cflags=FLAGS + extra, extra_ldflags=list(extra),
                                                build_directory=str(where), verbose=False)
        except Exception as e:  # no compiler, no ninja, a failed build: the reference loop does the same work
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    _failed = error
    warnings.warn(f"normrnn: the fused C++ kernels could not be built ({_failed}); on CPU, backend='auto' "
                  "runs the reference loop instead (backend='fused' runs their slower PyTorch twin)",
                  RuntimeWarning, stacklevel=3)
    return None
