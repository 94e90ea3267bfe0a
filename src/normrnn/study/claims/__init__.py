"""The twelve claims, one module each. ``load_claims(["C1", "C5"])`` imports the ones asked for."""
from __future__ import annotations

import importlib

from ..core import Claim

MODULES = {
    "C1": "c01_batch_size", "C2": "c02_time_steps", "C3": "c03_padding", "C4": "c04_train_test_gap",
    "C5": "c05_convergence", "C6": "c06_language_modelling", "C7": "c07_distributed", "C8": "c08_online",
    "C9": "c09_depth", "C10": "c10_rms_residual", "C11": "c11_hybrid", "C12": "c12_placement",
}


def _module_claims(module_id: str) -> list[Claim]:
    """A module's claims: ``CLAIMS`` where a module holds several (C10: C10a, C10b, C10c), else ``[CLAIM]``."""
    mod = importlib.import_module(f"{__name__}.{MODULES[module_id]}")
    return list(getattr(mod, "CLAIMS", [mod.CLAIM]))


def claim_ids() -> list[str]:
    """Every claim id in study order (C10 is three claims: C10a, C10b, C10c)."""
    return [c.id for m in MODULES for c in _module_claims(m)]


def load_claims(only: list[str] | None = None) -> list[Claim]:
    """The claims named in ``only`` (all when None), in study order; ValueError for an unknown id. ``C10`` names
    its three claims; ``C10a`` one of them."""
    if not only:
        return [c for m in MODULES for c in _module_claims(m)]
    out = []
    for raw in only:
        cid = raw.strip().upper()
        if cid in MODULES:
            out += _module_claims(cid)
            continue
        parent = cid.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        match = [c for c in _module_claims(parent) if c.id.upper() == cid] if parent in MODULES and parent != cid \
            else []
        if not match:
            raise ValueError(f"unknown claim(s) {raw.strip()}; expected some of {', '.join(MODULES)} (C10a, C10b, "
                             f"C10c for C10's parts)")
        out += match
    return out
