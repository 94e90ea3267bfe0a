"""Both fused engines against the reference loop, in float64 (relative 1e-9), at the sizes where the native
kernels leave their small-size paths: hidden sizes up to 1024 and batches of 32 or more, on 1 and 2 threads.

The small-shape tests (tests/core/test_fused.py, hidden size 5) never reach these paths:

* batch norm's column blocks (``for_cols``: blocks of max(64, 16384 / N) columns, split over threads only when F
  exceeds one block, so N = 32 needs F > 512: H = 1024 for the LSTM's gates and cell, 256 for the GRU);
* the LSTM's row groups (2 threads, no cross-row statistics, H <= 362, N >= 4);
* the 32-lane row sums with a tail (F not a multiple of 32) and the SIMD loops' tails (H = 33);
* time loops split over threads.

Sampled, not crossed: every cell with every norm once, each case on the thread count that reaches its blocks,
so the file stays within about a minute. A dropped column-block offset in the batch statistics was off by 0.29
at H = 1024, N = 32 on 2 threads while every small-shape test passed."""
import pytest
import torch

from normrnn import fused
from rnn_helpers import initial_state, make, randomize_norms

ENGINES = ["torch", pytest.param("native", marks=pytest.mark.native)]

# kind, norm, norm_terms, extra, hidden, batch, threads, bidirectional
CASES = [
    ("LSTM", "batch", "separate", {}, 1024, 32, 2, False),  # column blocks: gates F = 4096, cell F = 1024
    ("LSTM", "layer", "joint", {}, 1024, 32, 2, False),  # 32-lane sums over 4096
    ("LSTM", "rms", "separate", dict(carry_normalized_cell=True), 128, 32, 2, True),  # row groups
    ("LSTM", "none", "separate", {}, 128, 35, 2, False),  # row groups of unequal size
    ("LSTM", "layer", "separate", {}, 33, 34, 1, True),  # lane and SIMD tails, one thread
    ("LSTM", "batch", "joint", dict(norm_cell=False), 33, 33, 2, False),
    ("GRU", "batch", "joint", {}, 256, 33, 2, True),  # column blocks: F = 768
    ("GRU", "layer", "separate", {}, 128, 32, 2, False),
    ("GRU", "rms", "joint", {}, 33, 32, 1, False),
    ("GRU", "none", "separate", {}, 200, 32, 2, False),
    ("RNN", "batch", "separate", {}, 1024, 32, 2, False),  # column blocks: F = 1024
    ("RNN", "layer", "joint", dict(nonlinearity="relu"), 128, 32, 1, False),
    ("RNN", "rms", "separate", {}, 33, 40, 2, True),
    ("RNN", "none", "joint", {}, 1024, 32, 1, False),
]


def _id(case):
    kind, norm, terms, extra, H, N, threads, bi = case
    return f"{kind}-{norm}-{terms}{''.join('-' + k for k in extra)}-H{H}-N{N}-t{threads}{'-bi' if bi else ''}"


_REFERENCE = {}


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _close(a, b, what):
    # float64: the engines sum in other orders (blocks, lanes, GEMM tiles), so relative 1e-9 of the tensor's
    # scale; a wrong block or row is off by far more (0.29 for the dropped offset above)
    scale = b.abs().max().item() or 1.0
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * scale, msg=lambda m: f"{what}: {m}")


def _run(m, x, hx, lengths, weights, engine, grad):
    with fused.force_engine(engine):
        if not grad:
            with torch.no_grad():
                out, h = m(x, hx, lengths=lengths)
            return [out, *(h if isinstance(h, tuple) else (h,))]
        out, h = m(x, hx, lengths=lengths)
        states = h if isinstance(h, tuple) else (h,)
        loss = (out * weights).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(states))
        inputs = [x, *(hx if isinstance(hx, tuple) else (hx,)), *m.parameters()]
        return [out, *states, *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case,threads", [(c, c[6]) for c in CASES], ids=[_id(c) for c in CASES],
                         indirect=["threads"])
def test_fused_equals_reference_at_realistic_sizes(engine, case, threads):
    kind, norm, terms, extra, H, N, _, bidirectional = case
    torch.manual_seed(H + N)
    T, I = 4, 16
    kw = dict(norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=bidirectional, **extra)
    ref = make(kind, I, H, backend="reference", **kw)
    randomize_norms(ref)
    fast = make(kind, I, H, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    hx = initial_state(kind, D, N, H, torch.float64)
    hx = tuple(s.requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    lengths = torch.full((N,), T)
    lengths[1::3] = torch.randint(1, T, (len(lengths[1::3]),))  # a third of the rows end early
    weights = torch.randn(T, N, D * H, dtype=torch.float64)
    runs = [(training, grad) for training in ([True, False] if norm == "batch" else [True])
            for grad in (True, False)]
    key = _id(case)
    if key not in _REFERENCE:  # the reference loop's results, computed once for both engines
        results = []
        for training, grad in runs:
            ref.train(training)
            results.append((_run(ref, x, hx, lengths, weights, None, grad), [b.clone() for b in ref.buffers()]))
        _REFERENCE[key] = results
    for (training, grad), (expected, buffers) in zip(runs, _REFERENCE[key]):
        fast.train(training)
        got = _run(fast, x, hx, lengths, weights, engine, grad)
        for k, (a, b) in enumerate(zip(got, expected)):
            _close(a, b, f"training={training} grad={grad} tensor {k}")
        for a, b in zip(fast.buffers(), buffers):  # batch norm's running statistics
            _close(a, b, f"training={training} grad={grad} buffers")
