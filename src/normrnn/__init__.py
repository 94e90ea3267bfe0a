"""normrnn: normalized recurrent layers (layer norm, RMSNorm, recurrent batch norm) with the nn.LSTM API."""
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import convert
from .layers import GRU, LSTM, RNN, StreamState
from .norms import LayerNorm, RecurrentBatchNorm, RMSNorm
from .sync import sync_batch_norm

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "StreamState", "convert", "LayerNorm",
           "RMSNorm", "RecurrentBatchNorm", "sync_batch_norm", "__version__"]
