"""Small shared builders for the core tests."""
import torch

import normrnn

CLASSES = {"LSTM": normrnn.LSTM, "GRU": normrnn.GRU, "RNN": normrnn.RNN}
NN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


def make(kind: str, *args, **kwargs):
    return CLASSES[kind](*args, **kwargs)


def initial_state(kind: str, rows: int, batch: int, hidden: int, dtype=torch.float32):
    h = torch.randn(rows, batch, hidden, dtype=dtype)
    return (h, torch.randn(rows, batch, hidden, dtype=dtype)) if kind == "LSTM" else h


def randomize_norms(module: torch.nn.Module) -> None:
    """Move every norm parameter away from its initial value so tests see the gains and biases act."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("norm_") or ".norm" in name or name.split(".")[0].startswith("norm"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
