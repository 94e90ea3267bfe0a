"""Shared by the distributed tests: run a worker of ``workers.py`` on 2 local gloo ranks, bounded in time."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # the reference computations import workers.py in this process too

if not torch.distributed.is_available():  # pragma: no cover - every CPU build has gloo
    pytest.skip("torch.distributed is not available", allow_module_level=True)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one CPU thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture
def run2():
    """``run2("fn", **kwargs)``: ``workers.fn`` on ranks 0 and 1; returns their results."""
    from normrnn.multiproc import run_local

    def run(name: str, timeout: float = 60.0, **kwargs: Any) -> list[Any]:
        return run_local(f"workers:{name}", 2, kwargs, path=str(HERE), timeout=timeout)

    return run
