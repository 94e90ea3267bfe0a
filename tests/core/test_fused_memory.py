"""The fused backward's memory-saving paths: gradients summed step by step and dW_hh reduced from a ring of a
few steps (several ring blocks need a long sequence), backward twice through one graph, what is saved, and the
pool that keeps the T-step buffers' memory from one call to the next."""
import copy

import pytest
import torch

from normrnn import fused
from rnn_helpers import initial_state, make, randomize_norms

from native_support import ENGINES, require_native

VARIANTS = [
    ("LSTM", "layer", "separate", {}),
    ("LSTM", "layer", "joint", {}),
    ("LSTM", "batch", "separate", {}),
    ("LSTM", "rms", "separate", dict(carry_normalized_cell=True)),
    ("LSTM", "none", "separate", {}),
    ("GRU", "layer", "separate", {}),
    ("GRU", "none", "separate", {}),
    ("RNN", "layer", "separate", {}),
    ("RNN", "batch", "joint", {}),
]


def _loss_and_inputs(m, x, hx, lengths, weights):
    hx = tuple(s.requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    out, h = m(x, hx, lengths=lengths)
    states = h if isinstance(h, tuple) else (h,)
    loss = (out * weights).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(states))
    return loss, [x] + list(hx if isinstance(hx, tuple) else (hx,)) + list(m.parameters())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,norm,terms,extra", VARIANTS, ids=str)
def test_long_sequence_equals_reference(engine, kind, norm, terms, extra):
    """T * N well above the ring's block of rows: dW_hh is reduced in several blocks, the last one partial."""
    torch.manual_seed(0)
    T, N = 300, 4
    kw = dict(norm=norm, norm_terms=terms, dtype=torch.float64, max_steps=T, **extra) if norm == "batch" else \
        dict(norm=norm, norm_terms=terms, dtype=torch.float64, **extra)
    ref = make(kind, 3, 4, backend="reference", **kw)
    randomize_norms(ref)
    fast = make(kind, 3, 4, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, 3, dtype=torch.float64, requires_grad=True)
    hx = initial_state(kind, 1, N, 4, torch.float64)
    lengths = torch.tensor([T, 170, 1, 257])
    weights = torch.randn(T, N, 4, dtype=torch.float64)
    with fused.force_engine(engine):
        loss_f, inputs_f = _loss_and_inputs(fast, x, hx, lengths, weights)
        grads_f = torch.autograd.grad(loss_f, inputs_f, allow_unused=True)
    loss_r, inputs_r = _loss_and_inputs(ref, x, hx, lengths, weights)
    grads_r = torch.autograd.grad(loss_r, inputs_r, allow_unused=True)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-9, atol=1e-9)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,norm,terms,extra", VARIANTS, ids=str)
def test_backward_twice_with_retain_graph(engine, kind, norm, terms, extra):
    """Backward must not overwrite what forward saved: a second backward through the graph gives the same."""
    torch.manual_seed(1)
    m = make(kind, 5, 6, norm=norm, norm_terms=terms, backend="fused", **extra)
    randomize_norms(m)
    x = torch.randn(40, 3, 5, requires_grad=True)
    weights = torch.randn(40, 3, 6)
    with fused.force_engine(engine):
        loss, inputs = _loss_and_inputs(m, x, initial_state(kind, 1, 3, 6), torch.tensor([40, 25, 40]), weights)
        first = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        second = torch.autograd.grad(loss, inputs, allow_unused=True)
    for a, b in zip(first, second):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind,norm", [("LSTM", "layer"), ("LSTM", "batch"), ("GRU", "layer")])
