"""Model shapes, and that the classifier's "last valid state" is the state at each sequence's last real step."""
from __future__ import annotations

import pytest
import torch

from normrnn.train.models import CharLM, ConvConfig, ConvRNN, RNNConfig, SeqClassifier, detach_state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_charlm_shapes_and_carried_state(cell, norm):
    torch.manual_seed(0)
    model = CharLM(20, RNNConfig(cell=cell, norm=norm, layers=2, hidden=16))
    x = torch.randint(0, 20, (4, 7))
    logits, state = model(x)
    assert logits.shape == (4, 7, 20)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2, 4, 16)
    # The carried state continues the text: two chunks with the state passed equal one long chunk (eval mode,
    # layer/none norm; batch norm's per-step statistics restart with each chunk by design).
    if norm != "batch":
        model.eval()
        full, _ = model(torch.cat([x, x], 1))
        first, st = model(x)
        second, _ = model(x, detach_state(st))
        torch.testing.assert_close(torch.cat([first, second], 1), full)


def test_charlm_rejects_bidirectional():
    with pytest.raises(ValueError, match="bidirectional"):
        CharLM(10, RNNConfig(bidirectional=True))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_shapes(cell, bidirectional):
    cfg = RNNConfig(cell=cell, hidden=8, layers=2, bidirectional=bidirectional)
    tokens = SeqClassifier(5, cfg, vocab_size=30)
    assert tokens(torch.randint(0, 30, (3, 9)), torch.tensor([9, 4, 1])).shape == (3, 5)
    feats = SeqClassifier(5, cfg, input_size=6, pool="mean")
    assert feats(torch.randn(3, 9, 6), torch.tensor([9, 4, 1])).shape == (3, 5)
    assert feats(torch.randn(3, 9, 6)).shape == (3, 5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_last_valid_state_is_the_last_real_step(cell):
    torch.manual_seed(0)
    model = SeqClassifier(3, RNNConfig(cell=cell, hidden=8, norm="layer"), input_size=4).eval()
    x = torch.randn(3, 10, 4)
    lengths = torch.tensor([10, 6, 2])
    feats = model.features(x, lengths)
    out, _ = model.rnn(x, lengths=lengths)
    expected = out[torch.arange(3), lengths - 1]  # the output at each sequence's last valid step
    torch.testing.assert_close(feats, expected)
    # ... and not the state at the padded end: changing the padding changes nothing.
    x2 = x.clone()
    x2[1, 6:] = 100.0
    x2[2, 2:] = -100.0
    torch.testing.assert_close(model.features(x2, lengths), feats)
    # Each sequence alone, unpadded, gives the same representation.
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(model.features(x[i:i + 1, :n]), feats[i:i + 1])


def test_bidirectional_last_state_and_mean_pool():
    torch.manual_seed(0)
    cfg = RNNConfig(cell="lstm", hidden=5, bidirectional=True)
    model = SeqClassifier(2, cfg, input_size=3).eval()
    x, lengths = torch.randn(2, 8, 3), torch.tensor([8, 3])
    feats = model.features(x, lengths)
    alone = model.features(x[1:, :3])
    torch.testing.assert_close(feats[1:], alone)
    mean = SeqClassifier(2, cfg, input_size=3, pool="mean").eval()
    mean.load_state_dict(model.state_dict())
    out, _ = mean.rnn(x, lengths=lengths)
    torch.testing.assert_close(mean.features(x, lengths)[1], out[1, :3].mean(0))


@pytest.mark.parametrize("scan", ["columns", "rows"])
def test_conv_rnn_shapes(scan):
    model = ConvRNN(10, RNNConfig(hidden=12, norm="batch"), ConvConfig(channels=(4, 8), scan=scan))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert model.rnn.input_size == 8 * 7


def test_bad_model_options():
    with pytest.raises(ValueError, match="cell"):
        RNNConfig(cell="transformer")
    with pytest.raises(ValueError, match="exactly one"):
        SeqClassifier(2, RNNConfig(), vocab_size=3, input_size=4)
    with pytest.raises(ValueError, match="pool"):
        SeqClassifier(2, RNNConfig(), input_size=4, pool="max")
