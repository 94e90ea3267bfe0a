"""GRU.step and RNN.step on the one-call streaming kernel (csrc/stream.h): every step of a stack in one native call,
equal to the full-sequence forward and to the reference loop, for every norm, both term placements, both Elman
nonlinearities; the plan follows the layer's changes; the kernel declines what it cannot take."""
import copy

import pytest
import torch

import normrnn
import normrnn.layers
from rnn_helpers import change_the_layer, make, randomize_norms, stream

needs_native = pytest.mark.native

VARIANTS = [("GRU", {}), ("RNN", {}), ("RNN", dict(nonlinearity="relu"))]


def _trained(kind, extra, norm, terms, layers, input_size=4, hidden=6, dtype=torch.float64, max_steps=6,
             bias=True):
    """A layer (reference backend) with its norms moved off their initial values; batch norm with running
    statistics of 4 trained steps (so steps 4.. reuse step 3's, and steps past max_steps too)."""
    torch.manual_seed(0)
    m = make(kind, input_size, hidden, layers, norm=norm, norm_terms=terms, backend="reference", dtype=dtype,
             max_steps=max_steps, bias=bias, **extra)
    randomize_norms(m)
    if norm == "batch":
        for _ in range(2):
            m(torch.randn(4, 5, input_size, dtype=dtype))
    return m.eval()


@needs_native
@pytest.mark.parametrize("kind,extra", VARIANTS, ids=str)
@pytest.mark.parametrize("norm", ["none", "layer", "rms", "batch"])
@pytest.mark.parametrize("terms", ["separate", "joint"])
@pytest.mark.parametrize("layers,batch", [(1, 1), (2, 3)])
def test_streaming_equals_forward_and_reference(kind, extra, norm, terms, layers, batch, stream_calls):
    """float64, 9 steps (batch norm: past the 4 trained steps and past max_steps=6), from zeros and from a given
    state: the one-call kernel against the fused forward over the whole sequence and against the reference loop."""
    ref = _trained(kind, extra, norm, terms, layers)
    fast = copy.deepcopy(ref)
    fast.backend = "auto"
    x = torch.randn(9, batch, 4, dtype=torch.float64)
    h0 = torch.randn(layers, batch, 6, dtype=torch.float64)
    for start in (None, h0):
        with torch.no_grad():
            expected, h_ref = ref(x, start)
            whole, h_whole = fast(x, start)
            stream_calls.clear()
            got, state = stream(fast, x, None if start is None else normrnn.StreamState(start, 0))
        assert stream_calls == list(range(9))  # every step in one native call, with its step index
        assert state.step == 9
        for a, b in ((got, expected), (state.hx, h_ref), (got, whole), (state.hx, h_whole)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_native
@pytest.mark.parametrize("kind,extra", VARIANTS, ids=str)
@pytest.mark.parametrize("norm,terms", [("layer", "separate"), ("batch", "joint"), ("rms", "joint"),
                                        ("none", "separate")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 20])
def test_streaming_products_at_sizes_off_the_vector_width(kind, extra, norm, terms, dtype, batch, stream_calls):
    """Sizes that are not multiples of the kernel's vector width or its block of 8 weight rows (37 inputs, 21
    units: 63 or 21 rows), no bias, and batches on either side of the small-batch product (20 > 16 rows: at::mm).
    float32 against float64's result within float32 rounding."""
    ref = _trained(kind, extra, norm, terms, 2, input_size=37, hidden=21, bias=False)
    fast = copy.deepcopy(ref).to(dtype)
    fast.backend = "auto"
    x = torch.randn(7, batch, 37, dtype=torch.float64)
    with torch.no_grad():
        expected, h = ref(x)
        got, state = stream(fast, x.to(dtype))
    assert stream_calls == list(range(7))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.double(), expected, **tol)
    torch.testing.assert_close(state.hx.double(), h, **tol)


