"""The fused backend (both engines) against the readable reference loop, for every variant it covers."""
import copy

import pytest
import torch

import normrnn
from normrnn import fused, reference
from normrnn.cells import CellParams
from normrnn.norms import IdentityNorm, RecurrentBatchNorm
from native_support import ENGINES
from rnn_helpers import (change_the_layer, fused_variants, make, native_results, outputs_and_grads,
                         randomize_norms, reference_and_twin, stream, twin_inputs)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,norm,terms,extra", list(fused_variants()), ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_reference(engine, kind, norm, terms, extra, training):
    ref, fast = reference_and_twin(kind, norm, terms, extra, training)
    x, hx, lengths, weights = twin_inputs(kind)
    with fused.force_engine(engine):
        outs_f, grads_f = outputs_and_grads(fast, x, hx, lengths, weights)
    outs_r, grads_r = outputs_and_grads(ref, x, hx, lengths, weights)
    for a, b in zip(outs_f + list(grads_f), outs_r + list(grads_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(fast.buffers(), ref.buffers()):  # batch norm's running statistics move identically
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,terms", [("LSTM", "separate"), ("GRU", "separate"), ("RNN", "separate"),
                                        ("GRU", "joint")])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_fused_float32_realistic_shape(engine, kind, terms, norm):
    """float32 agreement (relative 1e-4) on a realistic shape, gradients included."""
    torch.manual_seed(1)
    ref = make(kind, 64, 128, norm=norm, norm_terms=terms, backend="reference")
    fast = make(kind, 64, 128, norm=norm, norm_terms=terms, backend="fused")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(50, 16, 64, requires_grad=True)
    with fused.force_engine(engine):
        out_f, _ = fast(x)
        g_f = torch.autograd.grad(out_f.pow(2).mean(), [x, *fast.parameters()])
    out_r, _ = ref(x)
    g_r = torch.autograd.grad(out_r.pow(2).mean(), [x, *ref.parameters()])
    # relative error 1e-4 in norm: elementwise relative error is meaningless for values near zero
    for a, b in zip([out_f, *g_f], [out_r, *g_r]):
        assert (a - b).norm() <= 1e-4 * b.norm(), ((a - b).norm() / b.norm()).item()


def test_backend_selection():
    assert normrnn.LSTM(3, 4, backend="reference").active_backend() == "reference"
    assert normrnn.LSTM(3, 4).active_backend() == ("fused-native" if fused.native.load() else "reference")
    assert normrnn.LSTM(3, 4, zoneout=0.1).active_backend() == "reference"  # auto falls back
    with pytest.raises(ValueError, match="zoneout"):
        normrnn.LSTM(3, 4, zoneout=0.1, backend="fused")(torch.randn(2, 2, 3))
    assert normrnn.GRU(3, 4, norm_terms="joint", backend="fused").active_backend().startswith("fused")
    with pytest.raises(ValueError, match="backend"):
        normrnn.LSTM(3, 4, backend="cuda")


def test_auto_without_native_kernels_runs_the_reference_on_cpu(monkeypatch):
    """Without the C++ kernels the PyTorch engine is no faster than the reference loop on a CPU
    (benchmarks/fallback.py), so auto picks the loop; "fused" and a forced engine still get the PyTorch engine."""
    monkeypatch.setattr(fused.native, "load", lambda: None)
    m = normrnn.LSTM(3, 4)
    assert m.active_backend() == "reference"
    assert normrnn.LSTM(3, 4, backend="fused").active_backend() == "fused-torch"
    with fused.force_engine("torch"):
        assert m.active_backend() == "fused-torch"
    twin = normrnn.LSTM(3, 4, backend="fused")
    twin.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x)[0], twin(x)[0])


@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
@pytest.mark.parametrize("extra", [{}, dict(norm_terms="joint"), dict(carry_normalized_cell=True),
                                   dict(norm_cell=False)], ids=str)
