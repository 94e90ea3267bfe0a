"""float64 gradcheck of every cell x norm x placement, through the inputs, the state and every parameter."""
import itertools

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import normrnn
from rnn_helpers import initial_state, make, randomize_norms

NORMS = ["layer", "rms", "batch", "none"]
TERMS = ["separate", "joint"]


def _lstm_variants():
    for norm, terms, norm_cell, carry in itertools.product(NORMS, TERMS, [True, False], [False, True]):
        if norm == "none" and (terms == "joint" or not norm_cell or carry):
            continue  # identical to the plain LSTM
        if not norm_cell and carry:
            continue  # nothing normalized to carry
        yield "LSTM", norm, terms, dict(norm_cell=norm_cell, carry_normalized_cell=carry)


def _other_variants():
    for kind, norm, terms in itertools.product(["GRU", "RNN"], NORMS, TERMS):
        if norm == "none" and terms == "joint":
            continue
        yield kind, norm, terms, {}
    yield "RNN", "layer", "separate", dict(nonlinearity="relu")


VARIANTS = list(_lstm_variants()) + list(_other_variants())


def _check(module, x, hx, fast_mode=True, **forward_kwargs):
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    states = list(hx) if isinstance(hx, tuple) else [hx]
    for s in states:
        s.requires_grad_()
    x.requires_grad_()
    buffers = {n: b.clone() for n, b in module.named_buffers()}

    def fn(x, *rest):
        st, ps = rest[:len(states)], rest[len(states):]
        h = tuple(st) if len(st) == 2 else st[0]
        # Fresh buffers every call: batch norm's running statistics must not drift between evaluations.
        mapping = {**dict(zip(names, ps)), **{n: b.clone() for n, b in buffers.items()}}
        out, h_n = functional_call(module, mapping, (x, h), forward_kwargs)
        flat = [out] + (list(h_n) if isinstance(h_n, tuple) else [h_n])
        return tuple(flat)

    # fast_mode checks random projections of the Jacobian: as strict for wrong gradients, much cheaper.
    assert gradcheck(fn, (x, *states, *params), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast_mode)


@pytest.mark.parametrize("kind,norm,terms,extra", VARIANTS, ids=lambda v: str(v))
def test_cell_variants_gradcheck(kind, norm, terms, extra):
    torch.manual_seed(3)  # a seed that keeps every ReLU pre-activation away from its kink
    m = make(kind, 3, 4, norm=norm, norm_terms=terms, dtype=torch.float64, **extra)
    randomize_norms(m)
    x = torch.randn(3, 3, 3, dtype=torch.float64)
    _check(m, x, initial_state(kind, 1, 3, 4, torch.float64))


@pytest.mark.parametrize("kind,terms", [("LSTM", "separate"), ("GRU", "separate"), ("GRU", "joint")])
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_stack_with_lengths_gradcheck(kind, terms, norm):
    """Two bidirectional layers, padded input with lengths, residual connections: all paths differentiate."""
    torch.manual_seed(1)
    m = make(kind, 4, 2, 2, bidirectional=True, norm=norm, norm_terms=terms, residual=True, dtype=torch.float64)
    randomize_norms(m)
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    _check(m, x, initial_state(kind, 4, 3, 2, torch.float64), fast_mode=False, lengths=torch.tensor([4, 2, 3]))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_cell_module_gradcheck(kind, norm):
    torch.manual_seed(2)
    cell = getattr(normrnn, kind + "Cell")(3, 4, norm=norm, dtype=torch.float64)
    randomize_norms(cell)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, h, c, *ps):
        hx = (h, c) if kind == "LSTM" else h
        out = functional_call(cell, dict(zip(names, ps)), (x, hx), dict(step=2))
        return out if isinstance(out, tuple) else (out + 0 * c,)

    assert gradcheck(fn, (x, h, c, *params), eps=1e-6, atol=1e-5, rtol=1e-3)
