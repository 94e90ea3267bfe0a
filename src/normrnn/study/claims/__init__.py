"""The twelve claims, one module each. ``load_claims(["C1", "C5"])`` imports the ones asked for."""
from __future__ import annotations

import importlib

from ..core import Claim

MODULES = {
    "C1": "c01_batch_size", "C2": "c02_time_steps", "C3": "c03_padding", "C4": "c04_train_test_gap",
    "C5": "c05_convergence", "C6": "c06_language_modelling", "C7": "c07_distributed", "C8": "c08_online",
    "C9": "c09_depth", "C10": "c10_rms_residual", "C11": "c11_hybrid", "C12": "c12_placement",
}


def load_claims(only: list[str] | None = None) -> list[Claim]:
    """The claims named in ``only`` (all when None), in study order; ValueError for an unknown id."""
    ids = list(MODULES) if not only else [c.strip().upper() for c in only]
    unknown = [c for c in ids if c not in MODULES]
    if unknown:
        raise ValueError(f"unknown claim(s) {', '.join(unknown)}; expected some of {', '.join(MODULES)}")
    return [importlib.import_module(f"{__name__}.{MODULES[c]}").CLAIM for c in ids]
