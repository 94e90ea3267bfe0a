"""The math of one time step for the LSTM, GRU and Elman RNN cells, and the cell modules built on it.

Gate layouts are PyTorch's (LSTM: i, f, g, o; GRU: r, z, n), so ``norm="none"`` is exactly ``nn.LSTMCell`` /
``nn.GRUCell`` / ``nn.RNNCell``. Where the norms go:

* separate terms: ``norm_ih(W_ih x) + norm_hh(W_hh h) + b_ih + b_hh`` (Ba et al. eq. 20; Cooijmans et al. eq. 6).
* joint terms: ``norm_gates(W_ih x + W_hh h) + b_ih + b_hh``. A GRU's candidate sees ``h`` only through the
  reset gate, so its joint form normalizes the r/z sum (``norm_gates``, 2H) and the candidate's pre-activation
  ``W_in x + r * (W_hn h + b_hn)`` (``norm_new``, H) with two norms.
* LSTM cell: ``h = o * tanh(norm_cell(c))``; the raw ``c`` is carried on unless ``carry_normalized_cell``.
  With a projection (``proj_size`` P, Sak et al. 2014, as in ``nn.LSTM``) ``h = W_hr (o * tanh(norm_cell(c)))``
  has P units, and ``W_hh`` reads those P.

The input term ``W_ih x`` (and its norm, when the terms are separate) does not depend on the state, so callers
compute it for a whole sequence at once (:func:`input_term`) and hand one step of it to the step functions.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import NormOptions

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}

State = tuple[Tensor, ...]  # (h,) or, for an LSTM, (h, c); each (N, H)


class CellParams(NamedTuple):
    """Everything one step of one cell (one layer and direction) reads. Absent norms are ``None``."""

    mode: str
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Optional[Tensor]
    bias_hh: Optional[Tensor]
    norm_ih: Optional[nn.Module] = None
    norm_hh: Optional[nn.Module] = None
    norm_gates: Optional[nn.Module] = None
    norm_new: Optional[nn.Module] = None
    norm_cell: Optional[nn.Module] = None
    carry_normalized_cell: bool = False
    weight_hr: Optional[Tensor] = None  # LSTM with a projection: h = W_hr (o * tanh(c)), (P, H)


def norm_layout(mode: str, hidden_size: int, opts: NormOptions) -> dict[str, tuple[int, bool]]:
    """The norms a cell needs: ``{role: (num_features, has_bias)}``; empty for ``norm="none"``.

    The term norms carry no bias of their own: ``bias_ih``/``bias_hh`` already shift the pre-activations.
    """
    if not opts.active:
        return {}
    H, G = hidden_size, GATES[mode] * hidden_size
    if opts.norm_terms == "separate":
        layout = {"ih": (G, False), "hh": (G, False)}
    elif mode == "GRU":
        layout = {"gates": (2 * H, False), "new": (H, False)}
    else:
        layout = {"gates": (G, False)}
    if mode == "LSTM" and opts.norm_cell:
        layout["cell"] = (H, True)
    return layout


def add_cell_parameters(module: nn.Module, suffix: str, mode: str, input_size: int, hidden_size: int,
                        bias: bool, opts: NormOptions, device=None, dtype=None, proj_size: int = 0) -> None:
    """Register ``weight_ih{suffix}``, ``weight_hh{suffix}``, ``bias_*{suffix}``, with ``proj_size``
    ``weight_hr{suffix}``, and ``norm_*{suffix}`` on ``module``.

    Names, shapes and the uniform(-1/sqrt(H), 1/sqrt(H)) initialisation are ``nn.LSTM``'s.
    """
    G = GATES[mode] * hidden_size
    k = 1.0 / math.sqrt(hidden_size)
    shapes = {"weight_ih": (G, input_size), "weight_hh": (G, proj_size or hidden_size)}
    if bias:
        shapes.update(bias_ih=(G,), bias_hh=(G,))
    if proj_size:
        shapes["weight_hr"] = (proj_size, hidden_size)
    for name, shape in shapes.items():
        w = torch.empty(shape, device=device, dtype=dtype)
        nn.init.uniform_(w, -k, k)
        module.register_parameter(name + suffix, nn.Parameter(w))
    for role, (features, has_bias) in norm_layout(mode, hidden_size, opts).items():
        module.add_module(f"norm_{role}{suffix}", opts.build(features, bias=has_bias, device=device, dtype=dtype))


def cell_params(module: nn.Module, suffix: str, mode: str, opts: NormOptions,
                weight_hh: Optional[Tensor] = None) -> CellParams:
    """Collect the parameters registered by :func:`add_cell_parameters` (``weight_hh`` overrides, for DropConnect)."""
    get = lambda name: getattr(module, name + suffix, None)  # noqa: E731
    return CellParams(
        mode, get("weight_ih"), get("weight_hh") if weight_hh is None else weight_hh, get("bias_ih"), get("bias_hh"),
        get("norm_ih"), get("norm_hh"), get("norm_gates"), get("norm_new"), get("norm_cell"),
        opts.carry_normalized_cell, get("weight_hr"),
    )


def input_term(p: CellParams, x: Tensor, step: int = 0, mask: Optional[Tensor] = None) -> Tensor:
    """``W_ih x``, normalized when the terms are separate. x: (T, N, I) or (N, I) -> (T, N, G·H) or (N, G·H)."""
    xp = F.linear(x, p.weight_ih)
    return p.norm_ih(xp, step, mask) if p.norm_ih is not None else xp


def _recurrent_term(p: CellParams, h: Tensor, step: int, mask: Optional[Tensor]) -> Tensor:
    hp = F.linear(h, p.weight_hh)
    return p.norm_hh(hp, step, mask) if p.norm_hh is not None else hp


def _add(a: Tensor, *bs: Optional[Tensor]) -> Tensor:
    for b in bs:
        if b is not None:
            a = a + b
    return a


def lstm_step(xp: Tensor, state: State, p: CellParams, step: int, mask: Optional[Tensor]) -> State:
    """One LSTM step. xp: (N, 4H) from :func:`input_term`; state (h, c). Returns (h_new, c_carried)."""
    h, c = state
    if p.norm_gates is not None:
        gates = p.norm_gates(xp + F.linear(h, p.weight_hh), step, mask)
    else:
        gates = xp + _recurrent_term(p, h, step, mask)
    i, f, g, o = _add(gates, p.bias_ih, p.bias_hh).chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_hat = p.norm_cell(c_new, step, mask) if p.norm_cell is not None else c_new
    h_new = torch.sigmoid(o) * torch.tanh(c_hat)
    if p.weight_hr is not None:
        h_new = F.linear(h_new, p.weight_hr)
    return h_new, (c_hat if p.carry_normalized_cell else c_new)


def gru_step(xp: Tensor, state: State, p: CellParams, step: int, mask: Optional[Tensor]) -> State:
    """One GRU step. xp: (N, 3H) from :func:`input_term`; state (h,). Returns (h_new,)."""
    (h,) = state
    H = h.shape[-1]
    b_ih = (None, None) if p.bias_ih is None else p.bias_ih.split([2 * H, H])
    b_hh = (None, None) if p.bias_hh is None else p.bias_hh.split([2 * H, H])
    x_rz, x_n = xp.split([2 * H, H], -1)
    if p.norm_gates is not None:
        h_rz, h_n = F.linear(h, p.weight_hh).split([2 * H, H], -1)
        rz = _add(p.norm_gates(x_rz + h_rz, step, mask), b_ih[0], b_hh[0])
        r, z = torch.sigmoid(rz).chunk(2, 1)
        n = torch.tanh(_add(p.norm_new(x_n + r * _add(h_n, b_hh[1]), step, mask), b_ih[1]))
    else:
        h_rz, h_n = _recurrent_term(p, h, step, mask).split([2 * H, H], -1)
        r, z = torch.sigmoid(_add(x_rz + h_rz, b_ih[0], b_hh[0])).chunk(2, 1)
        n = torch.tanh(_add(x_n, b_ih[1]) + r * _add(h_n, b_hh[1]))
    h_new = n + z * (h - n)
    return (h_new,)


def rnn_step(xp: Tensor, state: State, p: CellParams, step: int, mask: Optional[Tensor]) -> State:
    """One Elman RNN step (tanh or relu). xp: (N, H); state (h,). Returns (h_new,)."""
    (h,) = state
    if p.norm_gates is not None:
        pre = p.norm_gates(xp + F.linear(h, p.weight_hh), step, mask)
    else:
        pre = xp + _recurrent_term(p, h, step, mask)
    pre = _add(pre, p.bias_ih, p.bias_hh)
    h_new = torch.tanh(pre) if p.mode == "RNN_TANH" else torch.relu(pre)
    return (h_new,)


STEP: dict[str, Callable[..., State]] = {
    "LSTM": lstm_step, "GRU": gru_step, "RNN_TANH": rnn_step, "RNN_RELU": rnn_step,
}


# --------------------------------------------------------------------------------------------- cell modules


class _NormCellBase(nn.Module):
    """One step as a module, with ``nn.LSTMCell``'s parameter names plus ``norm_*`` submodules."""

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 norm: str = "layer", norm_terms: str = "separate", eps: float = 1e-5,
                 gamma_init: Optional[float] = None, max_steps: int = 256, momentum: float = 0.1,
                 sync_stats: bool = False, _lstm_options: Optional[dict] = None) -> None:
        super().__init__()
        from .checks import check_size

        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.options = NormOptions(norm, norm_terms, eps=eps, gamma_init=gamma_init, max_steps=max_steps,
                                   momentum=momentum, sync_stats=sync_stats, **(_lstm_options or {}))
        add_cell_parameters(self, "", self.mode, input_size, hidden_size, bias, self.options, device, dtype)

    @property
    def norm(self) -> str:
        return self.options.norm

    def forward(self, input: Tensor, hx=None, *, step: int = 0):
        """input: (N, H_in) or (H_in); hx as for the ``nn`` cell (zeros when ``None``).

        ``step`` is the time index, which selects batch norm's per-step statistics; other norms ignore it.
        """
        from .checks import check_cell_call

        x, state, unbatched = check_cell_call(self, input, hx, step)
        p = self._params()
        new_state = STEP[self.mode](input_term(p, x, step), state, p, step, None)
        out = new_state if self.mode == "LSTM" else new_state[0]
        if unbatched:
            out = tuple(s.squeeze(0) for s in out) if self.mode == "LSTM" else out.squeeze(0)
        return out

    def _params(self) -> CellParams:
        return cell_params(self, "", self.mode, self.options)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, norm={self.norm!r}"


class LSTMCell(_NormCellBase):
    """A normalized ``nn.LSTMCell``: ``forward(input, (h, c), *, step=0) -> (h', c')``, each (N, H).

    LSTM-only options: ``norm_cell=True`` (normalize c before the output tanh), ``carry_normalized_cell=False``.
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 norm_cell: bool = True, carry_normalized_cell: bool = False, **options) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype, **options, _lstm_options=dict(
            norm_cell=bool(norm_cell), carry_normalized_cell=bool(carry_normalized_cell)))


class GRUCell(_NormCellBase):
    """A normalized ``nn.GRUCell``: ``forward(input, h, *, step=0) -> h'``, (N, H)."""

    mode = "GRU"


class RNNCell(_NormCellBase):
    """A normalized ``nn.RNNCell`` with ``nonlinearity="tanh" | "relu"``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, **options) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, bias, device, dtype, **options)
