"""What each normalization promises: per-sample LN/RMS, masked per-step batch statistics, train == eval for LN."""
import math

import pytest
import torch
import torch.nn.functional as F

import normrnn
from normrnn.moments import local_moments
from normrnn.norms import RecurrentBatchNorm
from rnn_helpers import make, randomize_norms


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_per_sample_norm_ignores_other_samples(norm, kind):
    torch.manual_seed(0)
    m = make(kind, 3, 4, 2, norm=norm)
    x = torch.randn(6, 4, 3)
    out, _ = m(x)
    x2 = x.clone()
    x2[:, 1:] = torch.randn(6, 3, 3) * 10  # change every other sample
    out2, _ = m(x2)
    torch.testing.assert_close(out[:, 0], out2[:, 0])


@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
def test_train_equals_eval_for_per_sample_norms(norm):
    torch.manual_seed(1)
    m = normrnn.LSTM(3, 4, 2, norm=norm)
    x = torch.randn(5, 3, 3)
    a = m.train()(x)[0]
    b = m.eval()(x)[0]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_layer_norm_lstm_matches_ba_et_al_equations(backend):
    """An independent, spelled-out LN-LSTM (Ba et al. 2016, eqs. 20-22) against normrnn's, on each backend (the
    fused one is otherwise only compared with the reference, so a slip shared by both would pass)."""
    torch.manual_seed(2)
    m = normrnn.LSTM(3, 4, norm="layer", backend=backend)
    randomize_norms(m)
    x = torch.randn(6, 2, 3)
    h = c = torch.zeros(2, 4)
    g_x, g_h = m.norm_ih_l0.weight, m.norm_hh_l0.weight
    g_c, b_c = m.norm_cell_l0.weight, m.norm_cell_l0.bias
    b = m.bias_ih_l0 + m.bias_hh_l0

    def ln(v, g, beta=None):
        mu = v.mean(-1, keepdim=True)
        sigma = (v - mu).pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
        return g * (v - mu) / sigma + (0 if beta is None else beta)

    expected = []
    for t in range(6):
        pre = ln(h @ m.weight_hh_l0.T, g_h) + ln(x[t] @ m.weight_ih_l0.T, g_x) + b
        i, f, g, o = pre.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, g_c, b_c))
        expected.append(h)
    torch.testing.assert_close(m(x)[0], torch.stack(expected))


def test_rms_norm_formula():
    torch.manual_seed(3)
    n = normrnn.RMSNorm(6)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * n.weight
    torch.testing.assert_close(n(x), expected)


def test_masked_batch_statistics_equal_unpadded_statistics():
    torch.manual_seed(4)
    bn = RecurrentBatchNorm(5, max_steps=10, gamma_init=1.0, bias=False)
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([4, 2, 3, 1, 4, 2])
    mask = torch.arange(4).unsqueeze(1) < lengths
    x_padded = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e3))  # huge pads must not matter
    y = bn(x_padded, 0, mask)
    for t in range(4):
        valid = x[t][mask[t]]
        if valid.shape[0] < 2:
            continue
        expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(y[t][mask[t]], expected)
        # running statistics of step t moved towards the unbiased statistics of the valid rows only
        torch.testing.assert_close(bn.running_mean[t], 0.1 * valid.mean(0))
        torch.testing.assert_close(bn.running_var[t], 0.9 + 0.1 * valid.var(0, unbiased=True))


def test_step_with_one_running_sequence_uses_running_statistics():
    bn = RecurrentBatchNorm(3, max_steps=5, gamma_init=1.0, bias=False)
    with torch.no_grad():
        bn.running_mean[2] = torch.tensor([1.0, 2.0, 3.0])
        bn.running_var[2] = torch.tensor([4.0, 4.0, 4.0])
    x = torch.randn(3, 4, 3)
    mask = torch.tensor([[True] * 4, [True] * 4, [True, False, False, False]])
    y = bn(x, 0, mask)
    assert torch.isfinite(y).all()
    expected = (x[2, 0] - bn.running_mean[2]) / torch.sqrt(bn.running_var[2] + 1e-5)
    torch.testing.assert_close(y[2, 0], expected)
    torch.testing.assert_close(bn.running_mean[2], torch.tensor([1.0, 2.0, 3.0]))  # not updated from one sample


