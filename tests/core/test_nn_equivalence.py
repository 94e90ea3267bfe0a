"""norm="none" must be nn.LSTM / nn.GRU / nn.RNN exactly, for every way of calling them."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import normrnn
from rnn_helpers import NN, initial_state, make

KINDS = ["LSTM", "GRU", "RNN"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers,bidirectional,batch_first,packed,with_hx",
                         list(itertools.product([1, 2], [False, True], [False, True], [False, True], [False, True])))
def test_norm_none_equals_nn(kind, layers, bidirectional, batch_first, packed, with_hx):
    torch.manual_seed(0)
    ref = NN[kind](4, 6, layers, batch_first=batch_first, bidirectional=bidirectional)
    ours = make(kind, 4, 6, layers, batch_first=batch_first, bidirectional=bidirectional, norm="none")
    ours.load_state_dict(ref.state_dict(), strict=True)  # same keys, nothing extra
    T, N = 7, 3
    x = torch.randn(N, T, 4) if batch_first else torch.randn(T, N, 4)
    hx = initial_state(kind, layers * (1 + bidirectional), N, 6) if with_hx else None
    inp = pack_padded_sequence(x, [5, 7, 2], batch_first=batch_first, enforce_sorted=False) if packed else x
    out_ref, h_ref = ref(inp, hx)
    out, h = ours(inp, hx)
    if packed:
        assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
        assert torch.equal(out.sorted_indices, out_ref.sorted_indices)
        out, out_ref = out.data, out_ref.data
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    for a, b in zip(h if kind == "LSTM" else (h,), h_ref if kind == "LSTM" else (h_ref,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_matches_nn(kind):
    torch.manual_seed(1)
    ref = NN[kind](3, 5, 2, bidirectional=True)
    ours = make(kind, 3, 5, 2, bidirectional=True, norm="none")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3)
    hx = initial_state(kind, 4, 1, 5)
    hx = tuple(s.squeeze(1) for s in hx) if kind == "LSTM" else hx.squeeze(1)
    out_ref, h_ref = ref(x, hx)
    out, h = ours(x, hx)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)


def test_relu_rnn_matches_nn():
    torch.manual_seed(2)
    ref = torch.nn.RNN(3, 5, 2, nonlinearity="relu")
    ours = normrnn.RNN(3, 5, 2, nonlinearity="relu", norm="none")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(8, 2, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cells_match_nn_cells(kind):
    torch.manual_seed(3)
    ref = getattr(torch.nn, kind + "Cell")(4, 6)
    ours = getattr(normrnn, kind + "Cell")(4, 6, norm="none")
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(5, 4)
    h = torch.randn(5, 6)
    hx = (h, torch.randn(5, 6)) if kind == "LSTM" else h
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(x, hx)), torch.utils._pytree.tree_leaves(ref(x, hx))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # unbatched, no state
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(x[0])), torch.utils._pytree.tree_leaves(ref(x[0]))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_no_bias_matches_nn():
    torch.manual_seed(4)
    ref = torch.nn.LSTM(3, 5, bias=False)
    ours = normrnn.LSTM(3, 5, bias=False, norm="none")
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=0)


def test_parameter_names_and_shapes_are_nn_lstms():
    ref = torch.nn.LSTM(3, 5, 2, bidirectional=True)
    ours = normrnn.LSTM(3, 5, 2, bidirectional=True, norm="layer")
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    for k, v in ref.state_dict().items():
        assert shapes[k] == v.shape
    extra = set(shapes) - set(ref.state_dict())
    assert extra and all(k.startswith("norm_") for k in extra)
