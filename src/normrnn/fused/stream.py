"""Making streaming fast: ``LSTM.step``, ``GRU.step`` and ``RNN.step`` for a whole unidirectional stack in one
call of an engine's kernel.

At batch 1 a step's arithmetic (two matrix-vector products and O(H) elementwise work per layer) takes tens of
microseconds, so what the layer API does around it per call decides the speed: input checks, parameter lookups
through ``nn.Module.__getattr__``, per-layer state tuples and stacking. So a layer keeps a *plan*
(:func:`build_plan`, from the list of its cells' parameters): the tensors and flags the kernel reads, gathered
once. The layer rebuilds it when its key changes (:func:`generation` is part of it):

* a global generation counter, bumped whenever any module registers a parameter, buffer or submodule (which is
  how a user replaces one) and whenever a layer is moved or cast (``_apply`` replaces buffers: :func:`invalidate`);
* the layer's training flag, its backend and the forced engine (they choose the path, :mod:`.select`).

Per call only whether autograd needs a graph (then the general path runs, which records one) and the input's
shape, dtype and device are checked (:func:`stream_step`; for a GRU or Elman RNN stack the kernel checks them
itself, which costs a fraction of the same checks in Python). Everything else is read through the tensors
themselves, so in-place updates (optimizer steps, ``load_state_dict``, batch norm's running statistics) need no
invalidation.

Also here: one LSTM step of one layer in one call (:func:`one_step`), for a fused call over a single step.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.nn.modules import module as _module

from ..cells import CellParams, State
from ..norms import RecurrentBatchNorm
from .contract import BATCH, CELLS, Engine, StreamLayer, StreamNorm
from .loop_args import bias_of, gain_of, kind_of, or_empty

_generation = [0]


def _bump(*_args) -> None:
    _generation[0] += 1


for _register in ("register_module_parameter_registration_hook", "register_module_buffer_registration_hook",
                  "register_module_module_registration_hook"):
    if hasattr(_module, _register):  # torch >= 2.0
        getattr(_module, _register)(_bump)


def generation() -> int:
    """Bumped whenever a module registers a parameter, buffer or submodule, and by :func:`invalidate`."""
    return _generation[0]


def invalidate() -> None:
    """Forget every plan (called when a layer is moved or cast)."""
    _bump()


class Plan(NamedTuple):
    """What one streaming step of a stack reads."""

    engine: Engine
    lstm: bool  # else a GRU or Elman RNN stack (state h only)
    layers: object  # the engine's prepare_stream of the StreamLayers
    params: tuple  # the trainable tensors, for the per-call requires_grad check
    dtype: torch.dtype
    device_type: str
    input_size: int
    hidden_size: int
    num_layers: int
    eps: float


def stream_layer(p: CellParams, like: Tensor) -> Optional[StreamLayer]:
    """What the streaming kernel reads for one cell (LSTM, GRU, Elman RNN); ``None`` where it cannot run it: a
    norm computing batch statistics, or a tensor of another dtype/device or not contiguous."""
    joint = p.norm_gates is not None
    norms = []
    for n in (p.norm_ih, p.norm_gates if joint else p.norm_hh, p.norm_cell if p.mode == "LSTM" else p.norm_new):
        kind = kind_of(n)
        if kind == BATCH:
            return None
        running = ((n.running_mean, n.running_var, n.steps_tracked) if isinstance(n, RecurrentBatchNorm)
                   else (like.new_empty(0),) * 3)
        norms.append(StreamNorm(kind, or_empty(gain_of(n), like), or_empty(bias_of(n), like), *running))
    layer = StreamLayer(p.weight_ih, p.weight_hh, or_empty(p.bias_ih, like), or_empty(p.bias_hh, like), *norms,
                        joint, bool(p.carry_normalized_cell), CELLS[p.mode])
    tensors = (*layer[:4], *(t for n in norms for t in n[1:]))
    if any(t.dtype != like.dtype and t.dtype != torch.long or t.device != like.device or not t.is_contiguous()
           for t in tensors):
        return None
    return layer


def build_plan(cells: Sequence[CellParams], eng: Engine, eps: float) -> Optional[Plan]:
    """The plan of a stack of cells (one per layer) on ``eng``, or ``None`` where a cell cannot stream."""
    w = cells[0].weight_hh
    layers = []
    for p in cells:
        layer = stream_layer(p, w)
        if layer is None:
            return None
        layers.append(layer)
    tensors = [t for layer in layers for t in (*layer[:4], *(t for n in layer[4:7] for t in n[1:]))]
    params = tuple(t for t in tensors if t.is_floating_point() and isinstance(t, torch.nn.Parameter))
    return Plan(eng, cells[0].mode == "LSTM", eng.prepare_stream(layers), params, w.dtype, w.device.type,
                cells[0].weight_ih.shape[1], w.shape[1], len(cells), eps)


def stream_step(plan: Plan, x: Tensor, hx, step: int) -> Optional[tuple[Tensor, object]]:
    """One step of the stack in one call, or ``None`` when the general path must run (it also gives the errors
    for bad input). x: (N, H_in); hx: an LSTM's ``(h, c)``, each (num_layers, N, H), a GRU's or RNN's h, or None.
    Returns ``(output (N, H), (h_n, c_n))``, or ``(output, h_n)``."""
    if not plan.lstm:
        # (the kernel checks the rest itself, at a fraction of the cost of checks here: GRU.step / RNN.step stay
        # under nn.GRUCell / nn.RNNCell per step, where Python work per call is most of the budget)
        if type(x) is not Tensor or not (hx is None or type(hx) is Tensor):
            return None
        r = plan.engine.hidden_stream(x, hx, plan.layers, step, plan.eps)
        return None if r is None else (r.out, r.h_n)
    if type(x) is not Tensor or x.dim() != 2 or x.shape[1] != plan.input_size or x.dtype != plan.dtype \
            or x.device.type not in plan.engine.devices:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in plan.params)):
        return None
    if hx is None:
        h0 = c0 = x.new_empty(0)
    else:
        if type(hx) is not tuple or len(hx) != 2:
            return None
        h0, c0 = hx
        shape = (plan.num_layers, x.shape[0], plan.hidden_size)
        if h0.shape != shape or c0.shape != shape or h0.dtype != x.dtype or c0.dtype != x.dtype \
                or h0.device != x.device or c0.device != x.device or (torch.is_grad_enabled() and (
                    h0.requires_grad or c0.requires_grad)):
            return None
        h0, c0 = h0.contiguous(), c0.contiguous()
    r = plan.engine.lstm_stream(x.contiguous(), h0, c0, plan.layers, step, plan.eps)
    return r.out, (r.h_n, r.c_n)


def one_step(eng: Engine, p: CellParams, x: Tensor, state: State, step: int, eps: float) -> Optional[State]:
    """One LSTM step of one cell in one call, when nothing needs a gradient and no norm computes batch
    statistics; ``None`` when it does not apply. x: (N, H_in); state (h, c), each (N, H)."""
    layer = stream_layer(p, x)
    if layer is None:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *state, *layer[:4],
                                                                  *(t for n in layer[4:7] for t in n[1:]))):
        return None
    r = eng.lstm_stream(x.contiguous(), state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous(),
                        eng.prepare_stream([layer]), step, eps)
    return r.h_n[0], r.c_n[0]
