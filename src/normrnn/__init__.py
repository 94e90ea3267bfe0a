"""normrnn: normalized recurrent layers (layer norm, RMSNorm, recurrent batch norm) with the nn.LSTM API.

The library, bottom up (each module imports only those above it in this list; ``tools/import_graph.py``):
``tracing`` (whether PyTorch exports), ``moments`` (per-step batch moments, local or all-reduced), ``norms``,
``options``, ``checks`` (the input edge), ``cells`` (the math of one step), ``reference`` (the readable loop),
``sync`` (synchronised batch norm), ``fused`` (the fast path: engine contract, path selection, autograd glue,
input term, streaming, the PyTorch and native engines), ``layers`` (running a sequence, the ``nn.LSTM``
contract), ``convert``, ``export``. Apart from it: ``bench`` (benchmarks) and the application, ``data``,
``train`` (models and trainer) and ``study``.
"""
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import convert
from .layers import GRU, LSTM, RNN, StreamState
from .norms import LayerNorm, RecurrentBatchNorm, RMSNorm
from .sync import sync_batch_norm

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "StreamState", "convert", "LayerNorm",
           "RMSNorm", "RecurrentBatchNorm", "sync_batch_norm", "__version__"]
