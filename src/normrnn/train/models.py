"""Models built on the normalized recurrent layers: a character LM, a sequence classifier and a CNN+RNN.

Every model takes the recurrent options through one :class:`RNNConfig`, so a study can sweep the cell, the norm
and the rest without touching the model code. Layout is batch first throughout: token ids (N, T), features
(N, T, F), images (N, 28, 28).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from ..layers import GRU, LSTM, RNN

CELLS = ("lstm", "gru", "rnn")
POOLS = ("last", "mean")

# The recurrent state as the layers return it: (h, c) for an LSTM, h otherwise, each (layers·D, N, H).
RNNState = Union[Tensor, tuple[Tensor, Tensor]]


@dataclass
class RNNConfig:
    """The recurrent stack's options, shared by every model (names as in ``normrnn.LSTM``)."""

    cell: str = "lstm"  # lstm | gru | rnn
    norm: str = "layer"  # layer | rms | batch | none
    norm_terms: str = "separate"  # separate | joint
    layers: int = 1
    hidden: int = 256
    bidirectional: bool = False
    residual: bool = False
    dropout: float = 0.0  # between stacked layers
    zoneout: float = 0.0
    dropconnect: float = 0.0
    nonlinearity: str = "tanh"  # rnn cell only
    norm_cell: bool = True  # lstm cell only
    gamma_init: Optional[float] = None
    max_steps: int = 256  # batch norm: per-step statistics kept (later steps share the last)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {', '.join(CELLS)}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_features(self) -> int:
        """Width of the stack's per-step output: D·H."""
        return self.hidden * self.directions


def make_rnn(config: RNNConfig, input_size: int) -> nn.Module:
    """A batch-first normrnn stack for ``config`` reading ``input_size`` features per step."""
    common = dict(num_layers=config.layers, batch_first=True, dropout=config.dropout,
                  bidirectional=config.bidirectional, norm=config.norm, norm_terms=config.norm_terms,
                  residual=config.residual, zoneout=config.zoneout, dropconnect=config.dropconnect,
                  gamma_init=config.gamma_init, max_steps=config.max_steps)
    if config.cell == "lstm":
        return LSTM(input_size, config.hidden, norm_cell=config.norm_cell, **common)
    if config.cell == "gru":
        return GRU(input_size, config.hidden, **common)
    return RNN(input_size, config.hidden, nonlinearity=config.nonlinearity, **common)


