"""Swap every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` inside a model for its normalized twin, keeping the weights."""
from __future__ import annotations

from torch import nn

from .layers import GRU, LSTM, RNN

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def convert_layer(layer: nn.RNNBase, norm: str = "layer", **options) -> nn.Module:
    """The normrnn layer with ``layer``'s arguments, weights, device, dtype and train/eval mode."""
    cls = _TWINS[type(layer)]
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  dropout=float(layer.dropout), bidirectional=layer.bidirectional)
    if getattr(layer, "proj_size", 0):
        kwargs["proj_size"] = layer.proj_size
    if cls is RNN:
        kwargs["nonlinearity"] = layer.nonlinearity
    w = layer.weight_ih_l0
    new = cls(layer.input_size, layer.hidden_size, **kwargs, device=w.device, dtype=w.dtype, norm=norm, **options)
    missing, unexpected = new.load_state_dict(layer.state_dict(), strict=False)
    # Only the norms are new: every nn weight must have found its place, and nothing of nn may be left over.
    assert not unexpected and all(k.startswith("norm_") for k in missing), (missing, unexpected)
    return new.train(layer.training)


def convert(module: nn.Module, norm: str = "layer", **options) -> nn.Module:
    """Replace, in place, every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` in ``module`` (or ``module`` itself) with the
    normrnn layer of the same configuration and weights; returns the converted module.

    ``norm`` and ``options`` (``norm_terms``, ``gamma_init``, ...) are passed to every new layer. With
    ``norm="none"`` the model computes exactly what it did before.
    """
    if type(module) in _TWINS:
        return convert_layer(module, norm, **options)
    for name, child in module.named_children():
        setattr(module, name, convert(child, norm, **options))
    return module
