"""Half precision: bf16 and fp16 parameters, and ``torch.autocast``, with ``nn.LSTM``'s semantics. The outputs
and final states come in the low dtype; inside, the layers compute in float32 (norm statistics, the cell
state, the time loop), so they agree with the float32 model on the same rounded weights to the last rounding of
the output, and their gradients to bf16's resolution."""
import copy

import pytest
import torch

import normrnn
from normrnn import fused
from rnn_helpers import make, randomize_norms

BF16_EPS = 2.0 ** -8  # bfloat16's unit roundoff (8 bits of significand)
FP16_EPS = 2.0 ** -11
CASES = [(kind, norm) for kind in ["LSTM", "GRU", "RNN"] for norm in ["layer", "rms", "batch", "none"]]


def _model(kind, norm, **kw):
    torch.manual_seed(0)
    m = make(kind, 8, 16, 2, norm=norm, bidirectional=True, **kw)
    randomize_norms(m)
    if norm == "batch":
        m(torch.randn(10, 6, 8))
    return m


def _run(m, x, lengths):
    out, state = m(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = out.float().pow(2).sum() + sum(s.float().sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [out, *states], grads


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("dtype,eps", [(torch.bfloat16, BF16_EPS), (torch.float16, FP16_EPS)], ids=str)
@pytest.mark.parametrize("kind,norm", CASES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_half_parameters_match_the_float32_model(kind, norm, dtype, eps, training):
    """``.to(bf16/fp16)``: outputs, states and gradients in that dtype; outputs equal the float32 model with the
    same (rounded) weights and input to within the final rounding (2 units of roundoff in norm), gradients to a
    few units of roundoff (they are rounded once more, through the loss)."""
    low = _model(kind, norm).to(dtype).train(training)
    high = copy.deepcopy(low).float()
    x = torch.randn(9, 5, 8).to(dtype)
    lengths = torch.tensor([9, 7, 9, 3, 1])
    outs_l, grads_l = _run(low, x.clone().requires_grad_(), lengths)
    outs_h, grads_h = _run(high, x.float().requires_grad_(), lengths)
    assert all(t.dtype == dtype for t in outs_l + list(grads_l))
    for a, b in zip(outs_l, outs_h):
        assert _rel(a, b) <= 2 * eps, _rel(a, b)
    for a, b in zip(grads_l, grads_h):
        assert _rel(a, b) <= 4 * eps, _rel(a, b)
    for a, b in zip(low.buffers(), high.buffers()):  # batch norm's running statistics, rounded once
        if a.is_floating_point():
            assert _rel(a, b) <= 2 * eps


@pytest.mark.parametrize("kind,norm", CASES, ids=str)
def test_autocast_bf16_like_nn_lstm(kind, norm):
    """Under ``torch.autocast("cpu", bfloat16)`` a float32 model gives bf16 outputs and states, as ``nn.LSTM``
    does, and float32 gradients for its float32 parameters; within bf16's resolution of the float32 model (the
    GEMMs' operands are rounded to bf16, the rest runs in float32)."""
    m = _model(kind, norm)
    x = torch.randn(9, 5, 8)
    lengths = torch.tensor([9, 7, 9, 3, 1])
    ref_m = copy.deepcopy(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs, grads = _run(m, x.clone().requires_grad_(), lengths)
    outs_f, grads_f = _run(ref_m, x.clone().requires_grad_(), lengths)
    assert all(t.dtype == torch.bfloat16 for t in outs)
    assert all(g.dtype == torch.float32 for g in grads)
    for a, b in zip(outs, outs_f):
        assert _rel(a, b) <= 16 * BF16_EPS, _rel(a, b)
    for a, b in zip(grads, grads_f):
        assert _rel(a, b) <= 32 * BF16_EPS, _rel(a, b)


def test_autocast_matches_nn_lstm_dtypes():
    """Against nn.LSTM itself (norm="none", same weights): the same output and state dtypes under autocast."""
    ours = normrnn.LSTM(8, 16, 2, norm="none")
    theirs = torch.nn.LSTM(8, 16, 2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(9, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, (ha, ca) = ours(x)
        b, (hb, cb) = theirs(x)
    assert (a.dtype, ha.dtype, ca.dtype) == (b.dtype, hb.dtype, cb.dtype)
    assert _rel(a, b) <= 16 * BF16_EPS


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_half_streaming_and_nan(kind):
    """``step`` in bf16 equals the bf16 forward; a NaN still propagates (nothing hides it in the casts)."""
    m = make(kind, 8, 16, 2, norm="layer").to(torch.bfloat16).eval()
    x = torch.randn(6, 3, 8).to(torch.bfloat16)
    x[2, 1, 0] = float("nan")
    with torch.no_grad():
        want, _ = m(x)
        state, outs = None, []
        for t in range(6):
            y, state = m.step(x[t], state)
            outs.append(y)
    got = torch.stack(outs)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.isnan(), want.isnan()) and got[2:, 1].isnan().all()
    ok = ~want.isnan()
    assert _rel(got[ok], want[ok]) <= 2 * BF16_EPS
