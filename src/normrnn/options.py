"""The normalization options shared by every layer and cell, checked once where a user passes them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from .norms import NORM_KINDS, RecurrentBatchNorm, make_norm

NORM_TERMS = ("separate", "joint")


@dataclass(frozen=True)
class NormOptions:
    """How a recurrent cell is normalized.

    norm: ``"layer"`` | ``"rms"`` | ``"batch"`` | ``"none"``.
    norm_terms: ``"separate"`` normalizes W_ih·x and W_hh·h each with its own norm (Ba et al.; Cooijmans et al.);
        ``"joint"`` normalizes their sum.
    norm_cell: LSTM only: normalize c_t before the output tanh (both papers do).
    carry_normalized_cell: LSTM only: carry the normalized c_t to the next step instead of the raw one.
    eps: added to the variance.
    gamma_init: initial gain; ``None`` means 1.0 for layer/rms and 0.1 for batch (Cooijmans et al.'s best).
    max_steps: batch norm only: how many per-step statistics are kept; later steps reuse the last.
    momentum: batch norm only: running-average momentum, as in ``nn.BatchNorm1d``.
    sync_stats: batch norm only: per-step statistics over every rank of the initialised process group
        (:mod:`normrnn.sync`); per-sample norms ignore it.
    """

    norm: str = "layer"
    norm_terms: str = "separate"
    norm_cell: bool = True
    carry_normalized_cell: bool = False
    eps: float = 1e-5
    gamma_init: Optional[float] = None
    max_steps: int = 256
    momentum: float = 0.1
    sync_stats: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.norm, str) or self.norm not in NORM_KINDS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {', '.join(map(repr, NORM_KINDS))}")
        if not isinstance(self.norm_terms, str) or self.norm_terms not in NORM_TERMS:
            raise ValueError(f"unknown norm_terms {self.norm_terms!r}; expected 'separate' or 'joint'")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"eps must be a positive number, got {self.eps!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if not (isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")

    @property
    def active(self) -> bool:
        return self.norm != "none"

    def build(self, num_features: int, *, bias: bool, device=None, dtype=None) -> nn.Module:
        """A norm of this kind over ``num_features`` features (RMSNorm never gets a bias)."""
        norm = make_norm(self.norm, num_features, eps=self.eps, gamma_init=self.gamma_init,
                         bias=bias and self.norm != "rms", max_steps=self.max_steps, momentum=self.momentum,
                         device=device, dtype=dtype)
        if self.sync_stats and isinstance(norm, RecurrentBatchNorm):
            norm.sync_stats = True
        return norm


def check_probability(name: str, p: float) -> float:
    """``p`` as a float in [0, 1), or a ValueError naming the option."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
    return float(p)
