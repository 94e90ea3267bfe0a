"""NaN and inf in valid positions propagate through every engine and entry point as they do in ``nn.LSTM`` and
the reference loop: a kernel that turns them into plausible numbers hides divergence from the user, from anomaly
detection and from ``torch.amp.GradScaler``. (Padded positions are another matter: they must never leak.)"""
import copy

import pytest
import torch

import normrnn
from normrnn import fused
from rnn_helpers import make

from native_support import ENGINES  # noqa: E402  (native always listed: skipped or failed, never dropped)
NN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


def _pair(kind, norm, terms, training, bidirectional=False):
    """A float32 layer on the reference loop and its fused twin, in training or eval (batch norm with trained
    running statistics). ``kind`` "RNN-relu": the Elman RNN with relu."""
    torch.manual_seed(0)
    kind, extra = ("RNN", dict(nonlinearity="relu")) if kind == "RNN-relu" else (kind, {})
    ref = make(kind, 4, 6, 2, norm=norm, norm_terms=terms, backend="reference", bidirectional=bidirectional,
               **extra)
    if norm == "batch":
        ref(torch.randn(12, 5, 4))
    fast = copy.deepcopy(ref)
    fast.backend = "fused"
    ref.train(training), fast.train(training)
    return ref, fast


def _bad_input(value):
    x = torch.randn(12, 3, 4)
    x[3, 1, 2] = value
    return x.requires_grad_()


def _masks(m, x, grad: bool):
    if grad:
        out, state = m(x)
        loss = out.sum() + sum(s.sum() for s in (state if isinstance(state, tuple) else (state,)))
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
        return [out.isnan(), out.isinf()] + [g.isfinite() for g in grads]
    with torch.no_grad():
        out, _ = m(x)
    return [out.isnan(), out.isinf()]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN-relu"])
@pytest.mark.parametrize("norm", ["none", "layer", "rms", "batch"])
@pytest.mark.parametrize("terms", ["separate", "joint"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_input_propagates_like_the_reference(engine, kind, norm, terms, value):
    """Training (forward and backward), eval with a graph, and eval inference: the same elements are NaN, inf or
    non-finite as in the reference loop, output and every gradient, both directions."""
    for training, grad in [(True, True), (False, True), (False, False)]:
        ref, fast = _pair(kind, norm, terms, training, bidirectional=True)
        x = _bad_input(value)
        expected = _masks(ref, x, grad)
        with fused.force_engine(engine):
            got = _masks(fast, x, grad)
        if value != value:  # (an infinite input may saturate the gates into finite outputs, as in nn.LSTM)
            assert expected[0][3:, 1].all(), "the reference itself must show the NaN"
        for k, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), (training, grad, k, a.float().mean().item(), b.float().mean().item())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_auto_backend_matches_nn_on_nonfinite_input(kind, value):
    """norm="none" on the default backend against torch.nn itself: the same outputs are NaN or infinite."""
    torch.manual_seed(0)
    ours = make(kind, 4, 6, 2, norm="none")
    theirs = NN[kind](4, 6, 2)
    theirs.load_state_dict(ours.state_dict())
    x = _bad_input(value).detach()
    for training in (True, False):
        ours.train(training), theirs.train(training)
        a, b = ours(x)[0], theirs(x)[0]
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        assert a[3:, 1].isnan().all() if value != value else True
        assert torch.isfinite(a[:, 0]).all() and torch.isfinite(a[:, 2]).all()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN-relu"])
@pytest.mark.parametrize("norm", ["none", "layer", "rms", "batch"])
@pytest.mark.parametrize("terms", ["separate", "joint"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_streaming_step_propagates_nonfinite(kind, norm, terms, value):
    """``layer.step`` (the one-call kernel of each cell, where it runs) carries a NaN in its state from the step
    it enters, for that sequence only (eval); NaN and inf land where the reference loop has them."""
    ref, fast = _pair(kind, norm, terms, training=False)
    fast.backend = "auto"
    x = _bad_input(value).detach()
    with torch.no_grad():
        expected, h_ref = ref(x)
        state, outs = None, []
        for t in range(x.shape[0]):
            y, state = fast.step(x[t], state)
            outs.append(y)
    got = torch.stack(outs)
    if value != value:
        assert got[3:, 1].isnan().all()
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
    for a, b in zip(state.hx if kind == "LSTM" else (state.hx,), h_ref if kind == "LSTM" else (h_ref,)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_a_sequence_that_diverged_before_its_end_leaves_zero_padding(engine, kind, norm):
    """A NaN at a valid step of a sequence that then ends: its outputs are NaN up to its end and exactly zero past
    it (as nn.LSTM's packed output pads), its held NaN state reaches no other sequence's statistics, and the
    gradients' finite pattern is the reference loop's. (A 0/1 mask multiplied into the held NaN state gave NaN
    padding in the PyTorch engine.)"""
    ref, fast = _pair(kind, norm, "separate", True)
    x = torch.randn(12, 3, 4)
    x[2, 1, 0] = float("nan")
    lengths = torch.tensor([12, 5, 9])
    for m in (ref, fast):
        with fused.force_engine(engine):
            xx = x.clone().requires_grad_()
            out, _ = m(xx, lengths=lengths)
            assert out[5:, 1].eq(0).all(), f"{m.active_backend()}: padding of the diverged sequence is not zero"
            if norm != "batch":  # (batch norm's step-2 statistics include the NaN row: every row is NaN there)
                assert out[:, [0, 2]].isfinite().all()
            (g,) = torch.autograd.grad(out.nan_to_num().sum(), [xx])
            if m is ref:
                expected_out, expected_g = out.isnan(), g.isfinite()
            else:
                assert torch.equal(out.isnan(), expected_out)
                assert torch.equal(g.isfinite(), expected_g)
