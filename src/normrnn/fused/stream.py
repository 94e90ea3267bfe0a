"""Making streaming fast: ``LSTM.step`` for a whole unidirectional stack in one native call.

At batch 1 a step's arithmetic (two matrix-vector products and O(H) elementwise work per layer) takes tens of
microseconds, so what the layer API does around it per call decides the speed: input checks, parameter lookups
through ``nn.Module.__getattr__``, per-layer state tuples and stacking. So a layer keeps a *plan*: the tensors
and flags the kernel reads, gathered once. Per call only what can change cheaply is checked:

* the layer's training flag, its backend and the forced engine (they choose the path);
* a global generation counter, bumped whenever any module registers a parameter, buffer or submodule (which is
  how a user replaces one) and whenever the layer is moved or cast (``_apply`` replaces buffers);
* whether autograd needs a graph (then the general path runs, which records one).

Everything else is read through the tensors themselves, so in-place updates (optimizer steps,
``load_state_dict``, batch norm's running statistics) need no invalidation.

Not covered (the general path runs): GRU/RNN, bidirectional, residual, zoneout, training-mode dropout or
DropConnect, batch norm in training mode (batch statistics of one step), CUDA tensors, the PyTorch engine.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn.modules import module as _module

from .. import fused as _package
from ..cells import CellParams
from ..norms import RecurrentBatchNorm
from . import _gain, _kind, engine, native
from .torch_engine import BATCH

_generation = [0]


def _bump(*_args) -> None:
    _generation[0] += 1


for _register in ("register_module_parameter_registration_hook", "register_module_buffer_registration_hook",
                  "register_module_module_registration_hook"):
    if hasattr(_module, _register):  # torch >= 2.0
        getattr(_module, _register)(_bump)


def invalidate() -> None:
    """Forget every plan (called when a layer is moved or cast)."""
    _bump()


class Plan(NamedTuple):
    """What one streaming step of a layer reads; ``usable`` False when the general path must run."""

    usable: bool
    key: tuple
    tensors: list  # per layer: w_ih, w_hh, b_ih, b_hh, gamma x/h/cell, beta cell, (mean, var, tracked) x3
    flags: list  # per layer: kind_x, kind_h, kind_c, joint, carry
    params: tuple  # the trainable tensors, for the per-call requires_grad check
    dtype: Optional[torch.dtype] = None


def _key(layer) -> tuple:
    return (_generation[0], layer.training, layer._backend, _package._forced)


def layer_args(p: CellParams, like: Tensor) -> Optional[tuple[list[Tensor], list[int]]]:
    """What ``lstm_stream`` reads for one LSTM layer: w_ih, w_hh, b_ih, b_hh, the gains of the x-, h- and cell
    norm, the cell norm's bias, then (running mean, running var, steps_tracked) of each norm that is batch norm
    in eval (empty otherwise); and the flags kind_x, kind_h, kind_c, joint, carry. ``None`` where the kernel
    cannot run it: a norm computing batch statistics, or a tensor of another dtype/device or not contiguous."""
    joint = p.norm_gates is not None
    norms = (p.norm_ih, p.norm_gates if joint else p.norm_hh, p.norm_cell)
    kinds = [_kind(n) for n in norms]
    if BATCH in kinds:
        return None
    empty = like.new_empty(0)
    gains = [empty if g is None else g for g in map(_gain, norms)]
    beta = getattr(p.norm_cell, "bias", None)
    stats: list[Tensor] = []
    for n in norms:
        stats += ([n.running_mean, n.running_var, n.steps_tracked] if isinstance(n, RecurrentBatchNorm)
                  else [empty, empty, empty])
    tensors = [p.weight_ih, p.weight_hh, empty if p.bias_ih is None else p.bias_ih,
               empty if p.bias_hh is None else p.bias_hh, *gains, empty if beta is None else beta, *stats]
    if any(t.dtype != like.dtype and t.dtype != torch.long or t.device != like.device or not t.is_contiguous()
           for t in tensors):
        return None
    return tensors, [*kinds, int(joint), int(p.carry_normalized_cell)]


def _build(layer, key: tuple) -> Plan:
    unusable = Plan(False, key, [], [], ())
    if (layer.mode != "LSTM" or layer.bidirectional or layer.zoneout or layer.residual or not layer.uses_fused()
            or (layer.training and (layer.dropconnect or (layer.dropout and layer.num_layers > 1)))):
        return unusable
    w = layer.weight_hh_l0
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.float64) or engine(w.device) is not native.load():
        return unusable
    tensors: list[Tensor] = []
    flags: list[int] = []
    for k in range(layer.num_layers):
        args = layer_args(layer._cell(k, 0), w)
        if args is None:
            return unusable
        tensors += args[0]
        flags += args[1]
    params = tuple(t for t in tensors if t.is_floating_point() and isinstance(t, torch.nn.Parameter))
    return Plan(True, key, tensors, flags, params, w.dtype)


def plan_for(layer) -> Plan:
    """The layer's cached plan, rebuilt when its key changed."""
    key = _key(layer)
    plan = layer.__dict__.get("_stream_plan")
    if plan is None or plan.key != key:
        plan = _build(layer, key)
        layer.__dict__["_stream_plan"] = plan
    return plan


def stream_step(layer, x: Tensor, hx, step: int) -> Optional[tuple[Tensor, tuple[Tensor, Tensor]]]:
    """One step of ``layer`` (an LSTM) in one native call, or ``None`` when the general path must run (it also
    gives the errors for bad input). x: (N, H_in); hx: ``(h, c)`` each (num_layers, N, H) or None.
    Returns ``(output (N, H), (h_n, c_n))``."""
    plan = plan_for(layer)
    if not plan.usable or type(x) is not Tensor or x.dim() != 2 or x.shape[1] != layer.input_size \
            or x.dtype != plan.dtype or x.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in plan.params)):
        return None
    if hx is None:
        h0 = c0 = x.new_empty(0)
    else:
        if type(hx) is not tuple or len(hx) != 2:
            return None
        h0, c0 = hx
        shape = (layer.num_layers, x.shape[0], layer.hidden_size)
        if h0.shape != shape or c0.shape != shape or h0.dtype != x.dtype or c0.dtype != x.dtype \
                or h0.device != x.device or c0.device != x.device or (torch.is_grad_enabled() and (
                    h0.requires_grad or c0.requires_grad)):
            return None
        h0, c0 = h0.contiguous(), c0.contiguous()
    out, h_n, c_n = native.load().lstm_stream(x.contiguous(), h0, c0, plan.tensors, plan.flags, step,
                                              layer.options.eps)
    return out, (h_n, c_n)
