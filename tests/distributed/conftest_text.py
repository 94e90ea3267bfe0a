"""A tiny learnable corpus for the char-LM runs of the distributed tests."""
from __future__ import annotations

import random
from pathlib import Path


def write_text(path: Path, n_chars: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["the king", "a fool", "my lord", "speaks", "doth love", "the crown", "his sword", "thy heart"]
    out = []
    while sum(map(len, out)) < n_chars:
        out.append(" ".join(rng.choice(words) for _ in range(4)) + ".\n")
    path.write_text("".join(out)[:n_chars])
    return path
