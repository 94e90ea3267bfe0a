"""The engine contract: what every engine of the fused backend implements, and the named values it exchanges.

An *engine* runs the time loop of one direction of one layer, forward and backward, for the four loops below.
Today there are two: the C++ kernels (:mod:`normrnn.fused.native`) and their PyTorch twin
(:mod:`normrnn.fused.torch_engine`, the readable specification); a GPU engine implements the same
:class:`Engine`. Which one runs is decided in :mod:`normrnn.fused.select`; :mod:`normrnn.fused.autograd` wraps
each loop in an autograd node.

The contract, as haste's frontends have it: ``*_forward`` returns a :class:`ForwardResult` whose ``saved``
(a :class:`Saved`) autograd keeps and hands back, unread, to the same engine's ``*_backward``; ``*_infer`` is
the same loop without anything kept for backward (it returns an :class:`InferResult`). The arguments of a loop
are one named tuple per cell kind (:class:`LSTMLoop`, :class:`GRULoop`, :class:`GRUJointLoop`,
:class:`RNNLoop`); gradients come back as one named tuple each.

Conventions: T steps, N sequences, H hidden units, F = gates·H features of the recurrent term. An absent
tensor (no bias, no gain, no padding mask, no given statistics) is an empty tensor, so every engine sees the
same types. ``mask`` (T, N) bool is True where a sequence is still running. Norm kinds are ints shared with C++:
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, Sequence, runtime_checkable

from torch import Tensor

#: Norm kinds: no norm, layer norm, RMS norm, batch norm with batch statistics (training), batch norm with given
#: per-step statistics (eval, or steps where fewer than two sequences run).
NONE, LAYER, RMS, BATCH, BATCH_FIXED = 0, 1, 2, 3, 4


class Fixed(NamedTuple):
    """A batch norm's given per-step statistics (T, F) for eval and for steps it cannot take from the batch;
    empty tensors for other norms."""

    mean: Tensor
    var: Tensor


class Stats(NamedTuple):
    """The batch statistics a loop computed for one norm, for its running averages: mean and biased variance
    (T, F) and the count of running sequences (T,) (< 2: that step used the given statistics). Empty tensors
    unless the norm's kind is ``BATCH``."""

    mean: Tensor
    var: Tensor
    count: Tensor


class Saved(NamedTuple):
    """What a forward keeps for its backward. Opaque outside the engine that made it: autograd stores
    ``tensors`` with ``save_for_backward`` and ``flags`` (plain Python values) on the node."""

    tensors: tuple
    flags: tuple


class InferResult(NamedTuple):
    """out (T, N, H), zero past each sequence's end; state: the final ``(h,)`` or ``(h, c)``, each (N, H);
    stats: one :class:`Stats` per norm of the loop (see each loop's ``stats`` order)."""

    out: Tensor
    state: tuple
    stats: tuple


class ForwardResult(NamedTuple):
    """:class:`InferResult` plus ``saved`` for the backward. ``state`` is not a view of anything kept."""

    out: Tensor
    state: tuple
    stats: tuple
    saved: Saved


# ------------------------------------------------------------------------------------------------ loop arguments

# Synchronised batch norm (``sync_stats=True`` under a process group): a loop's ``reduce`` is a *Reducer*, a
# callable that sums one flat contiguous tensor over the ranks in place (``reduce(buf)``; what it returns is
# ignored). The engines call it once per step for each batch-norm kind of the loop: in forward with
# ``[count | sum (F) | sum of squares (F)]`` of the running rows (the statistics become the global ones, the count
# the number of sequences running at that step on all ranks: under 2, the given statistics are used), in backward
# with ``[sum d (F) | sum d·ŝ (F)]`` over the running rows (d: the gradient of the normalized term ŝ, before or
# after its gain, which is the same on every rank), the column sums batch norm's backward subtracts. Every rank
# makes the same calls in the same order. ``None``: local statistics.
# The backward finds it in ``Saved.flags`` (last).


class LSTMLoop(NamedTuple):
    """An LSTM loop. Input term ``xa`` (T, N, 4H): W_ih·x, normalized when the terms are separate (then the
    loop adds it after the recurrent norm), raw with joint terms (the loop adds it before). ``bias`` (4H,) is
    added after the norm. ``norm_h``: the recurrent term's norm (the joint norm with joint terms), gain
    ``gamma_h`` (4H,); the cell norm has gain ``gamma_c`` and bias ``beta_c`` (H,). Stats: (norm_h, norm_c)."""

    w_hh: Tensor
    bias: Tensor
    gamma_h: Tensor
    gamma_c: Tensor
    beta_c: Tensor
    mask: Tensor
    fixed_h: Fixed
    fixed_c: Fixed
    kind_h: int
    kind_c: int
    joint: bool
    carry: bool  # carry the normalized cell (else the raw one)
    eps: float
    reduce: object = None  # synchronised batch norm: a Reducer (see above), else None


