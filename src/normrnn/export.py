"""Deployment: normalized layers as graphs of plain ATen operations, for ``torch.export`` and ONNX.

While PyTorch exports, every layer runs its reference loop (see :mod:`normrnn.tracing`), so
``torch.export.export(model.eval(), (x,))`` and ``torch.onnx.export(model.eval(), (x,), dynamo=True)`` work for
every cell and norm. The time loop is unrolled: the graph is for the sequence length it was exported with
(the batch size may be dynamic). For any length, export one step with :class:`StreamingStep` and call it once
per step, with the state (and, for batch norm, the step index) going out of one call and into the next.
"""
from __future__ import annotations

from torch import Tensor, nn

from .layers import StreamState


class StreamingStep(nn.Module):
    """One time step of a unidirectional layer with plain tensors in and out, for export.

    ``forward(x, state, step)``: x (N, H_in); state the layer's ``hx`` with its (num_layers, N, H) tensors
    (``(h, c)`` for an LSTM, ``(h,)`` otherwise); step a 0-dim int64 tensor, the index of this step (batch norm
    reads that step's running statistics; other norms ignore it). Returns ``(y, state, step + 1)`` with y
    (N, H). The same as ``layer.step``, whose state carries the index as a Python int.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if getattr(layer, "bidirectional", False):
            raise ValueError("StreamingStep needs a unidirectional layer: a reverse direction sees the whole sequence")
        self.layer = layer

    def forward(self, x: Tensor, state: tuple[Tensor, ...], step: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        hx = tuple(state) if self.layer.mode == "LSTM" else state[0]
        y, new = self.layer.step(x, StreamState(hx, step))
        h = new.hx if isinstance(new.hx, tuple) else (new.hx,)
        return y, h, new.step
