"""LSTM with a projection (``proj_size``, Sak et al. 2014, as ``nn.LSTM`` has it): h = W_hr (o * tanh(c)),
so the hidden state and the outputs have P units and the cell state H. Against ``nn.LSTM`` itself for
norm="none" (state dict, outputs, gradients), and every norm's fused engines against the reference loop."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import normrnn
from normrnn import fused
from rnn_helpers import randomize_norms

ENGINES = ["torch"] + (["native"] if fused.native.load() is not None else [])


def _grads(m, x, hx, lengths=None):
    out, (h, c) = m(x, hx, lengths=lengths) if lengths is not None else m(x, hx)
    data = out.data if hasattr(out, "batch_sizes") else out
    w = torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
    loss = (data * w).sum() + 2 * h.sum() + 3 * c.sum()
    return [data, h, c], torch.autograd.grad(loss, [p for p in m.parameters()] + [hx[0], hx[1]])


@pytest.mark.parametrize("layers,bidirectional,batch_first,packed",
                         list(itertools.product([1, 2], [False, True], [False, True], [False, True])))
def test_norm_none_equals_nn_lstm_with_projection(layers, bidirectional, batch_first, packed):
    torch.manual_seed(0)
    kw = dict(batch_first=batch_first, bidirectional=bidirectional, proj_size=3, dtype=torch.float64)
    ref = torch.nn.LSTM(4, 6, layers, **kw)
    ours = normrnn.LSTM(4, 6, layers, norm="none", **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)  # weight_hr_l{k}[_reverse] included, nothing extra
    D = 2 if bidirectional else 1
    x = torch.randn(3, 7, 4, dtype=torch.float64) if batch_first else torch.randn(7, 3, 4, dtype=torch.float64)
    hx = (torch.randn(layers * D, 3, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(layers * D, 3, 6, dtype=torch.float64, requires_grad=True))
    inp = pack_padded_sequence(x, [5, 7, 2], batch_first=batch_first, enforce_sorted=False) if packed else x
    outs_r, grads_r = _grads(ref, inp, hx)
    outs, grads = _grads(ours, inp, hx)
    assert outs[0].shape[-1] == D * 3 and outs[1].shape[-1] == 3 and outs[2].shape[-1] == 6
    for a, b in zip(outs + list(grads), outs_r + list(grads_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
@pytest.mark.parametrize("terms", ["separate", "joint"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_projection_equals_reference(engine, norm, terms, training):
    torch.manual_seed(0)
    kw = dict(norm=norm, norm_terms=terms, bidirectional=True, proj_size=3, dtype=torch.float64)
    ref = normrnn.LSTM(4, 6, 2, backend="reference", **kw)
    randomize_norms(ref)
    if norm == "batch":
        ref(torch.randn(7, 5, 4, dtype=torch.float64))
    fast = normrnn.LSTM(4, 6, 2, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    ref.train(training), fast.train(training)
    x = torch.randn(7, 4, 4, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(4, 4, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(4, 4, 6, dtype=torch.float64, requires_grad=True))
    lengths = torch.tensor([7, 3, 1, 5])
    with fused.force_engine(engine):
        outs_f, grads_f = _grads(fast, x, hx, lengths)
    outs_r, grads_r = _grads(ref, x, hx, lengths)
    for a, b in zip(outs_f + list(grads_f), outs_r + list(grads_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(fast.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_projection_streaming_equals_forward(norm):
    torch.manual_seed(0)
    m = normrnn.LSTM(4, 6, 2, norm=norm, proj_size=3)
    if norm == "batch":
        m(torch.randn(7, 5, 4))
    m.eval()
    x = torch.randn(9, 3, 4)
    with torch.no_grad():
        want, (h, c) = m(x)
        state, outs = None, []
        for t in range(9):
            y, state = m.step(x[t], state)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.hx[0], h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.hx[1], c, rtol=1e-5, atol=1e-6)


def test_projection_float64_gradcheck():
    torch.manual_seed(0)
    m = normrnn.LSTM(3, 4, norm="layer", proj_size=2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: m(x)[0], (x,))


def test_projection_errors_like_nn():
    for cls in (normrnn.GRU, normrnn.RNN):
        with pytest.raises(ValueError, match="proj_size"):
            cls(4, 6, proj_size=3)
    for bad in (6, 7, -1):
        with pytest.raises(ValueError, match="proj_size"):
            normrnn.LSTM(4, 6, proj_size=bad)
    with pytest.raises(TypeError, match="proj_size"):
        normrnn.LSTM(4, 6, proj_size=2.5)
    m = normrnn.LSTM(4, 6, proj_size=3)
    with pytest.raises(ValueError):  # h0 must have proj_size units
        m(torch.randn(5, 2, 4), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)))
