"""Synthetic long-memory tasks, generated from a seed (always available, no fetch).

* :func:`adding_problem` (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016):
  ``x`` ``float32 [N, T, 2]``: channel 0 is uniform(0, 1) noise, channel 1 marks
  exactly two steps, one uniformly in the first half ``[0, L//2)`` and one in the
  second half ``[L//2, L)`` of the example's length ``L``; ``y`` ``float32 [N]``
  is the sum of the two marked values.
* :func:`copy_memory` (Arjovsky et al. 2016): ``copy_len`` symbols from
  ``1..n_symbols``, ``delay - 1`` blanks (0), a delimiter (``n_symbols + 1``) and
  ``copy_len`` blanks; the target is ``delay + copy_len`` blanks followed by the
  symbols, so ``x``, ``y`` are ``int64 [N, delay + 2*copy_len]``.

With ``min_len`` / ``min_delay`` lengths vary uniformly per example; padding is
0 in ``x`` and 0 (adding) / ``IGNORE_INDEX`` = -100 (copy targets) beyond ``lengths``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SyntheticTask", "adding_problem", "copy_memory", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class SyntheticTask:
    """``x [N, T_max, ...]``, ``y`` (``[N]`` or ``[N, T_max]``), ``lengths int64 [N]``."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    lengths_: torch.Tensor
    n_classes: int | None = None  # for copy-memory: input alphabet size (blank, symbols, delimiter)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.lengths_[i])
        y = self.y[i, :n] if self.y.dim() > 1 else self.y[i]
        return self.x[i, :n], y

    def lengths(self) -> torch.Tensor:
        return self.lengths_

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [B, T_b, ...], lengths [B], y)`` trimmed to the batch's longest example."""
        lengths = self.lengths_[idx]
        t = int(lengths.max())
        y = self.y[idx, :t] if self.y.dim() > 1 else self.y[idx]
        return self.x[idx, :t], lengths, y


def _lengths(n: int, max_len: int, min_len: int | None, gen: torch.Generator) -> torch.Tensor:
    if min_len is None:
        return torch.full((n,), max_len, dtype=torch.int64)
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    return torch.randint(min_len, max_len + 1, (n,), generator=gen, dtype=torch.int64)


def adding_problem(n: int, seq_len: int = 100, min_len: int | None = None, seed: int = 0) -> SyntheticTask:
    """``n`` adding-problem examples of length ``seq_len`` (or uniform in ``[min_len, seq_len]``)."""
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    if min_len is not None and min_len < 2:
        raise ValueError("min_len must be >= 2 (two marked positions)")
    gen = torch.Generator().manual_seed(seed)
    lengths = _lengths(n, seq_len, min_len, gen)
    steps = torch.arange(seq_len)
    valid = steps[None, :] < lengths[:, None]
    values = torch.rand(n, seq_len, generator=gen) * valid
    half = lengths // 2
    first = (torch.rand(n, generator=gen) * half).long().clamp(max=half - 1)
    second = half + (torch.rand(n, generator=gen) * (lengths - half)).long().clamp(max=lengths - half - 1)
    marks = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    x = torch.stack([values, marks], dim=-1)
    return SyntheticTask("adding", x, y, lengths)


def copy_memory(
    n: int,
    delay: int = 100,
    copy_len: int = 10,
    n_symbols: int = 8,
    min_delay: int | None = None,
    seed: int = 0,
) -> SyntheticTask:
    """``n`` copy-memory examples; ``delay`` (or uniform in ``[min_delay, delay]``) blanks to bridge."""
    if delay < 1 or copy_len < 1 or n_symbols < 1:
        raise ValueError("delay, copy_len and n_symbols must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    delays = _lengths(n, delay, min_delay, gen)
    lengths = delays + 2 * copy_len
    t_max = delay + 2 * copy_len
    symbols = torch.randint(1, n_symbols + 1, (n, copy_len), generator=gen)
    x = torch.zeros(n, t_max, dtype=torch.int64)
    y = torch.full((n, t_max), IGNORE_INDEX, dtype=torch.int64)
    steps = torch.arange(t_max)
    y[steps[None, :] < lengths[:, None]] = 0
    x[:, :copy_len] = symbols
    rows = torch.arange(n)
    x[rows, copy_len + delays - 1] = n_symbols + 1  # delimiter
    out_pos = (delays + copy_len)[:, None] + torch.arange(copy_len)[None, :]
    y[rows[:, None], out_pos] = symbols
    return SyntheticTask("copy-memory", x, y, lengths, n_classes=n_symbols + 2)