def test_inference_and_streaming_fast_paths(norm, extra):
    """Without autograd the fused backend skips the graph, and LSTM streaming takes one native call per step:
    both must still equal the reference loop."""
    torch.manual_seed(3)
    ref = normrnn.LSTM(4, 6, 2, norm=norm, backend="reference", dtype=torch.float64, **extra)
    randomize_norms(ref)
    if norm == "batch":
        ref(torch.randn(5, 6, 4, dtype=torch.float64))
    fast = normrnn.LSTM(4, 6, 2, norm=norm, backend="fused", dtype=torch.float64, **extra)
    fast.load_state_dict(ref.state_dict())
    ref.eval(), fast.eval()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    expected, (h, c) = ref(x)
    with torch.no_grad():
        out, _ = fast(x)
        state, steps = None, []
        for t in range(7):
            y, state = fast.step(x[t], state)
            steps.append(y)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.hx[1], c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_gru_joint_inference_path(engine, norm, training):
    """Without autograd the GRU with joint terms keeps no per-step state (keep=False reuses one step's buffers):
    outputs, final states and batch norm's running statistics must still equal the reference loop."""
    torch.manual_seed(4)
    kw = dict(norm=norm, norm_terms="joint", dtype=torch.float64, bidirectional=True)
    ref = normrnn.GRU(3, 5, 2, backend="reference", **kw)
    randomize_norms(ref)
    if norm == "batch":
        ref(torch.randn(7, 6, 3, dtype=torch.float64))
    fast = normrnn.GRU(3, 5, 2, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    ref.train(training), fast.train(training)
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5])
    with torch.no_grad():
        expected, h_r = ref(x, lengths=lengths)
        with fused.force_engine(engine):
            out, h_f = fast(x, lengths=lengths)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_f, h_r, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_joint_kernels_without_gains(engine, bias):
    """``norm="none"`` builds no joint norms (the layer runs the separate-terms GRU), so the joint kernels' branch
    for absent gains is reached only through identity norms in the joint slots: run one reverse direction of
    such a cell directly, against the reference loop."""
    torch.manual_seed(7)
    H, I = 5, 3

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    b = (leaf(3 * H), leaf(3 * H)) if bias else (None, None)
    p = CellParams("GRU", leaf(3 * H, I), leaf(3 * H, H), *b, norm_gates=IdentityNorm(), norm_new=IdentityNorm())
    x, h0 = leaf(6, 4, I), leaf(4, H)
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(6).unsqueeze(1) < lengths
    weights = torch.randn(6, 4, H, dtype=torch.float64)
    inputs = [x, h0, p.weight_ih, p.weight_hh] + [t for t in b if t is not None]

    def run(run_direction):
        out, (h,) = run_direction(p, x, (h0,), mask, lengths, reverse=True)
        return [out, h, *torch.autograd.grad((out * weights).sum() + (3 * h).sum(), inputs)]

    with fused.force_engine(engine):
        got = run(fused.run_direction)
    for a, e in zip(got, run(reference.run_direction)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_native_kernels_only_for_cpu_tensors():
    """The C++ kernels read CPU memory: tensors elsewhere (CUDA) must get the PyTorch engine."""
    assert fused.engine(torch.device("meta")) is fused.torch_engine
    assert fused.engine_name(torch.device("meta")) == "torch"


# ---------------------------------------------------------------------------------------------- streaming plan
needs_native = pytest.mark.native


@needs_native
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_streaming_plan_is_used_and_follows_parameter_changes(norm, stream_calls):
    """The plan holds the module's own tensors: in-place updates (optimizer steps, load_state_dict, batch norm's
    running statistics growing to more steps), replaced parameters and casts must all be seen."""
    torch.manual_seed(5)
    m = normrnn.LSTM(3, 5, 2, norm=norm)
    randomize_norms(m)
    if norm == "batch":
        m(torch.randn(3, 4, 3))  # running statistics for 3 steps
    m.eval()
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        def check():
            xx = x.to(m.weight_hh_l0.dtype)
            got, state = stream(m, xx)
            out, (h, c) = m(xx)
            torch.testing.assert_close(got, out)
            torch.testing.assert_close(state.hx[1], c)
            assert state.step == x.shape[0]

        check()
        assert stream_calls == list(range(6))  # every step took the fast path, with its step index
        change_the_layer(m, check, 3, norm == "batch")
    assert len(stream_calls) == 6 * (5 if norm == "batch" else 4)


@needs_native
def test_streaming_plan_steps_aside_when_it_cannot_apply(stream_calls):
    """Gradients, training-mode batch norm, dropout and residual stacks take the general path, which still
    agrees with forward; and gradients reach the parameters."""
    torch.manual_seed(6)
    m = normrnn.LSTM(3, 4, norm="layer")
    x = torch.randn(4, 2, 3)
    got, _ = stream(m, x)  # grad enabled and parameters require it: the general path records a graph
    got.sum().backward()
    assert m.weight_hh_l0.grad is not None and not stream_calls
    with torch.no_grad():
        m.weight_hh_l0.requires_grad_(False)
        for p in m.parameters():
            p.requires_grad_(False)
    stream(m, x)  # nothing needs a gradient now: fast path even with grad mode on
    assert len(stream_calls) == 4
    stream_calls.clear()
    bn = normrnn.LSTM(3, 4, norm="batch").train()
    with torch.no_grad():
        stream(bn, torch.randn(3, 2, 3))  # training batch norm: statistics of the step's batch
    drop = normrnn.LSTM(3, 4, 2, dropout=0.5).train()
    res = normrnn.LSTM(3, 4, 2, residual=True).eval()
    with torch.no_grad():
        stream(drop, x)
        got, _ = stream(res, x)
        torch.testing.assert_close(got, res(x)[0])
    assert not stream_calls
    with torch.no_grad():
        stream(drop.eval(), x)  # eval: dropout is off, the plan applies
    assert len(stream_calls) == 4


@needs_native
def test_a_streamed_layer_copies_and_pickles(stream_calls):
    """The cached plan (engine objects) is not part of a layer's state: deepcopy and pickle work after step(),
    and the copy streams through a plan of its own tensors."""
    import pickle

    m = normrnn.LSTM(3, 4, norm="layer").eval()
    x = torch.randn(3, 2, 3)
    with torch.no_grad():
        expected, _ = stream(m, x)
        twin = copy.deepcopy(m)
        again = pickle.loads(pickle.dumps(m))
        for other in (twin, again):
            got, _ = stream(other, x)
            torch.testing.assert_close(got, expected)
        twin.weight_hh_l0.add_(torch.randn_like(twin.weight_hh_l0))
        assert not torch.allclose(stream(twin, x)[0], expected)  # the copy's plan reads the copy's weights
    assert len(stream_calls) == 4 * 3


@needs_native
def test_streaming_plan_errors_come_from_the_layer(stream_calls):
    """Bad input skips the fast path and gets the layer's own error."""
    m = normrnn.LSTM(3, 4).eval()
    with torch.no_grad():
        with pytest.raises(ValueError):
            m.step(torch.randn(2, 5))
        with pytest.raises(ValueError):
            m.step(torch.randn(2, 3), normrnn.StreamState((torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)), 0))
        with pytest.raises((TypeError, ValueError)):
            m.step(torch.randn(2, 3, dtype=torch.float64))
    assert not stream_calls