class LSTMGrads(NamedTuple):
    xa: Tensor
    h0: Tensor
    c0: Tensor
    w_hh: Tensor
    bias: Tensor
    gamma_h: Tensor
    gamma_c: Tensor
    beta_c: Tensor


class GRULoop(NamedTuple):
    """A GRU loop with separate terms. ``xa`` (T, N, 3H): the normalized input term plus bias_ih; ``bias_hh``
    (3H,) is added to the normalized recurrent term before the reset gate scales its candidate part.
    Stats: (norm_h,)."""

    w_hh: Tensor
    bias_hh: Tensor
    gamma_h: Tensor
    mask: Tensor
    fixed_h: Fixed
    kind_h: int
    eps: float
    reduce: object = None  # synchronised batch norm: a Reducer (see above), else None


class GRUGrads(NamedTuple):
    xa: Tensor
    h0: Tensor
    w_hh: Tensor
    bias_hh: Tensor
    gamma_h: Tensor


class GRUJointLoop(NamedTuple):
    """A GRU loop with joint terms: ``norm_gates(x_rz + s_rz)`` (gain ``gamma_g``, 2H) and the candidate's
    ``norm_new(x_n + r * (s_n + b_hh_n))`` (gain ``gamma_n``, H). ``xa`` (T, N, 3H) is the raw input term; both
    biases (3H,) go in whole. Stats: (norm_gates, norm_new)."""

    w_hh: Tensor
    bias_ih: Tensor
    bias_hh: Tensor
    gamma_g: Tensor
    gamma_n: Tensor
    mask: Tensor
    fixed_g: Fixed
    fixed_n: Fixed
    kind_g: int
    kind_n: int
    eps: float
    reduce: object = None  # synchronised batch norm: a Reducer (see above), else None


class GRUJointGrads(NamedTuple):
    xa: Tensor
    h0: Tensor
    w_hh: Tensor
    bias_ih: Tensor
    bias_hh: Tensor
    gamma_g: Tensor
    gamma_n: Tensor


class RNNLoop(NamedTuple):
    """An Elman RNN loop. ``xa`` (T, N, H): the input term (normalized for separate terms); ``bias`` (H,) after
    the norm; ``relu`` else tanh. Stats: (norm_h,)."""

    w_hh: Tensor
    bias: Tensor
    gamma_h: Tensor
    mask: Tensor
    fixed_h: Fixed
    kind_h: int
    joint: bool
    relu: bool
    eps: float
    reduce: object = None  # synchronised batch norm: a Reducer (see above), else None


class RNNGrads(NamedTuple):
    xa: Tensor
    h0: Tensor
    w_hh: Tensor
    bias: Tensor
    gamma_h: Tensor


class NormResult(NamedTuple):
    """An input-term norm over all steps at once: the output ``y``, the batch statistics (batch norm, else
    ``None``) and what its backward reads."""

    y: Tensor
    stats: object  # Optional[Stats]
    saved: Saved


class NormGrads(NamedTuple):
    x: Tensor
    weight: Tensor


# ------------------------------------------------------------------------------------------------ streaming


#: Cell kinds of a streaming layer, shared with C++.
CELL_LSTM, CELL_GRU, CELL_RNN_TANH, CELL_RNN_RELU = 0, 1, 2, 3
CELLS = {"LSTM": CELL_LSTM, "GRU": CELL_GRU, "RNN_TANH": CELL_RNN_TANH, "RNN_RELU": CELL_RNN_RELU}


class StreamNorm(NamedTuple):
    """One norm of a streaming layer: kind (``NONE``, ``LAYER``, ``RMS`` or ``BATCH_FIXED``), gain and bias
    (empty when absent), and for batch norm in eval its running statistics (steps, F) and ``steps_tracked``
    (empty otherwise)."""

    kind: int
    gain: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    steps_tracked: Tensor