def test_saved_for_backward_is_bounded(kind, norm):
    """What autograd keeps between forward and backward, in units of one step's gate rows (N x G floats)."""
    T, N, H = 20, 8, 16
    G = {"LSTM": 4, "GRU": 3}[kind] * H
    m = make(kind, H, H, norm=norm, backend="fused")
    x = torch.randn(T, N, H, requires_grad=True)
    own = {p.untyped_storage().data_ptr() for p in m.parameters()} | {x.untyped_storage().data_ptr()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(x)[0]
    out.sum().backward()
    full = T * N * G * 4  # bytes of one (T, N, G) float32 buffer
    # LSTM: x-term input, activations, normalized recurrent term (3 full) + h, c, normalized c, tanh (4 x H/G);
    # GRU: x-term input, activations, normalized recurrent term + h and the candidate's recurrent part.
    bound = 3 * full + (4 if kind == "LSTM" else 2) * (T + 1) * N * H * 4 + 8 * T * G * 4
    assert sum(seen.values()) <= bound


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_expanded_output_gradient(engine, kind, bidirectional):
    """out.sum()'s gradient is an expanded scalar the kernels read through its strides, not a copy."""
    torch.manual_seed(2)
    m = make(kind, 5, 6, norm="layer", backend="fused", bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(9, 3, 5, dtype=torch.float64, requires_grad=True)
    with fused.force_engine(engine):
        g1 = torch.autograd.grad(m(x)[0].sum(), [x, *m.parameters()])
        ones = torch.ones(9, 3, 6 * (2 if bidirectional else 1), dtype=torch.float64)
        g2 = torch.autograd.grad((m(x)[0] * ones).sum(), [x, *m.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ the buffer pool
# The native engine's T-step buffers come from a pool that keeps freed memory for the next call (csrc/pool.h).

MiB = 1 << 20


@pytest.fixture
def pool():
    """The native module with an empty pool at its default cap, restored afterwards."""
    native = require_native()
    native.release_pool()
    limit = native.set_pool_limit(512 * MiB)
    yield native
    native.set_pool_limit(limit)
    native.release_pool()


def test_pool_reuses_a_freed_block_within_its_rules(pool):
    a = pool.pooled_empty([MiB // 2], torch.float32)  # 2 MiB
    block = a.data_ptr()
    del a
    assert pool.pool_cached_bytes() == 2 * MiB
    b = pool.pooled_empty([MiB // 2], torch.float32)  # the same size: the same memory, taken out of the pool
    assert b.data_ptr() == block and pool.pool_cached_bytes() == 0
    del b
    c = pool.pooled_empty([MiB // 4], torch.float32)  # 1 MiB: a 2 MiB block would idle half of itself
    assert c.data_ptr() != block and pool.pool_cached_bytes() == 2 * MiB
    small = pool.pooled_empty([1000], torch.float64)  # under 1 MiB: an ordinary allocation, never kept
    del small
    assert pool.pool_cached_bytes() == 2 * MiB
    assert fused.set_pool_limit(2 * MiB) == 512 * MiB
    newest = c.data_ptr()
    del c  # 3 MiB would exceed the limit: the block freed longest ago (2 MiB) makes room for it
    assert pool.pool_cached_bytes() == 1 * MiB
    d = pool.pooled_empty([MiB // 4], torch.float32)
    assert d.data_ptr() == newest and pool.pool_cached_bytes() == 0
    big = pool.pooled_empty([MiB], torch.float32)  # 4 MiB: above the limit, so never kept
    del d, big
    assert pool.pool_cached_bytes() == 1 * MiB
    fused.release_scratch()
    assert pool.pool_cached_bytes() == 0
    with pytest.raises(ValueError, match="nbytes"):
        fused.set_pool_limit(-1)


def test_a_training_step_takes_the_previous_steps_memory(pool):
    m = make("LSTM", 64, 128, norm="batch", backend="fused")
    x = torch.randn(50, 32, 64, requires_grad=True)
    with fused.force_engine("native"):
        m(x)[0].sum().backward()
        kept = pool.pool_cached_bytes()
        out = m(x)[0]  # forward takes the blocks backward freed
        taken = kept - pool.pool_cached_bytes()
        out.sum().backward()
    full = 50 * 32 * 4 * 128 * 4  # one (T, N, 4H) float32 buffer
    assert kept >= 3 * full and taken >= 3 * full


POISON_VARIANTS = [
    ("LSTM", "layer", "separate", {}),
    ("LSTM", "batch", "separate", {}),
    ("LSTM", "batch", "joint", {}),
    ("LSTM", "rms", "separate", dict(carry_normalized_cell=True)),
    ("LSTM", "none", "separate", {}),
    ("GRU", "layer", "separate", {}),
    ("GRU", "batch", "joint", {}),
    ("RNN", "batch", "separate", {}),
]


@pytest.mark.parametrize("kind,norm,terms,extra", POISON_VARIANTS, ids=str)
def test_no_kernel_reads_a_pooled_buffer_before_writing_it(pool, kind, norm, terms, extra):
    """Pooled memory holds the last call's values, where fresh pages read as zeros. With every pooled buffer
    handed out full of NaN, forward, backward and inference (padded batch) must give exactly what they give
    without: a kernel that reads a buffer before writing it (a finished row, say) shows as a difference."""
    torch.manual_seed(3)
    first = make(kind, 48, 96, norm=norm, norm_terms=terms, backend="fused", bidirectional=True, **extra)
    randomize_norms(first)
    x = torch.randn(120, 24, 48, requires_grad=True)  # (T, N, H) buffers of 1.1 MiB and more: pooled
    lengths = torch.tensor([120, 3, 120, 57] * 6)
    results = []
    for poison in (False, True):
        m = copy.deepcopy(first)  # (a training call moves batch norm's running averages)
        pool.release_pool()
        before = pool.set_pool_poison(poison)
        try:
            with fused.force_engine("native"):
                m.train()
                out, h = m(x, lengths=lengths)
                states = h if isinstance(h, tuple) else (h,)
                grads = torch.autograd.grad(out.pow(2).sum() + sum(s.sum() for s in states), [x, *m.parameters()])
                m.eval()
                with torch.no_grad():
                    infer = m(x, lengths=lengths)[0]
        finally:
            pool.set_pool_poison(before)
        results.append([out, *states, infer, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