def test_native_build_retries_without_openmp(monkeypatch, tmp_path):
    """A compiler without OpenMP support still gets the kernels (single-threaded row loops); when no build works,
    one warning and None."""
    native = fused.native
    calls = []

    class FakeCppExtension:
        @staticmethod
        def load(**kwargs):
            calls.append(kwargs["extra_cflags"])
            if "-fopenmp" in kwargs["extra_cflags"]:
                raise RuntimeError("unsupported option '-fopenmp'")
            return "module"

    monkeypatch.setenv("NORMRNN_BUILD", str(tmp_path))
    monkeypatch.setattr(native, "OPENMP", ["-fopenmp"])
    monkeypatch.setattr(native, "_import_cpp_extension", lambda: FakeCppExtension)
    monkeypatch.setattr(native, "_failed", None)
    assert native._build() == "module"
    assert ["-fopenmp" in flags for flags in calls] == [True, False]
    assert native.failure() is None
    assert native.build_dir(True) != native.build_dir(False)  # the two builds are cached apart

    class Broken:
        @staticmethod
        def load(**kwargs):
            raise RuntimeError("no compiler")

    monkeypatch.setattr(native, "_import_cpp_extension", lambda: Broken)
    with pytest.warns(RuntimeWarning, match="reference loop"):
        assert native._build() is None
    assert "no compiler" in native.failure()