def detach_state(state: Optional[RNNState]) -> Optional[RNNState]:
    """Cut the graph between chunks (truncated BPTT): same values, no gradient into earlier chunks."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def last_layer_final(h_n: Tensor, config: RNNConfig) -> Tensor:
    """The top layer's final hidden state, directions concatenated. h_n: (layers·D, N, H) -> (N, D·H).

    The layers take the final state at each sequence's last valid step (and the reverse direction's at step 0),
    so with ``lengths`` this is the state at the last real token, not at the padding.
    """
    top = h_n[-config.directions:]  # (D, N, H)
    return top.transpose(0, 1).reshape(h_n.shape[1], -1)


class CharLM(nn.Module):
    """Embedding -> normrnn stack -> linear over the vocabulary, per step.

    Used for character language modelling with truncated BPTT (the caller passes the returned state, detached,
    into the next contiguous chunk) and for per-step tagging tasks such as the copy problem.
    """

    def __init__(self, vocab_size: int, config: RNNConfig, embed_dim: Optional[int] = None,
                 num_outputs: Optional[int] = None) -> None:
        super().__init__()
        if config.bidirectional:
            # A reverse direction would read the characters it is asked to predict.
            raise ValueError("a language model cannot be bidirectional: the reverse direction sees the future")
        self.config = config
        self.embed = nn.Embedding(vocab_size, embed_dim or min(config.hidden, 128))
        self.rnn = make_rnn(config, self.embed.embedding_dim)
        self.head = nn.Linear(config.out_features, num_outputs or vocab_size)

    def forward(self, tokens: Tensor, state: Optional[RNNState] = None,
                lengths: Optional[Tensor] = None) -> tuple[Tensor, RNNState]:
        """tokens: (N, T) int64. state: the previous chunk's final state or None (zeros). lengths: (N,) valid
        steps of padded input (keeps padding out of batch-norm statistics) or None.

        Returns logits (N, T, V) and the final state ((h, c) for an LSTM), each (layers, N, H).
        """
        out, state = self.rnn(self.embed(tokens), state, lengths=lengths)  # out: (N, T, H)
        return self.head(out), state


class SeqClassifier(nn.Module):
    """normrnn stack over a (padded) sequence -> last valid state or masked mean -> linear.

    Input is token ids (``vocab_size`` given: embedded) or float features (``input_size`` given). With
    ``num_outputs=1`` it is a regressor (the adding problem).
    """

    def __init__(self, num_outputs: int, config: RNNConfig, *, vocab_size: Optional[int] = None,
                 input_size: Optional[int] = None, embed_dim: Optional[int] = None, pool: str = "last") -> None:
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give exactly one of vocab_size (token input) or input_size (feature input)")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")
        self.config, self.pool = config, pool
        self.embed = nn.Embedding(vocab_size, embed_dim or min(config.hidden, 128)) if vocab_size else None
        self.rnn = make_rnn(config, self.embed.embedding_dim if self.embed is not None else input_size)
        self.head = nn.Linear(config.out_features, num_outputs)

    def features(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """The pooled sequence representation. x: (N, T) ids or (N, T, F) floats; lengths: (N,) or None.

        Returns (N, D·H).
        """
        if self.embed is not None:
            x = self.embed(x)
        out, state = self.rnn(x, lengths=lengths)  # out: (N, T, D·H), zero past each sequence's end
        if self.pool == "mean":
            if lengths is None:
                return out.mean(1)
            # Padded steps are already zero, so the sum is the sum over valid steps.
            return out.sum(1) / lengths.to(out.device, out.dtype).clamp(min=1).unsqueeze(1)
        h_n = state[0] if isinstance(state, tuple) else state
        return last_layer_final(h_n, self.config)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """x: (N, T) ids or (N, T, F) floats; lengths: (N,) valid steps or None. Returns (N, num_outputs)."""
        return self.head(self.features(x, lengths))


@dataclass
class ConvConfig:
    """The convolutional front of :class:`ConvRNN`: channels per block, each conv3x3-BN-ReLU-maxpool2."""

    channels: Sequence[int] = field(default_factory=lambda: (32, 64))
    scan: str = "columns"  # the feature map read left to right ("columns") or top to bottom ("rows")


class ConvRNN(nn.Module):
    """A hybrid CNN+RNN for small images: conv blocks with ``nn.BatchNorm2d`` over the image, then the feature
    map's columns (or rows) as a sequence into the normrnn stack -> last state -> linear.

    With two blocks a 28x28 image becomes a 7x7 map: a sequence of 7 steps of C·7 features.
    """

    def __init__(self, num_classes: int, config: RNNConfig, conv: Optional[ConvConfig] = None,
                 image_size: tuple[int, int] = (28, 28), in_channels: int = 1) -> None:
        super().__init__()
        conv = conv or ConvConfig()
        if conv.scan not in ("columns", "rows"):
            raise ValueError(f"unknown scan {conv.scan!r}; expected 'columns' or 'rows'")
        self.config, self.scan, self.image_size = config, conv.scan, tuple(image_size)
        blocks: list[nn.Module] = []
        c_in, (h, w) = in_channels, image_size
        for c_out in conv.channels:
            # The conv's bias is redundant before batch norm, which subtracts the mean anyway.
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        self.conv = nn.Sequential(*blocks)
        step_features = c_in * (h if conv.scan == "columns" else w)
        self.rnn = make_rnn(config, step_features)
        self.head = nn.Linear(config.out_features, num_classes)

    def forward(self, images: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """images: (N, H, W) or (N, C, H, W) floats (``lengths`` is ignored: every image is full size).

        Returns logits (N, num_classes).
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        fmap = self.conv(images)  # (N, C, H', W')
        n, c, h, w = fmap.shape
        if self.scan == "columns":
            seq = fmap.permute(0, 3, 1, 2).reshape(n, w, c * h)  # step t = column t
        else:
            seq = fmap.permute(0, 2, 1, 3).reshape(n, h, c * w)  # step t = row t
        _, state = self.rnn(seq)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(last_layer_final(h_n, self.config))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)



__all__ = ["RNNConfig", "ConvConfig", "CharLM", "SeqClassifier", "ConvRNN", "make_rnn", "detach_state",
           "last_layer_final", "count_parameters", "CELLS", "POOLS"]
