"""The residual stack is pre-norm: layer k >= 1 outputs x + f(norm(x)), with f the layer's own recurrence and
norm its input norm (LayerNorm, or RMSNorm for norm="rms"), gains and biases away from their initial values so
that x + f(norm(x)), x + f(x) and f(norm(x)) all differ. Every backend, both directions, padding."""
import pytest
import torch

from normrnn import fused
from rnn_helpers import make, randomize_norms

BACKENDS = [pytest.param("reference", None, id="reference"), pytest.param("fused", "torch", id="fused-torch"),
            pytest.param("fused", "native", id="fused-native", marks=pytest.mark.native)]


def _layer(m, k, kind, norm, bidirectional):
    """Layer k of m as a one-layer module of its own (the same parameters, renamed to layer 0)."""
    width = m.input_size if k == 0 else m.hidden_size * (2 if bidirectional else 1)
    single = make(kind, width, m.hidden_size, 1, norm=norm, bidirectional=bidirectional, backend="reference",
                  dtype=torch.float64)
    single.load_state_dict({name.replace(f"_l{k}", "_l0"): v for name, v in m.state_dict().items()
                            if f"_l{k}" in name and not name.startswith("norm_input")})
    return single.train(m.training)


@pytest.mark.parametrize("backend,engine", BACKENDS)
@pytest.mark.parametrize("kind,norm", [("GRU", "layer"), ("LSTM", "rms"), ("RNN", "batch")])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_residual_layer_is_x_plus_f_of_normed_x(backend, engine, kind, norm, bidirectional):
    torch.manual_seed(6)
    m = make(kind, 3, 4, 3, norm=norm, residual=True, bidirectional=bidirectional, backend=backend,
             dtype=torch.float64)
    assert not hasattr(m, "norm_input_l0") and hasattr(m, "norm_input_l1") and hasattr(m, "norm_input_l2")
    randomize_norms(m)
    with torch.no_grad():
        for k in (1, 2):
            m.get_submodule(f"norm_input_l{k}").weight.uniform_(0.5, 2.0)
    m.eval()  # (batch norm: running statistics, so a layer on its own normalizes as inside the stack)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    with fused.force_engine(engine):
        out, _ = m(x, lengths=lengths)
    y, _ = _layer(m, 0, kind, norm, bidirectional)(x, lengths=lengths)
    mask = (torch.arange(6).unsqueeze(1) < lengths).unsqueeze(-1)
    for k in (1, 2):
        f = _layer(m, k, kind, norm, bidirectional)
        pre = m.get_submodule(f"norm_input_l{k}")
        expected = torch.where(mask, y + f(pre(y), lengths=lengths)[0], 0)
        wrong = torch.where(mask, y + f(y, lengths=lengths)[0], 0)  # the skip without the input norm
        assert (expected - wrong).abs().max() > 1e-2  # the test can tell them apart
        y = expected
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-12)