@needs_native
@pytest.mark.parametrize("kind,extra", VARIANTS, ids=str)
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_streaming_plan_follows_the_layer(kind, extra, norm, stream_calls):
    """The plan reads the layer's own tensors: in-place updates, a replaced parameter, batch norm's statistics
    growing to more steps, a cast, and train/eval switches are all seen."""
    m = _trained(kind, extra, norm, "separate", 2, dtype=torch.float32)
    m.backend = "auto"
    x = torch.randn(6, 2, 4)

    def check():
        xx = x.to(m.weight_hh_l0.dtype)
        with torch.no_grad():
            got, state = stream(m, xx)
            out, h = m(xx)
        torch.testing.assert_close(got, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.hx, h, rtol=1e-5, atol=1e-6)

    check()
    assert stream_calls == list(range(6))
    change_the_layer(m, check, 4, norm == "batch")
    x = x.double()
    assert len(stream_calls) == 6 * (5 if norm == "batch" else 4)
    # training mode: batch norm normalizes with the step's batch statistics, which the kernel does not compute
    # (the general path runs); layer norm is the same in both modes (the kernel runs)
    stream_calls.clear()
    m.train()
    with torch.no_grad():
        got, _ = stream(m, x)
        if norm == "layer":
            torch.testing.assert_close(got, m(x)[0])
    assert len(stream_calls) == (6 if norm == "layer" else 0)
    m.eval()
    with torch.no_grad():
        stream(m, x)
    assert len(stream_calls) == (12 if norm == "layer" else 6)


@needs_native
@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_streaming_steps_aside_when_it_cannot_apply(kind, stream_calls):
    """A graph to record (parameters or the state require grad), bad input or state, dropout in training and
    residual stacks take the general path: it agrees, records the graph and gives the layer's errors."""
    torch.manual_seed(1)
    m = make(kind, 3, 4, norm="layer").eval()
    x = torch.randn(4, 2, 3)
    got, _ = stream(m, x)  # grad mode on and parameters require grad: a graph
    got.sum().backward()
    assert m.weight_hh_l0.grad is not None and not stream_calls
    for p in m.parameters():
        p.requires_grad_(False)
    h0 = torch.zeros(1, 2, 4, requires_grad=True)
    y, _ = m.step(x[0], normrnn.StreamState(h0, 0))  # the state requires grad: a graph
    assert y.requires_grad and not stream_calls
    stream(m, x)  # nothing needs a gradient: the kernel runs with grad mode on
    assert stream_calls == [0, 1, 2, 3]
    stream_calls.clear()
    with torch.no_grad():
        with pytest.raises(ValueError):
            m.step(torch.randn(2, 5))  # wrong input size
        with pytest.raises(ValueError):
            m.step(torch.randn(2, 3), normrnn.StreamState(torch.zeros(1, 3, 4), 0))  # state of another batch
        with pytest.raises((TypeError, ValueError, RuntimeError)):
            m.step(torch.randn(2, 3, dtype=torch.float64))  # another dtype
        with pytest.raises(TypeError, match="StreamState"):
            m.step(torch.randn(2, 3), torch.zeros(1, 2, 4))
        drop = make(kind, 3, 4, 2, dropout=0.5).train()
        res = make(kind, 3, 4, 2, residual=True).eval()
        stream(drop, x)
        got, _ = stream(res, x)
        torch.testing.assert_close(got, res(x)[0])
    assert not stream_calls
    with torch.no_grad():
        stream(drop.eval(), x)
    assert len(stream_calls) == 4


@needs_native
@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_a_streamed_layer_copies_and_pickles(kind, stream_calls):
    """The cached plan (engine objects) is not part of the layer's state; a copy streams through its own."""
    import pickle

    m = make(kind, 3, 4, norm="rms").eval()
    x = torch.randn(3, 2, 3)
    with torch.no_grad():
        expected, _ = stream(m, x)
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            torch.testing.assert_close(stream(other, x)[0], expected)
            other.weight_ih_l0.add_(1.0)
            assert not torch.allclose(stream(other, x)[0], expected)
    assert len(stream_calls) == 5 * 3


@needs_native
def test_streaming_against_torch_nn_cells(stream_calls):
    """norm="none" streaming is nn.GRUCell / nn.RNNCell step by step (float64)."""
    torch.manual_seed(2)
    x = torch.randn(8, 3, 5, dtype=torch.float64)
    for kind, cell, extra in [("GRU", torch.nn.GRUCell, {}), ("RNN", torch.nn.RNNCell, {}),
                              ("RNN", torch.nn.RNNCell, dict(nonlinearity="relu"))]:
        ours = make(kind, 5, 7, norm="none", dtype=torch.float64, **extra).eval()
        theirs = cell(5, 7, dtype=torch.float64, **extra)
        theirs.load_state_dict({k[:-3]: v for k, v in ours.state_dict().items()})
        h, state = None, None
        with torch.no_grad():
            for t in range(8):
                h = theirs(x[t], h)
                y, state = ours.step(x[t], state)
                torch.testing.assert_close(y, h, rtol=1e-12, atol=1e-13)
    assert len(stream_calls) == 3 * 8

