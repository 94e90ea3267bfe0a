"""Running a sequence: stacked layers, two directions, lengths and packed input, with the nn.LSTM contract.

``normrnn.LSTM``/``GRU``/``RNN`` take ``nn.LSTM``'s arguments and return what it returns; parameters are named
``weight_ih_l{k}[_reverse]`` etc. as there, with the norms as extra submodules ``norm_{ih,hh,gates,new,cell}_l{k}
[_reverse]``. With ``norm="none"`` an ``nn.LSTM`` state dict loads strictly and gives the same outputs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .cells import GATES, CellParams, State, add_cell_parameters, cell_params
from .checks import LengthsLike, PaddedBatch, check_proj_size, check_size, finish_output, prepare_input
from .norms import LayerNorm, RMSNorm
from .options import NormOptions, check_probability
from .fused import select
from .fused.input_term import normalize as fused_normalize
from .fused.run import run_direction as fused_run
from .fused.stream import build_plan as build_stream_plan
from .fused.stream import generation as stream_generation
from .fused.stream import invalidate as invalidate_stream_plans
from .fused.stream import stream_step as fused_stream_step
from .reference import run_direction
from .tracing import is_exporting

BACKENDS = select.BACKENDS
HALF = (torch.bfloat16, torch.float16)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """autocast's dtype for ``device_type`` when it is enabled there, else ``None``."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _cast(obj, dtype: torch.dtype):
    """``obj`` with every floating tensor in it (also inside a PackedSequence, tuples, named tuples) cast."""
    if isinstance(obj, PackedSequence):
        return obj.to(dtype)
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        items = [_cast(o, dtype) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    return obj


class _Method(nn.Module):
    """Calls one method of ``layer`` as its forward, so ``torch.func.functional_call`` can run ``step`` too."""

    def __init__(self, layer: nn.Module, method: str) -> None:
        super().__init__()
        self.layer, self.method = layer, method

    def forward(self, *args, **kwargs):
        return getattr(self.layer, self.method)(*args, **kwargs)


class StreamState(NamedTuple):
    """What :meth:`step` carries between calls: the ``hx`` of ``forward`` and the index of the next step
    (batch norm picks its per-step statistics by it)."""

    hx: object
    step: int


class _NormRNNBase(nn.Module):
    """Shared by LSTM, GRU and RNN: parameters, checks, and the loop over layers and directions."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, norm: str = "layer", norm_terms: str = "separate", eps: float = 1e-5,
                 gamma_init: Optional[float] = None, max_steps: int = 256, momentum: float = 0.1,
                 residual: bool = False, zoneout: float = 0.0, dropconnect: float = 0.0, backend: str = "auto",
                 sync_stats: bool = False, _lstm_options: Optional[dict] = None, proj_size: int = 0) -> None:
        super().__init__()
        self._in_float32 = False  # inside a half-precision call's float32 run (see _half_precision)
        self.mode = mode
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.proj_size = check_proj_size(proj_size, hidden_size, mode)
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = check_probability("dropout", dropout)
        self.zoneout = check_probability("zoneout", zoneout)
        self.dropconnect = check_probability("dropconnect", dropconnect)
        self.residual = bool(residual)
        self.backend = backend
        self.options = NormOptions(norm, norm_terms, eps=eps, gamma_init=gamma_init, max_steps=max_steps,
                                   momentum=momentum, sync_stats=sync_stats, **(_lstm_options or {}))
        directions = 2 if self.bidirectional else 1
        for k in range(self.num_layers):
            layer_input = input_size if k == 0 else self.output_size * directions
            for d in range(directions):
                add_cell_parameters(self, self._suffix(k, d), mode, layer_input, hidden_size, self.bias,
                                    self.options, device, dtype, proj_size=self.proj_size)
            if self._has_residual(k) and self.options.active:
                # Pre-norm residual (x + layer(norm(x))): RMSNorm for norm="rms", LayerNorm otherwise, since a
                # per-sample norm keeps the skip path independent of the batch.
                width = self.output_size * directions
                pre = (RMSNorm(width, eps, device=device, dtype=dtype) if norm == "rms"
                       else LayerNorm(width, eps, device=device, dtype=dtype))
                self.add_module(f"norm_input_l{k}", pre)

    # ------------------------------------------------------------------------------------------ structure

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _has_residual(self, layer: int) -> bool:
        """Layers after the first map D·H features to D·H features, so a skip connection fits there."""
        return self.residual and layer > 0

    @property
    def norm(self) -> str:
        return self.options.norm

    @property
    def backend(self) -> str:
        """``"auto"`` (the fused kernels where they cover the configuration), ``"fused"`` (insist on them) or
        ``"reference"`` (the readable per-step loop). Settable: ``layer.backend = "reference"``."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; expected one of {', '.join(map(repr, BACKENDS))}")
        self._backend = value

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Units of h and of the outputs per direction: ``proj_size`` when there is a projection, else H."""
        return self.proj_size or self.hidden_size

    def _apply(self, fn, *args, **kwargs):
        # Moving or casting replaces buffers without registration hooks: drop cached streaming plans.
        invalidate_stream_plans()
        return super()._apply(fn, *args, **kwargs)

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.LSTM`` (which compacts cuDNN weights here)."""

    def _cell(self, layer: int, direction: int) -> CellParams:
        suffix = self._suffix(layer, direction)
        w_hh = None
        if self.dropconnect and self.training:
            # DropConnect on the recurrent weights (Wan et al.; haste, AWD-LSTM): one mask per forward call.
            w_hh = F.dropout(getattr(self, "weight_hh" + suffix), self.dropconnect, True)
        return cell_params(self, suffix, self.mode, self.options, weight_hh=w_hh)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("proj_size", 0), ("residual", False), ("zoneout", 0.0), ("dropconnect", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", norm={self.norm!r}, norm_terms={self.options.norm_terms!r}"

    # ------------------------------------------------------------------------------------------ running

    def forward(self, input, hx=None, *, lengths: LengthsLike = None):
        """Run the stack over a sequence.

        input: (L, N, H_in), (N, L, H_in) with ``batch_first``, (L, H_in) unbatched, or a PackedSequence.
        hx: initial state, as for ``nn.LSTM``: ``(h_0, c_0)`` for an LSTM, ``h_0`` otherwise, each
            (num_layers·D, N, H); zeros when omitted.
        lengths: (N,) valid steps per sequence, for padded input. Outputs past a sequence's end are zero and
            its final state is the one at its last valid step.
        Returns ``(output, h_n)`` / ``(output, (h_n, c_n))``: output (L, N, D·H) (or packed, or batch first).
        """
        low = self._half_precision()
        if low is not None:
            return self._in_float32_for(low, "forward", input, hx, lengths=lengths)
        batch = prepare_input(self, input, hx, lengths)
        out, states = self._run(batch, start=0)
        return finish_output(batch, out, states, self.mode == "LSTM")

    def step(self, input: Tensor, state: Optional[StreamState] = None) -> tuple[Tensor, StreamState]:
        """Streaming: advance one time step. input: (N, H_in); returns (output (N, H), new state).

        Equal to ``forward`` over the whole sequence, batch norm in eval mode included (the state carries the
        step index). Only for unidirectional layers: a reverse direction needs the whole sequence.
        """
        # The one-call kernel first, with as little Python around it as can be: at batch 1 a step's arithmetic
        # takes microseconds, and Python per call decides the speed. The plan exists only for a layer the kernel
        # runs (float32/float64 parameters, unidirectional, ...); the kernel checks the input and the state itself
        # and declines what it cannot take. (Not while exporting: the graph holds ATen ops only; not in a
        # half-precision call, whose float32 parameters are copies made per call; not under autocast.)
        plan = None if self._in_float32 or is_exporting() else self._stream_plan()
        if plan is not None and (state is None or type(state) is StreamState) \
                and _autocast_dtype(plan.device_type) is None:
            hx, start = (None, 0) if state is None else state
            fast = fused_stream_step(plan, input, hx, start)
            if fast is not None:
                return fast[0], StreamState(fast[1], start + 1)
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: a bidirectional one must see the whole sequence")
        if not isinstance(input, Tensor) or input.dim() != 2:
            raise ValueError(f"step() takes one time step of shape (N, H_in), got "
                             f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
        if state is not None and not isinstance(state, StreamState):
            raise TypeError("state must be the StreamState returned by the previous step() call, or None")
        low = self._half_precision()
        if low is not None:
            return self._in_float32_for(low, "step", input, state)
        hx, start = (None, 0) if state is None else state
        batch = prepare_input(self, input.unsqueeze(1) if self.batch_first else input.unsqueeze(0), hx)
        out, states = self._run(batch, start=start)
        hx_new = states if self.mode == "LSTM" else states[0]
        return out[0], StreamState(hx_new, start + 1)

    def _half_precision(self) -> Optional[torch.dtype]:
        """The dtype a call returns when the layer computes in float32 for it: bf16/fp16 parameters', or under
        ``torch.autocast`` autocast's (float32 parameters); ``None`` for a float32/float64 call."""
        if self._in_float32:
            return None
        w = self.weight_ih_l0
        if w.dtype in HALF:
            return w.dtype
        return _autocast_dtype(w.device.type) if w.dtype == torch.float32 else None

    def _in_float32_for(self, low: torch.dtype, method: str, *args, **kwargs):
        """Half precision as nn.LSTM has it, outputs and states in ``low``, with everything inside in float32: the
        input term, the norms' statistics, the cell state and the time loop (in half precision a layer norm's
        variance or a long cell-state sum lose most of their bits). The parameters enter through float32 casts,
        so their gradients come back in their own dtype; batch norm's running statistics are updated in float32
        and rounded once."""
        params = {n: p.float() for n, p in self.named_parameters()}
        buffers = {n: b.float() if b.is_floating_point() else b for n, b in self.named_buffers()}
        self._in_float32 = True
        try:
            with torch.autocast(self.weight_ih_l0.device.type, enabled=False):
                result = torch.func.functional_call(
                    _Method(self, method), {f"layer.{n}": t for n, t in {**params, **buffers}.items()},
                    _cast(args, torch.float32), _cast(kwargs, torch.float32))
        finally:
            self._in_float32 = False
        with torch.no_grad():
            for n, b in self.named_buffers():
                if b.is_floating_point() and buffers[n] is not b:
                    b.copy_(buffers[n])
        return _cast(result, low)

    def _stream_plan(self):
        """The cached streaming plan (:mod:`normrnn.fused.stream`) of this stack, or ``None`` when ``step`` runs
        the general path; rebuilt when the key of what chooses the path changed."""
        key = (stream_generation(), self.training, self._backend, select.forced())
        cached = self.__dict__.get("_stream_plan_cache")
        if cached is None or cached[0] != key:
            w = self.weight_hh_l0
            dropout = self.training and bool(self.dropconnect or (self.dropout and self.num_layers > 1))
            eng = select.streams(self.uses_fused(), self.mode, self.bidirectional, self.zoneout, self.residual,
                                 dropout, w.device, w.dtype, self.proj_size)
            plan = None if eng is None else build_stream_plan(
                [self._cell(k, 0) for k in range(self.num_layers)], eng, self.options.eps)
            self.__dict__["_stream_plan_cache"] = cached = (key, plan)
        return cached[1]

    def __getstate__(self):
        # The streaming plan holds engine objects (modules, bound kernel types) that neither copy nor pickle; a
        # copy builds its own on its first step.
        state = super().__getstate__()  # (a copy)
        state.pop("_stream_plan_cache", None)
        return state

    def uses_fused(self) -> bool:
        """Whether ``forward`` runs the fused kernels (see ``backend``); ``backend="fused"`` on a configuration
        they do not cover is an error. The decision is :func:`normrnn.fused.select.uses_fused`'s."""
        # Synced batch norm all-reduces its training statistics; eval reads running stats, which fused covers.
        sync = self.options.sync_stats and self.options.norm == "batch" and self.training
        return select.uses_fused(self._backend, self.mode, self.options.norm_terms, self.weight_ih_l0.device,
                                 self.zoneout, sync)

    def active_backend(self) -> str:
        """What runs: ``"reference"``, ``"fused-native"`` (C++ kernels) or ``"fused-torch"`` (their PyTorch twin)."""
        return select.active_backend(self.uses_fused(), self.weight_ih_l0.device)

    def _initial_state(self, batch: PaddedBatch, index: int) -> State:
        if batch.hx is not None:
            return tuple(s[index] for s in batch.hx)
        zeros = batch.x.new_zeros(batch.x.shape[1], self.hidden_size)
        if self.mode != "LSTM":
            return (zeros,)
        return (batch.x.new_zeros(batch.x.shape[1], self.proj_size), zeros) if self.proj_size else (zeros, zeros)

    def _run(self, batch: PaddedBatch, start: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The stack over a checked batch: returns the last layer's output (T, N, D·H) and the final states,
        each (num_layers·D, N, H)."""
        x, mask, lengths = batch.x, batch.mask, batch.lengths
        if mask is not None:
            # Padding is not data: whatever it holds (NaN, inf) must reach no output, state, statistic or gradient
            # (the input projection's weight gradient sums 0 * x over padded rows too). Selected, not multiplied.
            x = torch.where(mask.unsqueeze(-1), x, 0)
        fused = self.uses_fused()
        finals: list[State] = []
        for k in range(self.num_layers):
            pre_norm = self._modules.get(f"norm_input_l{k}")  # (hasattr would raise and catch, per call)
            if pre_norm is None:
                layer_in = x
            else:
                layer_in = fused_normalize(pre_norm, x, 0, None, select.engine(x.device)) if fused else pre_norm(x)
            outs = []
            for d in range(self.num_directions):
                cell, h0 = self._cell(k, d), self._initial_state(batch, k * self.num_directions + d)
                if fused:
                    out, final = fused_run(cell, layer_in, h0, mask, lengths, reverse=d == 1, start=start,
                                           eps=self.options.eps)
                else:
                    out, final = run_direction(cell, layer_in, h0, mask, lengths, reverse=d == 1, start=start,
                                               zoneout_p=self.zoneout, training=self.training)
                outs.append(out)
                finals.append(final)
            y = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self._has_residual(k):
                y = x + y if mask is None else (x + y) * mask.unsqueeze(-1)
            if self.dropout and self.training and k < self.num_layers - 1:
                y = F.dropout(y, self.dropout, True)
            x = y
        states = tuple(torch.stack([f[i] for f in finals]) for i in range(len(finals[0])))
        return x, states


class LSTM(_NormRNNBase):
    r"""A normalized ``nn.LSTM``.

    Args: as ``nn.LSTM`` (``input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None``), plus keyword-only:

    * ``norm="layer" | "rms" | "batch" | "none"``; ``norm_terms="separate" | "joint"``.
    * ``norm_cell=True``: normalize c_t before the output tanh; ``carry_normalized_cell=False``.
    * ``eps=1e-5``; ``gamma_init=None`` (1.0 for layer/rms, 0.1 for batch).
    * ``max_steps=256``, ``momentum=0.1``: recurrent batch norm's per-step statistics.
    * ``sync_stats=False``: batch norm statistics over all ranks of the process group (:mod:`normrnn.sync`).
    * ``residual=False``: pre-norm residual connections around layers 2..num_layers.
    * ``zoneout=0.0`` (on h and c), ``dropconnect=0.0`` (on ``weight_hh``).

    Shapes: input (L, N, H_in) or (N, L, H_in) with ``batch_first``; output (L, N, D·H_out); h_n
    (num_layers·D, N, H_out) and c_n (num_layers·D, N, H), where H_out is ``proj_size`` if > 0, else H. With a
    projection (Sak et al. 2014) ``h = W_hr (o * tanh(norm_cell(c)))``; ``weight_hr_l{k}[_reverse]`` is (P, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, norm_cell: bool = True, carry_normalized_cell: bool = False,
                 **options) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, **options, proj_size=proj_size, _lstm_options=dict(
                             norm_cell=bool(norm_cell), carry_normalized_cell=bool(carry_normalized_cell)))


class GRU(_NormRNNBase):
    """A normalized ``nn.GRU``; arguments as :class:`LSTM` without the cell options. Returns (output, h_n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **options) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, **options)


class RNN(_NormRNNBase):
    """A normalized Elman ``nn.RNN`` with ``nonlinearity="tanh" | "relu"``. Returns (output, h_n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **options) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, device, dtype, **options)


__all__ = ["LSTM", "GRU", "RNN", "StreamState", "GATES"]
