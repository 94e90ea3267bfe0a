"""The module edge: every user input is checked here and turned into one padded, time-major batch.

Each problem raises one ``ValueError``/``TypeError`` that names what was wrong and what is accepted, before any
tensor reaches torch's kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

LengthsLike = Union[Tensor, Sequence[int], None]


def check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_proj_size(value: int, hidden_size: int, mode: str) -> int:
    """``proj_size`` as ``nn.LSTM`` takes it: an int in [0, hidden_size), LSTM only (0: no projection)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"proj_size must be an int, got {type(value).__name__}")
    if value and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if value < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {value}")
    if value >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size ({value} >= {hidden_size})")
    return value


def _reference_param(module: nn.Module) -> Tensor:
    return module.weight_ih if hasattr(module, "weight_ih") else module.weight_ih_l0


def _check_tensor(name: str, t: Tensor, module: nn.Module) -> None:
    ref = _reference_param(module)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the layer's parameters are {ref.dtype}; "
                        f"cast one of them (e.g. module.to({t.dtype}))")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but the layer's parameters are on {ref.device}")


@dataclass
class PaddedBatch:
    """A checked input. ``x``: (T, N, H_in); ``lengths``: (N,) int64 on x's device or None (all run T steps);
    ``mask``: (T, N) bool or None; ``hx``: the initial states, each (num_layers·D, N, H), or None."""

    x: Tensor
    lengths: Optional[Tensor]
    mask: Optional[Tensor]
    hx: Optional[tuple[Tensor, ...]]
    batch_first: bool
    unbatched: bool
    packed: Optional[PackedSequence] = None


