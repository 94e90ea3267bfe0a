"""The readable reference: one direction of one layer as a plain loop over time steps.

This is the definition the fast kernels are tested against. It is written for clarity, not speed: the input
term is computed for all steps at once (it does not depend on the state), then every step calls the cell math
of :mod:`normrnn.cells` and masks the state of sequences that have already ended.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .cells import STEP, CellParams, State, input_term
from .checks import reverse_padded

__all__ = ["run_direction", "reverse_padded", "zoneout"]


def zoneout(new: State, old: State, p: float, training: bool) -> State:
    """Zoneout (Krueger et al., 2017): each unit keeps its previous value with probability ``p`` in training;
    at inference the expectation ``p·old + (1-p)·new`` is used."""
    if training:
        return tuple(torch.where(torch.rand_like(n) < p, o, n) for n, o in zip(new, old))
    return tuple(torch.lerp(n, o, p) for n, o in zip(new, old))


def run_direction(p: CellParams, x: Tensor, state: State, mask: Optional[Tensor], lengths: Optional[Tensor],
                  reverse: bool = False, start: int = 0, zoneout_p: float = 0.0,
                  training: bool = False) -> tuple[Tensor, State]:
    """Run one cell over a sequence.

    x: (T, N, H_in); state: tuple of (N, H); mask: (T, N) bool or None; lengths: (N,) or None.
    ``start`` is the time index of x[0] (streaming). Returns the outputs (T, N, H), zero past each sequence's
    end, and the final state, taken at each sequence's last valid step. The reverse direction reads every
    sequence from its true last step back to its first.
    """
    if reverse:
        x = reverse_padded(x, lengths)
    if mask is not None:  # padding is not data: whatever it holds (NaN, inf) reaches no output, state or gradient
        x = torch.where(mask.unsqueeze(-1), x, 0)
    xp = input_term(p, x, start, mask)
    step_fn = STEP[p.mode]
    outputs = []
    for t, xp_t in enumerate(xp.unbind(0)):  # unbind once: indexing xp[t] costs a full-size zero fill in backward
        m = None if mask is None else mask[t]
        new = step_fn(xp_t, state, p, start + t, m)
        if zoneout_p:
            new = zoneout(new, state, zoneout_p, training)
        if m is not None:
            keep = m.unsqueeze(1)
            outputs.append(torch.where(keep, new[0], 0))
            new = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
        else:
            outputs.append(new[0])
        state = new
    out = torch.stack(outputs)
    return (reverse_padded(out, lengths) if reverse else out), state