def test_steps_beyond_max_steps_use_the_last_statistics():
    torch.manual_seed(5)
    bn = RecurrentBatchNorm(2, max_steps=3, gamma_init=1.0, bias=False)
    bn(torch.randn(3, 8, 2))  # train on length 3
    bn.eval()
    x = torch.randn(6, 4, 2)
    y = bn(x)
    for t in range(6):
        k = min(t, 2)
        torch.testing.assert_close(y[t], (x[t] - bn.running_mean[k]) / torch.sqrt(bn.running_var[k] + 1e-5))


def test_eval_reuses_longest_trained_step_not_untrained_rows():
    """Trained on length 4 with room for 10 steps: step 7 in eval reads step 3's statistics, not row 7's init."""
    torch.manual_seed(6)
    bn = RecurrentBatchNorm(2, max_steps=10, gamma_init=1.0, bias=False)
    bn(torch.randn(4, 8, 2) * 3 + 5)
    assert int(bn.steps_tracked) == 4
    bn.eval()
    x = torch.randn(8, 2, 2)
    y = bn(x)
    torch.testing.assert_close(y[7], (x[7] - bn.running_mean[3]) / torch.sqrt(bn.running_var[3] + 1e-5))


def test_batch_norm_layer_padding_does_not_change_valid_outputs():
    """In training, the values in padded positions must not leak into any statistic."""
    torch.manual_seed(7)
    m = normrnn.LSTM(3, 4, 2, bidirectional=True, norm="batch")
    randomize_norms(m)
    lengths = torch.tensor([5, 3, 2, 5])
    x = torch.randn(5, 4, 3)
    pads = torch.arange(5).unsqueeze(1) >= lengths
    x2 = torch.where(pads.unsqueeze(-1), torch.randn_like(x) * 50, x)
    out1, _ = m(x, lengths=lengths)
    out2, _ = m(x2, lengths=lengths)
    torch.testing.assert_close(out1, out2)


def test_gamma_init_defaults():
    assert torch.all(normrnn.LSTM(2, 3, norm="batch").norm_hh_l0.weight == 0.1)
    assert torch.all(normrnn.LSTM(2, 3, norm="layer").norm_hh_l0.weight == 1.0)
    assert torch.all(normrnn.LSTM(2, 3, norm="rms", gamma_init=0.5).norm_hh_l0.weight == 0.5)
    assert normrnn.LSTM(2, 3, norm="rms").norm_cell_l0.bias is None


def test_batch_norm_first_call_without_state_is_finite():
    """The h-term of step 0 is W_hh·0 = 0, whose batch variance is 0: must give 0, not NaN."""
    m = normrnn.LSTM(3, 4, norm="batch")
    out, (h, c) = m(torch.randn(4, 5, 3))
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_carry_normalized_cell():
    torch.manual_seed(8)
    m = normrnn.LSTM(3, 4, norm="layer", carry_normalized_cell=True)
    out, (h, c) = m(torch.randn(5, 2, 3))
    # the carried cell is normalized: zero mean and unit variance per sample (gain 1, bias 0 at init)
    torch.testing.assert_close(c.mean(-1), torch.zeros(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.var(-1, unbiased=False), torch.ones(1, 2), atol=1e-3, rtol=0)
    m2 = normrnn.LSTM(3, 4, norm="layer", norm_cell=False)
    assert not hasattr(m2, "norm_cell_l0")


def test_rms_norm_module_gradcheck():
    """RMSNorm's fused kernel (used for the input term of every step at once) against autograd's finite
    differences, through the input and the gain."""
    from torch.autograd import gradcheck
    from torch.func import functional_call

    torch.manual_seed(9)
    n = normrnn.RMSNorm(6).double()
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.empty(6, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
    assert gradcheck(lambda x, w: functional_call(n, {"weight": w}, (x,)), (x, w))
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(functional_call(n, {"weight": w}, (x,)), expected)


def test_masked_moments_ignore_padding_values():
    """The masked per-step moments (the specification the fused engines' statistics are tested against) select the
    valid rows: NaN or inf in padded rows changes neither count, mean nor variance."""
    torch.manual_seed(3)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 0], [0, 1, 0, 1, 1]], dtype=torch.bool)
    clean = local_moments(x, mask)
    for poison in (float("nan"), float("inf")):
        dirty = x.clone()
        dirty[~mask] = poison
        for a, b in zip(local_moments(dirty, mask), clean):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