def check_lengths(lengths: LengthsLike, batch: int, steps: int, device: torch.device) -> Tensor:
    """``lengths`` as an int64 tensor on ``device``: 1-D, one per sequence, each in [1, steps]."""
    if isinstance(lengths, Tensor):
        if lengths.device.type not in ("cpu", device.type) or (
                lengths.device.type == device.type and device.type != "cpu" and lengths.device != device):
            raise ValueError(f"lengths is on {lengths.device}; it must be on the CPU or on the input's device "
                             f"({device})")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must hold integers, got dtype {lengths.dtype}")
        t = lengths
    else:
        try:
            t = torch.as_tensor(list(lengths))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"lengths must be a 1-D int tensor or a list of ints, got {type(lengths).__name__}")
        if t.numel() and (t.is_floating_point() or t.dtype == torch.bool):
            raise ValueError("lengths must hold integers")
    if t.dim() != 1 or t.numel() != batch:
        raise ValueError(f"lengths must have shape ({batch},), one length per sequence, got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.long)
    lo, hi = int(t.min()), int(t.max())
    if lo < 1:
        raise ValueError(f"every length must be at least 1, got {lo}")
    if hi > steps:
        raise ValueError(f"a length of {hi} exceeds the input's {steps} time steps")
    return t


def _check_hx(module: nn.Module, hx, batch: int, unbatched: bool) -> Optional[tuple[Tensor, ...]]:
    if hx is None:
        return None
    n_states = 2 if module.mode == "LSTM" else 1
    if n_states == 2:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("hx for an LSTM must be a tuple (h_0, c_0)")
        states = tuple(hx)
    else:
        if isinstance(hx, (tuple, list)):
            raise ValueError(f"hx for a {type(module).__name__} must be one tensor h_0, not a {type(hx).__name__}")
        states = (hx,)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    proj = getattr(module, "proj_size", 0)
    for name, s in zip(("h_0", "c_0"), states):
        units, what = (proj, "proj_size") if proj and name == "h_0" else (module.hidden_size, "hidden_size")
        want = (rows, units) if unbatched else (rows, batch, units)
        _check_tensor(name, s, module)
        if tuple(s.shape) != want:
            raise ValueError(f"{name} must have shape {want} (num_layers * num_directions, "
                             f"{'' if unbatched else 'batch, '}{what}), got {tuple(s.shape)}")
    return tuple(s.unsqueeze(1) for s in states) if unbatched else states


def prepare_input(module: nn.Module, input, hx=None, lengths: LengthsLike = None) -> PaddedBatch:
    """Check a layer's ``forward`` arguments and return them as a padded, time-major batch."""
    packed = None
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence: it carries its own lengths")
        packed = input
        _check_tensor("input", packed.data, module)
        x, lengths_cpu = pad_packed_sequence(packed)  # original batch order, time-major
        unbatched = False
        lengths = lengths_cpu
    elif isinstance(input, Tensor):
        _check_tensor("input", input, module)
        if input.dim() not in (2, 3):
            raise ValueError(f"input must be 3-D ({'N, L' if module.batch_first else 'L, N'}, H_in) or 2-D "
                             f"(L, H_in) for one unbatched sequence, got {input.dim()}-D shape {tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched and lengths is not None:
            raise ValueError("lengths needs batched (3-D) input")
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if module.batch_first else input)
    else:
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    if x.shape[-1] != module.input_size:
        raise ValueError(f"input has {x.shape[-1]} features but the layer was built with "
                         f"input_size={module.input_size}")
    steps, batch = x.shape[0], x.shape[1]
    if steps == 0 or batch == 0:
        raise ValueError(f"input must hold at least one step of one sequence, got shape {tuple(x.shape)}")
    check_batch_norm_batch(module, batch)
    mask = None
    if lengths is not None:
        lengths = check_lengths(lengths, batch, steps, x.device)
        if bool((lengths == steps).all()):
            lengths = None  # nothing is padded: skip the masking work
        else:
            mask = torch.arange(steps, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
    return PaddedBatch(x, lengths, mask, _check_hx(module, hx, batch, unbatched), module.batch_first and packed
                       is None and not unbatched, unbatched, packed)


def check_batch_norm_batch(module: nn.Module, batch: int) -> None:
    if module.options.norm == "batch" and module.training and batch < 2:
        raise ValueError("batch norm in training needs more than one sequence per batch (got 1), as "
                         "nn.BatchNorm1d does; use norm='layer' or 'rms', or call .eval() for inference")


def finish_output(batch: PaddedBatch, out: Tensor, states: tuple[Tensor, ...], is_lstm: bool):
    """Turn the time-major output (T, N, D·H) and final states back into what ``nn.LSTM`` returns."""
    if batch.unbatched:
        out, states = out.squeeze(1), tuple(s.squeeze(1) for s in states)
    elif batch.packed is not None:
        p = batch.packed
        order = p.sorted_indices
        bs = p.batch_sizes
        lengths = (bs.unsqueeze(0) > torch.arange(int(bs[0])).unsqueeze(1)).sum(1)  # sorted, descending
        padded = out if order is None else out.index_select(1, order.to(out.device))
        data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
        out = PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
    elif batch.batch_first:
        out = out.transpose(0, 1)
    return out, (states if is_lstm else states[0])


def check_cell_call(cell: nn.Module, input, hx, step: int):
    """Check a cell's ``forward`` arguments: returns (x (N, H_in), state tuple, unbatched)."""
    _check_tensor("input", input, cell)
    if input.dim() not in (1, 2):
        raise ValueError(f"input must be 2-D (N, H_in) or 1-D (H_in), got shape {tuple(input.shape)}")
    if input.shape[-1] != cell.input_size:
        raise ValueError(f"input has {input.shape[-1]} features but the cell was built with "
                         f"input_size={cell.input_size}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    check_batch_norm_batch(cell, x.shape[0])
    want = (x.shape[0], cell.hidden_size)
    if hx is None:
        zeros = x.new_zeros(want)
        return x, ((zeros, zeros) if cell.mode == "LSTM" else (zeros,)), unbatched
    states = tuple(hx) if cell.mode == "LSTM" and isinstance(hx, (tuple, list)) else hx
    if cell.mode == "LSTM" and not (isinstance(states, tuple) and len(states) == 2):
        raise ValueError("hx for an LSTMCell must be a tuple (h, c)")
    if cell.mode != "LSTM":
        if not isinstance(states, Tensor):
            raise ValueError(f"hx for a {type(cell).__name__} must be one tensor h")
        states = (states,)
    out = []
    for name, s in zip(("h", "c"), states):
        _check_tensor(name, s, cell)
        s = s.unsqueeze(0) if unbatched and s.dim() == 1 else s
        if tuple(s.shape) != want:
            raise ValueError(f"{name} must have shape {want if not unbatched else want[1:]}, got "
                             f"{tuple(s.shape)}")
        out.append(s)
    return x, tuple(out), unbatched


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence of ``x`` (T, N, ...) within its own length; padding stays where it is.

    Applying it twice is the identity, so it maps a reverse direction's output back to input order.
    """
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # (T, N)
    return x.gather(0, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))
