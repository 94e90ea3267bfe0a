"""state_dict round trips, convert(), and the regularizers (zoneout, DropConnect, dropout, residual)."""
import io

import pytest
import torch
from torch import nn

import normrnn
from rnn_helpers import make, randomize_norms


@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_state_dict_round_trip(norm):
    torch.manual_seed(0)
    a = normrnn.LSTM(3, 4, 2, bidirectional=True, norm=norm, residual=True)
    randomize_norms(a)
    if norm == "batch":
        a(torch.randn(5, 3, 3))  # running statistics change
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = normrnn.LSTM(3, 4, 2, bidirectional=True, norm=norm, residual=True)
    b.load_state_dict(torch.load(buf))
    a.eval(), b.eval()
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.enc = nn.LSTM(4, 5, 2, bidirectional=True, batch_first=True)
        self.dec = nn.Sequential(nn.GRU(10, 3), nn.Identity())
        self.rnn = nn.RNN(3, 3, nonlinearity="relu")

    def forward(self, ids):
        y, _ = self.enc(self.emb(ids))
        y, _ = self.dec[0](y.transpose(0, 1))
        return self.rnn(y)[0]


def test_convert_keeps_outputs_for_norm_none():
    torch.manual_seed(1)
    model = Tagger().eval()
    ids = torch.randint(0, 10, (2, 7))
    before = model(ids)
    converted = normrnn.convert(model, norm="none")
    assert isinstance(converted.enc, normrnn.LSTM) and isinstance(converted.dec[0], normrnn.GRU)
    assert isinstance(converted.rnn, normrnn.RNN) and converted.rnn.nonlinearity == "relu"
    assert not converted.enc.training  # train/eval mode kept
    torch.testing.assert_close(converted(ids), before, atol=1e-5, rtol=0)


def test_convert_with_norm_keeps_weights():
    torch.manual_seed(2)
    lstm = nn.LSTM(3, 4, 2)
    new = normrnn.convert(lstm, norm="layer", norm_terms="joint")
    assert isinstance(new, normrnn.LSTM) and new.norm == "layer" and new.options.norm_terms == "joint"
    assert torch.equal(new.weight_hh_l1, lstm.weight_hh_l1)
    projected = nn.LSTM(3, 4, 2, proj_size=2)
    same = normrnn.convert(projected, norm="none")
    assert same.proj_size == 2 and torch.equal(same.weight_hr_l1, projected.weight_hr_l1)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(same(x)[0], projected(x)[0], atol=1e-5, rtol=0)


def test_zoneout_train_and_eval():
    torch.manual_seed(3)
    m = normrnn.GRU(3, 4, zoneout=0.5, norm="layer")
    ref = normrnn.GRU(3, 4, norm="layer")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(6, 2, 3)
    m.train()
    out, _ = m(x)
    # in training, some units keep their previous value exactly
    assert (out[1:] == out[:-1]).any()
    m.eval(), ref.eval()
    # at inference zoneout uses the expectation: h_t = 0.5 h_{t-1} + 0.5 f(x_t, h_{t-1})
    h = torch.zeros(1, 2, 4)
    out_eval, _ = m(x)
    for t in range(6):
        step, _ = ref(x[t:t + 1], h)
        h = (0.5 * h + 0.5 * step)
        torch.testing.assert_close(out_eval[t], h[0])


def test_dropconnect_only_in_training():
    torch.manual_seed(4)
    m = normrnn.LSTM(3, 4, dropconnect=0.5, norm="layer")
    ref = normrnn.LSTM(3, 4, norm="layer")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    assert not torch.allclose(m.train()(x)[0], ref.train()(x)[0])
    torch.testing.assert_close(m.eval()(x)[0], ref.eval()(x)[0])
    # the recurrent weights are dropped: with p -> all kept fraction, W_hh gets gradient only where kept
    m.train()
    m(x)[0].sum().backward()
    assert (m.weight_hh_l0.grad == 0).float().mean() > 0.2


def test_dropout_between_layers_matches_nn_in_eval():
    torch.manual_seed(5)
    ref = nn.LSTM(3, 4, 3, dropout=0.5).eval()
    ours = normrnn.LSTM(3, 4, 3, dropout=0.5, norm="none").eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=0)
    ours.train()
    a, b = ours(x)[0], ours(x)[0]
    assert not torch.equal(a, b)


def test_residual_stack_is_pre_norm_skip():
    """Layer k >= 1 computes x + f(LN(x)): with f's output weights zeroed the skip path passes x through."""
    torch.manual_seed(6)
    m = normrnn.GRU(3, 4, 2, norm="layer", residual=True)
    assert hasattr(m, "norm_input_l1") and not hasattr(m, "norm_input_l0")
    x = torch.randn(5, 2, 3)
    first = normrnn.GRU(3, 4, 1, norm="layer")
    first.load_state_dict({k: v for k, v in m.state_dict().items() if "_l0" in k})
    y0, _ = first(x)
    with torch.no_grad():  # make layer 1 output exactly zero: z = 1 keeps h = 0 forever
        m.weight_ih_l1.zero_(), m.weight_hh_l1.zero_(), m.bias_hh_l1.zero_()
        m.bias_ih_l1.zero_()
        m.bias_ih_l1[4:8] = 1e4
    out, _ = m(x)
    torch.testing.assert_close(out, y0)