def test_native_build_leaves_its_flags_alone(monkeypatch, tmp_path):
    """torch's cpp_extension.load appends its libraries to the extra_ldflags list it is given; the build must pass
    copies, or the module's flags (and so build_dir(), the cache key) change for the rest of the process."""
    native = fused.native

    class AppendingCppExtension:
        @staticmethod
        def load(**kwargs):
            kwargs["extra_ldflags"].append("-ltorch_cpu")
            kwargs["extra_cflags"].append("-DX")
            return "module"

    monkeypatch.setenv("NORMRNN_BUILD", str(tmp_path))
    monkeypatch.setattr(native, "OPENMP", ["-fopenmp"])
    monkeypatch.setattr(native, "_import_cpp_extension", lambda: AppendingCppExtension)
    before = native.build_dir(True)
    assert native._build() == "module"
    assert native.OPENMP == ["-fopenmp"] and "-DX" not in native.FLAGS
    assert native.build_dir(True) == before


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_inference_equals_reference_with_padding(engine, norm):
    """Without autograd (the kernels keep one step's buffers and two states) an LSTM equals the reference, with
    padding, in both directions, and past the steps batch norm has running statistics for."""
    torch.manual_seed(8)
    ref = normrnn.LSTM(4, 6, 2, norm=norm, bidirectional=True, backend="reference", dtype=torch.float64)
    randomize_norms(ref)
    if norm == "batch":  # running statistics for 5 steps, then eval: steps 6 and 7 reuse the last ones
        ref(torch.randn(5, 8, 4, dtype=torch.float64))
        ref.eval()
    fast = normrnn.LSTM(4, 6, 2, norm=norm, bidirectional=True, backend="fused", dtype=torch.float64)
    fast.load_state_dict(ref.state_dict())
    fast.train(ref.training)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 4, 2])
    expected, (h, c) = ref(x, lengths=lengths)
    with torch.no_grad(), fused.force_engine(engine):
        out, (h2, c2) = fast(x, lengths=lengths)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c2, c, rtol=1e-10, atol=1e-12)


