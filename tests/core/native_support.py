"""Whether the native C++ kernels must be tested here, and what a test that needs them does when they are absent.

Where a C++ toolchain is present (CI, a developer machine) and ``NORMRNN_NATIVE`` is not ``0``, the kernels must
build: a test that needs them *fails* with the build error instead of vanishing from the run. Only where they
cannot be built at all (no compiler or no ninja) or are switched off on purpose is such a test skipped, with the
reason on the skip line (``pytest -rs``).
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import pytest

from normrnn import fused


def toolchain_missing() -> Optional[str]:
    """Why the kernels cannot be built on this machine, or None where they can (and so must)."""
    if os.environ.get("NORMRNN_NATIVE", "1") == "0":
        return "NORMRNN_NATIVE=0 switches the native kernels off"
    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension calls
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not on PATH): the native kernels cannot be built here"
    if shutil.which("ninja") is None:
        return "no ninja on PATH: torch.utils.cpp_extension cannot build the native kernels here"
    return None


def require_native():
    """The loaded kernels; skips (with the reason) where they cannot be built, fails where they should have."""
    missing = toolchain_missing()
    if missing is not None:
        pytest.skip(missing)
    module = fused.native.load()
    if module is None:
        pytest.fail(f"the native kernels failed to build although a C++ toolchain is present: "
                    f"{fused.native.failure()} (build folder {fused.native.build_dir()})", pytrace=False)
    return module


# Every engine, always: "native" is never dropped from a parametrisation; tests/core/conftest.py turns it into a
# skip or a failure where the kernels are missing.
ENGINES = ["torch", pytest.param("native", marks=pytest.mark.native)]
