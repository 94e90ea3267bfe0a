"""Lengths, packing, directions and streaming: the same sequence gives the same answer however it is fed."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import normrnn
from rnn_helpers import initial_state, make, randomize_norms

KINDS = ["LSTM", "GRU", "RNN"]


def _states(h):
    return h if isinstance(h, tuple) else (h,)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_packed_equals_padded_with_lengths(kind, norm):
    torch.manual_seed(0)
    m = make(kind, 3, 5, 2, bidirectional=True, norm=norm)
    randomize_norms(m)
    lengths = torch.tensor([4, 7, 1, 5])
    x = torch.randn(7, 4, 3)
    hx = initial_state(kind, 4, 4, 5)
    torch.manual_seed(1)
    out_pad, h_pad = m(x, hx, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_packed, h_packed = m(packed, hx)
    out_unpacked, _ = pad_packed_sequence(out_packed, total_length=7)
    torch.testing.assert_close(out_unpacked, out_pad)
    for a, b in zip(_states(h_packed), _states(h_pad)):
        torch.testing.assert_close(a, b)
    # outputs past each end are zero
    for n, L in enumerate(lengths.tolist()):
        assert torch.all(out_pad[L:, n] == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_equals_one_by_one(kind, norm, batch_first):
    """Each sequence alone, unpadded, gives the padded batch's outputs and final states (both directions)."""
    torch.manual_seed(2)
    m = make(kind, 3, 4, 2, bidirectional=True, norm=norm, batch_first=batch_first)
    randomize_norms(m)
    lengths = [6, 2, 4]
    x = torch.randn(3, 6, 3)  # batch-major for easy slicing
    x_in = x if batch_first else x.transpose(0, 1)
    out, h = m(x_in, lengths=torch.tensor(lengths))
    out = out if batch_first else out.transpose(0, 1)
    for n, L in enumerate(lengths):
        xi = x[n:n + 1, :L]
        o, hi = m(xi if batch_first else xi.transpose(0, 1))
        o = o if batch_first else o.transpose(0, 1)
        torch.testing.assert_close(out[n, :L], o[0], atol=1e-6, rtol=1e-5)
        for a, b in zip(_states(h), _states(hi)):
            torch.testing.assert_close(a[:, n], b[:, 0], atol=1e-6, rtol=1e-5)


def test_reverse_direction_starts_at_true_last_step():
    """With padding, the reverse direction's first step reads the last valid input, not a pad."""
    torch.manual_seed(3)
    m = normrnn.GRU(2, 3, bidirectional=True, norm="layer")
    x = torch.randn(5, 1, 2)
    padded = torch.cat([x[:3], torch.full((2, 1, 2), 100.0)])
    out, h = m(padded, lengths=[3])
    out_alone, h_alone = m(x[:3])
    torch.testing.assert_close(out[:3], out_alone)
    torch.testing.assert_close(h, h_alone)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_streaming_equals_forward(kind, norm):
    torch.manual_seed(4)
    m = make(kind, 3, 5, 2, norm=norm, residual=True)
    randomize_norms(m)
    if norm == "batch":  # give the running statistics something to remember, then stream in eval mode
        for _ in range(3):
            m(torch.randn(6, 8, 3))
    m.eval()
    x = torch.randn(9, 2, 3)
    out, h = m(x)
    state, steps = None, []
    for t in range(9):
        y, state = m.step(x[t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps), out)
    for a, b in zip(_states(state.hx), _states(h)):
        torch.testing.assert_close(a, b)
    assert state.step == 9


def test_streaming_batch_first_and_errors():
    m = normrnn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    out, _ = m(x)
    y0, s = m.step(x[:, 0])
    torch.testing.assert_close(y0, out[:, 0])
    with pytest.raises(ValueError, match="unidirectional"):
        normrnn.LSTM(3, 4, bidirectional=True).step(x[:, 0])
    with pytest.raises(ValueError, match=r"\(N, H_in\)"):
        m.step(x)
    with pytest.raises(TypeError, match="StreamState"):
        m.step(x[:, 0], (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_cell_equals_layer_step_by_step():
    """The cell module and the layer share the step math: a layer of one cell, run per step, agrees."""
    torch.manual_seed(5)
    layer = normrnn.LSTM(3, 4, norm="layer", norm_terms="joint")
    randomize_norms(layer)
    cell = normrnn.LSTMCell(3, 4, norm="layer", norm_terms="joint")
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    x = torch.randn(5, 2, 3)
    out, _ = layer(x)
    h = c = torch.zeros(2, 4)
    for t in range(5):
        h, c = cell(x[t], (h, c), step=t)
        torch.testing.assert_close(h, out[t])