class StreamLayer(NamedTuple):
    """What one layer of a streaming step reads (biases empty when absent). ``norm_x``: the input term's norm
    (separate terms); ``norm_h``: the recurrent term's, or the joint norm when ``joint`` (a GRU's ``norm_gates``);
    ``norm_c``: an LSTM's cell norm, a GRU's candidate norm (``norm_new``, joint terms), else absent.
    ``carry``: an LSTM carries its normalized cell. ``cell``: ``CELL_LSTM``, ``CELL_GRU``, ``CELL_RNN_*``."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor
    b_hh: Tensor
    norm_x: StreamNorm
    norm_h: StreamNorm
    norm_c: StreamNorm
    joint: bool
    carry: bool
    cell: int = CELL_LSTM


class StreamResult(NamedTuple):
    """out (N, H) of the last layer; h_n, c_n (L, N, H) (c_n empty for a GRU or Elman RNN)."""

    out: Tensor
    h_n: Tensor
    c_n: Tensor


# ------------------------------------------------------------------------------------------------ the interface


@runtime_checkable
class Engine(Protocol):
    """What every engine implements (a class, or a module as :mod:`normrnn.fused.torch_engine` is).

    * ``name``: ``"native"``, ``"torch"``, ...; ``devices``: the device types whose tensors it reads.
    * the four loops, each as ``*_forward`` (training: :class:`ForwardResult` with ``saved``), ``*_infer``
      (:class:`InferResult`, nothing kept) and ``*_backward`` (from the output gradient, the final state's
      gradient and ``saved``, the named gradients of the loop's differentiable arguments);
    * ``has_stream`` / ``has_input_kernels``: whether it also implements :class:`StreamKernels` /
      :class:`InputKernels` (optional: without them the general path and ordinary PyTorch run instead);
    * optional ``reduces = True``: its loops call the loop's ``reduce`` (synchronised batch norm); an engine
      without it never sees such a loop (:mod:`normrnn.fused.run` gives it to the PyTorch engine).
    """

    name: str
    devices: tuple
    has_stream: bool
    has_input_kernels: bool

    def lstm_forward(self, xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> ForwardResult: ...
    def lstm_infer(self, xa: Tensor, h0: Tensor, c0: Tensor, loop: LSTMLoop) -> InferResult: ...
    def lstm_backward(self, dout: Tensor, dh: Tensor, dc: Tensor, saved: Saved) -> LSTMGrads: ...

    def gru_forward(self, xa: Tensor, h0: Tensor, loop: GRULoop) -> ForwardResult: ...
    def gru_infer(self, xa: Tensor, h0: Tensor, loop: GRULoop) -> InferResult: ...
    def gru_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> GRUGrads: ...

    def gru_joint_forward(self, xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> ForwardResult: ...
    def gru_joint_infer(self, xa: Tensor, h0: Tensor, loop: GRUJointLoop) -> InferResult: ...
    def gru_joint_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> GRUJointGrads: ...

    def rnn_forward(self, xa: Tensor, h0: Tensor, loop: RNNLoop) -> ForwardResult: ...
    def rnn_infer(self, xa: Tensor, h0: Tensor, loop: RNNLoop) -> InferResult: ...
    def rnn_backward(self, dout: Tensor, dh: Tensor, saved: Saved) -> RNNGrads: ...


@runtime_checkable
class StreamKernels(Protocol):
    """Optional (``has_stream``): one step of a whole LSTM, GRU or Elman RNN stack in one call (``.step``, and
    fused LSTM calls of one step)."""

    def prepare_stream(self, layers: Sequence[StreamLayer]) -> object:
        """The layers in the engine's own form, built once per streaming plan."""

    def lstm_stream(self, x: Tensor, h0: Tensor, c0: Tensor, layers: object, step: int,
                    eps: float) -> StreamResult:
        """One step of an LSTM stack. x (N, I); h0, c0 (L, N, H) or empty (zeros); ``layers`` from
        :meth:`prepare_stream`; ``step``: the time index (batch norm's statistics row)."""

    def hidden_stream(self, x: Tensor, h0: Optional[Tensor], layers: object, step: int,
                      eps: float) -> Optional[StreamResult]:
        """One step of a GRU or Elman RNN stack (the cell kind is the layers'). x (N, I); h0 (L, N, H) or
        ``None`` (zeros). Checks its arguments itself: ``None`` when they do not fit the stack (shape, dtype,
        device) or autograd would record a graph (then the general path runs)."""


@runtime_checkable
class InputKernels(Protocol):
    """Optional (``has_input_kernels``): the input term's norms over all steps at once
    (:mod:`normrnn.fused.input_term`) and batch norm's running averages after a loop."""

    def norm_rows_(self, x: Tensor, weight: Tensor, kind: int, eps: float, fixed: Fixed) -> None:
        """In inference, in place: x (T, N, F) <- norm(x) · weight (layer, RMS or batch with given statistics)."""

    def bn_steps_forward(self, x: Tensor, weight: Tensor, mask: Tensor, fixed: Fixed, eps: float,
                         training: bool) -> NormResult: ...
    def bn_steps_backward(self, dy: Tensor, saved: Saved) -> NormGrads: ...
    def bn_update_running_(self, running_mean: Tensor, running_var: Tensor, stats: Stats, first: int,
                           momentum: float) -> int:
        """Update the running statistics of steps first.. from a loop's stats; returns the new steps_tracked."""

    def row_norm_forward(self, x: Tensor, weight: Tensor, kind: int, eps: float) -> NormResult:
        """Layer or RMS norm (``kind``) of every row of x (..., F) contiguous, times the gain; no bias."""
    def row_norm_backward(self, dy: Tensor, saved: Saved) -> NormGrads: ...
