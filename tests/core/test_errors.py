"""Bad input gets one clear ValueError/TypeError at the module edge that says what is accepted."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import normrnn


@pytest.fixture
def lstm():
    return normrnn.LSTM(3, 4, 2)


def test_wrong_ndim(lstm):
    with pytest.raises(ValueError, match="3-D .* or 2-D"):
        lstm(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match="3-D"):
        lstm(torch.randn(3))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match="5 features .* input_size=3"):
        lstm(torch.randn(4, 2, 5))


@pytest.mark.parametrize("lengths,match", [
    ([5, 9], "exceeds the input's 6 time steps"),
    ([0, 3], "at least 1"),
    ([-1, 3], "at least 1"),
    ([3, 3, 3], r"shape \(2,\)"),
    (torch.tensor([[3, 3]]), r"shape \(2,\)"),
    (torch.tensor([2.0, 3.0]), "integers"),
])
def test_bad_lengths(lstm, lengths, match):
    with pytest.raises(ValueError, match=match):
        lstm(torch.randn(6, 2, 3), lengths=lengths)


def test_lengths_on_wrong_device(lstm):
    with pytest.raises(ValueError, match="on the CPU or on the input's device"):
        lstm(torch.randn(6, 2, 3), lengths=torch.tensor([3, 4], device="meta"))


def test_lengths_with_packed_or_unbatched(lstm):
    packed = pack_padded_sequence(torch.randn(4, 2, 3), [4, 2])
    with pytest.raises(ValueError, match="PackedSequence"):
        lstm(packed, lengths=[4, 2])
    with pytest.raises(ValueError, match="batched"):
        lstm(torch.randn(4, 3), lengths=[4])


def test_hx_wrong_shape(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        lstm(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"c_0 must have shape"):
        lstm(x, (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"tuple \(h_0, c_0\)"):
        lstm(x, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="one tensor h_0"):
        normrnn.GRU(3, 4)(x, (torch.zeros(1, 2, 4),))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        normrnn.GRU(3, 4, bidirectional=True)(x, torch.zeros(1, 2, 4))


def test_unknown_options():
    with pytest.raises(ValueError, match="unknown norm 'group'.*'layer', 'rms', 'batch', 'none'"):
        normrnn.LSTM(3, 4, norm="group")
    with pytest.raises(ValueError, match="norm_terms"):
        normrnn.GRU(3, 4, norm_terms="both")
    with pytest.raises(ValueError, match="nonlinearity"):
        normrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        normrnn.LSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="zoneout"):
        normrnn.LSTM(3, 4, zoneout=-0.1)
    with pytest.raises(ValueError, match="hidden_size"):
        normrnn.LSTM(3, 0)
    with pytest.raises(ValueError, match="max_steps"):
        normrnn.LSTM(3, 4, norm="batch", max_steps=0)
    with pytest.raises(TypeError):
        normrnn.GRU(3, 4, norm_cell=False)  # an LSTM-only option


def test_batch_norm_training_with_batch_one():
    m = normrnn.LSTM(3, 4, norm="batch")
    with pytest.raises(ValueError, match="more than one sequence"):
        m(torch.randn(5, 1, 3))
    with pytest.raises(ValueError, match="more than one sequence"):
        m(torch.randn(5, 3))  # unbatched is a batch of one
    with pytest.raises(ValueError, match="more than one sequence"):
        normrnn.LSTMCell(3, 4, norm="batch")(torch.randn(1, 3))
    m.eval()
    assert torch.isfinite(m(torch.randn(5, 1, 3))[0]).all()


def test_wrong_dtype_and_type(lstm):
    with pytest.raises(TypeError, match="float64 but .*float32"):
        lstm(torch.randn(4, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        lstm(torch.ones(4, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor or a PackedSequence"):
        lstm([[1.0, 2.0, 3.0]])


def test_empty_input(lstm):
    with pytest.raises(ValueError, match="at least one step"):
        lstm(torch.randn(0, 2, 3))


def test_cell_errors():
    cell = normrnn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match="4 features"):
        cell(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="step"):
        cell(torch.randn(2, 3), step=-1)
    with pytest.raises(ValueError, match="tuple"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
