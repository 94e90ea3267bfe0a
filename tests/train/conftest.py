"""Shared fixtures for the training tests: one CPU thread (small models run several times faster without
thread hand-offs, and runs compared bit for bit must use the same thread count) and a small text corpus."""
from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one CPU thread (``one_thread`` in tests/conftest.py)."""


def make_text(n_chars: int, seed: int = 0) -> str:
    """Pseudo-English from a tiny grammar: learnable structure (words, spaces, punctuation) in a few
    thousand steps, unlike random characters."""
    rng = random.Random(seed)
    subjects = ["the king", "a fool", "my lord", "the queen", "good sir", "this man"]
    verbs = ["speaks", "doth love", "hath slain", "shall see", "will keep", "must go"]
    objects = ["the crown", "his sword", "thy heart", "the night", "her ring", "our land"]
    out, size = [], 0
    while size < n_chars:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(['.', '!', ',', ';'])}\n"
        out.append(s.capitalize())
        size += len(s)
    return "".join(out)[:n_chars]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(make_text(60_000))
    return path