def test_one_step_forward_keeps_the_gradient_of_a_learned_initial_state():
    """At T = 1 the fused backend takes the one-call step kernel only when nothing needs a gradient: with frozen
    weights but an initial state (or a gain) that requires one, the gradient must still arrive."""
    torch.manual_seed(9)
    m = normrnn.LSTM(3, 4, norm="layer", dtype=torch.float64)
    ref = normrnn.LSTM(3, 4, norm="layer", backend="reference", dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    for p in (*m.parameters(), *ref.parameters()):
        p.requires_grad_(False)
    m.norm_cell_l0.weight.requires_grad_(True)
    ref.norm_cell_l0.weight.requires_grad_(True)
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    grads = []
    for layer in (m, ref):
        h0 = torch.randn(1, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        c0 = torch.zeros(1, 2, 4, dtype=torch.float64)
        out, _ = layer(x, (h0, c0))
        grads.append(torch.autograd.grad(out.sum(), (h0, layer.norm_cell_l0.weight)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


NATIVE = fused.native.load()  # (None where it cannot build: the tests below are marked native, and skip or fail)


# ---------------------------------------------------------------------------------------------- inference input term
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind,terms", [("LSTM", "separate"), ("LSTM", "joint"), ("GRU", "separate"),
                                        ("GRU", "joint"), ("RNN", "separate")])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_no_grad_calls_of_several_shapes_equal_the_reference(engine, kind, terms, norm):
    """Without a graph the native engine projects (and normalizes) the input term in memory it keeps between
    calls. Calls of other shapes, both directions, two layers, padding, and outputs of an earlier call must be
    unaffected by the reuse; batch norm in training mode (batch statistics) takes the ordinary path."""
    torch.manual_seed(11)
    kw = dict(norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True)
    ref = make(kind, 3, 5, 2, backend="reference", **kw)
    randomize_norms(ref)
    if norm == "batch":
        ref(torch.randn(9, 6, 3, dtype=torch.float64))
    fast = make(kind, 3, 5, 2, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    for training in (False, True):
        ref.train(training), fast.train(training)
        kept = []
        for T, N in [(7, 4), (3, 2), (9, 5), (7, 4)]:
            x = torch.randn(T, N, 3, dtype=torch.float64)
            lengths = torch.randint(1, T + 1, (N,))
            lengths[0] = T
            with torch.no_grad():
                expected = ref(x, lengths=lengths)[0]
                with fused.force_engine(engine):
                    got = fast(x, lengths=lengths)[0]
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
            kept.append((got, got.clone()))
        for got, snapshot in kept:  # no later call wrote into an earlier output
            assert torch.equal(got, snapshot)
        for a, b in zip(fast.buffers(), ref.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.native
@pytest.mark.parametrize("kind", [fused.torch_engine.LAYER, fused.torch_engine.RMS, fused.torch_engine.BATCH_FIXED])
@pytest.mark.parametrize("gain", [True, False])
def test_native_input_term_norm_equals_its_specification(kind, gain):
    torch.manual_seed(12)
    x = torch.randn(6, 5, 70, dtype=torch.float64) * 3 + 1
    w = torch.rand(70, dtype=torch.float64) + 0.5 if gain else torch.empty(0, dtype=torch.float64)
    fm, fv = torch.randn(6, 70, dtype=torch.float64), torch.rand(6, 70, dtype=torch.float64) + 0.1
    a, b = x.clone(), x.clone()
    fused.native.load().norm_rows_(a, w, kind, 1e-5, fm, fv)
    fused.torch_engine.norm_rows_(b, w, kind, 1e-5, fm, fv)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(a, x)


@pytest.mark.native
@pytest.mark.parametrize("norm_cls", [normrnn.RMSNorm, normrnn.LayerNorm], ids=lambda c: c.__name__)
def test_native_norm_rows_gradcheck(norm_cls):
    """The input term's RMSNorm and layer norm on the native kernels (forward and backward) against autograd's
    finite differences through the input and the gain, and against the plain module."""
    from torch.autograd import gradcheck

    from normrnn.fused.input_term import normalize

    torch.manual_seed(9)
    n = norm_cls(6, bias=False).double()
    eng = fused.native.engine()
    x = (torch.randn(4, 3, 6, dtype=torch.float64) * 2 + 0.7).requires_grad_()  # (a mean layer norm removes)
    w = torch.empty(6, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
    with torch.no_grad():
        n.weight.copy_(w)
    assert gradcheck(lambda x, w: normalize(_with_weight(n, w), x, 0, None, eng), (x, w))
    torch.testing.assert_close(normalize(n, x, 0, None, eng), n(x))


def _with_weight(norm, w):
    """A copy of ``norm`` whose gain is the tensor ``w`` itself (so gradcheck differentiates through it)."""
    clone = copy.copy(norm)
    clone._parameters = dict(norm._parameters, weight=w)
    return clone


@pytest.mark.native
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
@pytest.mark.parametrize("extra", [{}, dict(norm_terms="joint"), dict(carry_normalized_cell=True),
                                   dict(norm_cell=False)], ids=str)
def test_rows_in_groups_per_thread_equal_shared_steps(norm, extra):
    """Without batch statistics, the LSTM forward runs one group of rows per thread, each with its own time loop
    and GEMM: outputs, states and gradients must equal the shared-step loop, with padding, an odd batch, both
    directions, training (batch norm: shared, its statistics cross rows) and inference."""
    torch.manual_seed(5)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert NATIVE.row_groups(7, 40, False) == 2 and NATIVE.row_groups(7, 40, True) == 1
        assert NATIVE.row_groups(3, 40, False) == 1 and NATIVE.row_groups(7, 400, False) == 1
        # W_hh of 2.6 MiB: shared steps in training, groups in inference (up to 8 MiB); 10 MiB: shared in both
        assert NATIVE.row_groups(7, 400, False, False) == 2 and NATIVE.row_groups(7, 800, False, False) == 1
        first = normrnn.LSTM(24, 40, 2, norm=norm, bidirectional=True, backend="fused", dtype=torch.float64,
                             **extra)
        randomize_norms(first)
        x = torch.randn(30, 7, 24, dtype=torch.float64, requires_grad=True)
        lengths = torch.tensor([30, 29, 17, 30, 2, 9, 30])
        results = []
        for split in (True, False):
            m = copy.deepcopy(first)
            previous = NATIVE.set_split_rows(split)
            try:
                with fused.force_engine("native"):
                    out, (h, c) = m(x, lengths=lengths)
                    grads = torch.autograd.grad(out.pow(2).sum() + h.sum() + c.sum(), [x, *m.parameters()])
                    m.eval()
                    with torch.no_grad():
                        infer, (hi, ci) = m(x, lengths=lengths)
            finally:
                NATIVE.set_split_rows(previous)
            results.append([out, h, c, infer, hi, ci, *grads])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)  # (GEMMs of other row counts round otherwise)
    finally:
        torch.set_num_threads(before)


@pytest.mark.native
@pytest.mark.parametrize("first", [0, 3, 6])
def test_native_running_average_update_equals_its_specification(first):
    """The native update against RecurrentBatchNorm._update_running, its specification: rows of steps with fewer
    than two sequences, and steps past max_steps, stay as they were."""
    torch.manual_seed(13)
    rm, rv = torch.randn(8, 5, dtype=torch.float64), torch.rand(8, 5, dtype=torch.float64) + 0.5
    mean, var = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    count = torch.tensor([3.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    a1, b1 = rm.clone(), rv.clone()
    n1 = NATIVE.bn_update_running_(a1, b1, mean, var, count, first, 0.1)
    norm = RecurrentBatchNorm(5, max_steps=8, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        norm.running_mean.copy_(rm), norm.running_var.copy_(rv)
        steps = torch.arange(first, first + 4)
        norm._update_running(mean, var, count.unsqueeze(1), count.unsqueeze(1) >= 2, steps,
                             torch.clamp(steps, max=7))
    a2, b2, n2 = norm.running_mean, norm.running_var, int(norm.steps_tracked)
    assert n1 == n2 == {0: 4, 3: 7, 6: 7}[first]
    torch.testing.assert_close(a1, a2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(b1, b2, rtol=1e-14, atol=1e-14)
    changed = (a1 != rm).any(1)
    expected = torch.zeros(8, dtype=torch.bool)
    for t, c in enumerate(count.tolist()):
        if c >= 2 and first + t < 8:
            expected[first + t] = True
    assert torch.equal(changed, expected)


def test_scratch_keeps_one_buffer_per_dtype_and_not_the_large_ones(monkeypatch):
    scratch = fused.input_term.Scratch()
    like = torch.empty(0)
    a = scratch.take((4, 5), like)
    b = scratch.take((2, 3), like)
    assert a.shape == (4, 5) and b.shape == (2, 3)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # reused, not reallocated
    c = scratch.take((6, 7), like)  # larger: a new kept buffer
    assert scratch.buffers[(like.device, like.dtype)].numel() == 42 and c.shape == (6, 7)
    d = scratch.take((2, 2), torch.empty(0, dtype=torch.float64))
    assert d.dtype == torch.float64 and len(scratch.buffers) == 2
    monkeypatch.setattr(fused.input_term.Scratch, "max_bytes", 100)
    big = scratch.take((10, 10), like)  # 400 bytes: allocated for the call, not kept
    assert big.untyped_storage().data_ptr() != scratch.buffers[(like.device, like.dtype)].untyped_storage().data_ptr()
    assert scratch.buffers[(like.device, like.dtype)].numel() == 42
