"""The GPU engine's kernels (normrnn.fused.triton_engine / triton_kernels) without a GPU.

* Arithmetic: the kernels run under Triton's interpreter on CPU tensors (the engine decorates a copy of the
  kernels module while ``TRITON_INTERPRET=1``: see ``triton_engine._load``; the CUDA path's compiled kernels are
  untouched) and must equal the PyTorch engine, the readable specification, loop for loop: every cell, norm kind
  and placement, forward, inference and backward, with padding. In float64 both engines evaluate the same
  formulas in the same order except for the reductions' summation order, so they agree to ~1e-15 relative;
  the bound 1e-10 leaves room for T = 4 steps of error growth and catches any wrong term (a planted error moves
  results by > 1e-3). A float32 run per cell checks the same at 1e-5 relative (float32 reduction-order noise over
  at most 4H = 20 terms and 4 steps is ~1e-6).
* Layers: bidirectional, stacked, padded, with an initial state, through the engine against the reference loop
  (what run.py and the layers add above the engine), plus PackedSequence, padding poison and NaN.
* Compilation: every kernel compiled for sm_90 (H100/H200) with no GPU present, through
  ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``: catches compile errors and shared-memory
  overflow before any GPU time is spent.

Skipped, with the reason, where Triton is not installed (it is a test-only dependency: ``pip install -e .[dev]``).
"""
import math

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (the dev extra pins it for these tests)")

from normrnn import fused  # noqa: E402
from normrnn.fused import cuda_graphs, select, torch_engine as spec, triton_engine as eng  # noqa: E402
from normrnn.fused.contract import (BATCH, BATCH_FIXED, LAYER, NONE, RMS, Fixed, GRUJointLoop, GRULoop,  # noqa: E402
                                    LSTMLoop, RNNLoop)
from rnn_helpers import make, outputs_and_grads, randomize_norms, reference_and_twin, twin_inputs  # noqa: E402

# the interpreter evaluates in numpy, which warns on exp overflow (inf is right there) and on NaN arithmetic
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION:UserWarning")]

KINDS = {"none": NONE, "layer": LAYER, "rms": RMS, "batch": BATCH, "fixed": BATCH_FIXED}
T, N, H = 4, 3, 5
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)  # lengths 4, 2, 1


def _t(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype) * scale


def _fixed(kind, F, dtype):
    if kind in (BATCH, BATCH_FIXED):
        return Fixed(_t(T, F, dtype=dtype), torch.rand(T, F, dtype=dtype) + 0.5)
    return Fixed(torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype))


def _gain(kind, F, dtype):
    return _t(F, dtype=dtype) if kind != NONE else torch.empty(0, dtype=dtype)


def _mask(padded):
    return MASK.clone() if padded else torch.empty(0, dtype=torch.bool)


def lstm_case(kind_h, kind_c, joint, carry, padded, dtype, bias=True):
    G = 4 * H
    empty = torch.empty(0, dtype=dtype)
    # (the layers always give the LSTM loop a bias, zeros without one: run._sum_bias)
    loop = LSTMLoop(_t(G, H, dtype=dtype, scale=0.5), _t(G, dtype=dtype) if bias else torch.zeros(G, dtype=dtype),
                    _gain(kind_h, G, dtype), _gain(kind_c, H, dtype), _gain(kind_c, H, dtype) if bias else empty,
                    _mask(padded), _fixed(kind_h, G, dtype), _fixed(kind_c, H, dtype), kind_h, kind_c, joint, carry,
                    1e-5)
    return "lstm", (_t(T, N, G, dtype=dtype), _t(N, H, dtype=dtype), _t(N, H, dtype=dtype)), loop


def gru_case(kind, joint, padded, dtype):
    G = 3 * H
    if joint:
        loop = GRUJointLoop(_t(G, H, dtype=dtype, scale=0.5), _t(G, dtype=dtype), _t(G, dtype=dtype),
                            _gain(kind, 2 * H, dtype), _gain(kind, H, dtype), _mask(padded),
                            _fixed(kind, 2 * H, dtype), _fixed(kind, H, dtype), kind, kind, 1e-5)
        return "gru_joint", (_t(T, N, G, dtype=dtype), _t(N, H, dtype=dtype)), loop
    loop = GRULoop(_t(G, H, dtype=dtype, scale=0.5), _t(G, dtype=dtype), _gain(kind, G, dtype), _mask(padded),
                   _fixed(kind, G, dtype), kind, 1e-5)
    return "gru", (_t(T, N, G, dtype=dtype), _t(N, H, dtype=dtype)), loop


def rnn_case(kind, joint, relu, padded, dtype):
    loop = RNNLoop(_t(H, H, dtype=dtype, scale=0.5), _t(H, dtype=dtype), _gain(kind, H, dtype), _mask(padded),
                   _fixed(kind, H, dtype), kind, joint, relu, 1e-5)
    return "rnn", (_t(T, N, H, dtype=dtype), _t(N, H, dtype=dtype)), loop


def _flat(result):
    return [result.out, *result.state, *(t for s in result.stats for t in s)]


def _close(a, b, rtol, atol, what):
    assert a.shape == b.shape, what
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def check_loop(case, rtol=1e-10, atol=1e-12):
    """Forward, inference and backward of one loop on both engines; everything compared."""
    name, inputs, loop = case
    got = getattr(eng, f"{name}_forward")(*inputs, loop)
    want = getattr(spec, f"{name}_forward")(*inputs, loop)
    for i, (a, b) in enumerate(zip(_flat(got), _flat(want))):
        _close(a, b, rtol, atol, f"forward output {i}")
    inferred = getattr(eng, f"{name}_infer")(*inputs, loop)
    for i, (a, b) in enumerate(zip(_flat(inferred), _flat(want))):
        _close(a, b, rtol, atol, f"inference output {i}")
    dtype = inputs[0].dtype
    grads_in = [_t(T, N, H, dtype=dtype)] + [_t(N, H, dtype=dtype) for _ in want.state]
    g_got = getattr(eng, f"{name}_backward")(*grads_in, got.saved)
    g_want = getattr(spec, f"{name}_backward")(*grads_in, want.saved)
    for field, a, b in zip(g_want._fields, g_got, g_want):
        _close(a, b, rtol, atol, f"gradient {field}")


# every kind with separate and joint terms, the cell norm of the same kind, the normalized cell carried with joint
# terms; then no cell norm, and a loop mixing a row norm with batch statistics (one program holds everything)
LSTM_CASES = [(h, h, joint, joint) for h in KINDS for joint in (False, True)] + [
    ("layer", "none", False, False), ("layer", "batch", False, True)]


@pytest.mark.parametrize("kind_h,kind_c,joint,carry", LSTM_CASES, ids=str)
def test_lstm_loop_equals_torch_engine(kind_h, kind_c, joint, carry):
    torch.manual_seed(0)
    check_loop(lstm_case(KINDS[kind_h], KINDS[kind_c], joint, carry, True, torch.float64))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("joint", [False, True], ids=["separate", "joint"])
def test_gru_loop_equals_torch_engine(kind, joint):
    torch.manual_seed(1)
    check_loop(gru_case(KINDS[kind], joint, True, torch.float64))


@pytest.mark.parametrize("kind,joint,relu", [("none", False, False), ("layer", True, True), ("rms", False, True),
                                             ("batch", True, False), ("fixed", False, False), ("batch", False, True)],
                         ids=str)
def test_rnn_loop_equals_torch_engine(kind, joint, relu):
    torch.manual_seed(2)
    check_loop(rnn_case(KINDS[kind], joint, relu, True, torch.float64))


@pytest.mark.parametrize("make_case", [
    lambda dt: lstm_case(LAYER, LAYER, False, False, False, dt),
    lambda dt: lstm_case(BATCH, NONE, True, True, False, dt, bias=False),
    lambda dt: gru_case(BATCH, True, False, dt),
    lambda dt: rnn_case(LAYER, False, True, False, dt),
], ids=["lstm-layer", "lstm-batch-joint-nobias", "gru-joint-batch", "rnn-layer-relu"])
def test_unpadded_loops(make_case):
    """Without a mask (the kernels' other branch: outputs are the states, no held rows)."""
    torch.manual_seed(3)
    check_loop(make_case(torch.float64))


@pytest.mark.parametrize("make_case", [
    lambda dt: lstm_case(LAYER, LAYER, False, True, True, dt),
    lambda dt: gru_case(BATCH, False, True, dt),
], ids=["lstm", "gru"])
def test_float32_loops(make_case):
    torch.manual_seed(4)
    check_loop(make_case(torch.float32), rtol=1e-5, atol=1e-6)


def test_batch_stats_fall_back_to_given_with_one_running_row():
    """Steps 2 and 3 of MASK have one running sequence: their statistics are the given ones, count 1."""
    torch.manual_seed(5)
    name, inputs, loop = lstm_case(BATCH, BATCH, False, False, True, torch.float64)
    r = eng.lstm_forward(*inputs, loop)
    mean, var, count = r.stats[0]
    assert count.tolist() == [3, 2, 1, 1]
    torch.testing.assert_close(mean[2:], loop.fixed_h.mean[2:], rtol=0, atol=0)
    torch.testing.assert_close(var[2:], loop.fixed_h.var[2:], rtol=0, atol=0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("make_case", [
    lambda: lstm_case(BATCH, BATCH, True, True, True, torch.float64),
    lambda: gru_case(RMS, True, True, torch.float64),
], ids=["lstm-batch-joint", "gru-joint-rms"])
def test_nonfinite_input_propagates_as_in_the_torch_engine(make_case, value):
    """A NaN/inf at a valid position spreads exactly as in the specification (same NaN pattern, same values
    elsewhere): nothing masks it into a number. One difference, by design: a finished sequence outputs zero by
    selection here (the padding rule of tests/core/test_padding_values.py), where the PyTorch engine multiplies
    its held state by 0 (NaN stays NaN): so padded outputs must be exactly 0 and only valid ones are compared."""
    torch.manual_seed(6)
    name, inputs, loop = make_case()
    inputs[0][1, 0, 2] = value
    got = getattr(eng, f"{name}_forward")(*inputs, loop)
    want = getattr(spec, f"{name}_forward")(*inputs, loop)
    assert not torch.isfinite(want.out).all()
    pad = ~loop.mask
    assert (got.out[pad] == 0).all()
    _close(got.out[~pad], want.out[~pad], 1e-10, 1e-12, "valid outputs")
    for a, b in zip(_flat(got)[1:], _flat(want)[1:]):
        _close(a, b, 1e-10, 1e-12, "forward")
    g_got = getattr(eng, f"{name}_backward")(torch.ones_like(got.out), *map(torch.zeros_like, got.state), got.saved)
    g_want = getattr(spec, f"{name}_backward")(torch.ones_like(got.out), *map(torch.zeros_like, got.state),
                                               want.saved)
    for field, a, b in zip(g_want._fields, g_got, g_want):
        _close(a, b, 1e-10, 1e-12, f"gradient {field}")


# ---------------------------------------------------------------------------------------------- through the layers


@pytest.fixture
def on_triton():
    with fused.force_engine("triton"):
        yield


@pytest.mark.parametrize("kind,norm,terms,extra,training", [
    ("LSTM", "batch", "separate", dict(carry_normalized_cell=True), True),
    ("GRU", "batch", "joint", dict(bias=False), True),
    ("RNN", "layer", "separate", dict(nonlinearity="relu"), True),
], ids=str)
def test_layer_equals_reference(on_triton, kind, norm, terms, extra, training):
    """A 2-layer bidirectional float64 layer with lengths and an initial state, on the Triton engine, against the
    reference loop: outputs, final states, every gradient and batch norm's running statistics."""
    ref, other = reference_and_twin(kind, norm, terms, extra, training)
    assert other.active_backend() == "fused-triton"
    x, hx, lengths, weights = twin_inputs(kind)
    outs_o, grads_o = outputs_and_grads(other, x, hx, lengths, weights)
    outs_r, grads_r = outputs_and_grads(ref, x, hx, lengths, weights)
    for a, b in zip(outs_o + list(grads_o), outs_r + list(grads_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(other.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_layer_packed_sequence_and_dropout(on_triton):
    """PackedSequence equals padding + lengths on the engine; inter-layer dropout runs above it (same seed, same
    masks as the reference loop)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(7)
    m = make("LSTM", 3, 4, 2, norm="layer", dropout=0.3, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    torch.manual_seed(8)
    out_p, (h_p, _) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    torch.manual_seed(8)
    out_l, (h_l, _) = m(x, lengths=lengths)
    padded, _ = pad_packed_sequence(out_p, total_length=6)
    torch.testing.assert_close(padded, out_l, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_p, h_l, rtol=1e-12, atol=1e-12)
    ref = make("LSTM", 3, 4, 2, norm="layer", dropout=0.3, dtype=torch.float64, backend="reference")
    ref.load_state_dict(m.state_dict())
    torch.manual_seed(8)
    out_r, _ = ref(x, lengths=lengths)
    torch.testing.assert_close(out_l, out_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,norm,terms", [("LSTM", "batch", "joint")], ids=str)
def test_layer_padding_contents_never_matter(on_triton, kind, norm, terms):
    """As tests/core/test_padding_values.py: NaN, inf or huge values in padded positions change nothing."""
    torch.manual_seed(9)
    m = make(kind, 3, 5, norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True)
    randomize_norms(m)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    pad = torch.arange(5).unsqueeze(1) >= lengths
    state = {k: v.clone() for k, v in m.state_dict().items()}

    def run(x):
        m.load_state_dict(state)
        x = x.clone().requires_grad_()
        out, h = m(x, lengths=lengths)
        states = h if isinstance(h, tuple) else (h,)
        grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in states), [x, *m.parameters()])
        return [out, *states, *grads[1:], grads[0][~pad], *m.buffers()]

    clean = run(x)
    for poison in (math.nan, math.inf, -1e300):
        dirty = x.clone()
        dirty[pad] = poison
        for a, b in zip(run(dirty), clean):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind,norm,terms", [("LSTM", "batch", "joint"), ("GRU", "layer", "separate")], ids=str)
def test_layer_nonfinite_like_the_reference(on_triton, kind, norm, terms):
    """NaN at a valid position of a padded, bidirectional batch: the same outputs, states and gradients are
    non-finite as in the reference loop (which outputs zero past a sequence's end by selection, as the kernels do)."""
    torch.manual_seed(10)
    ref = make(kind, 3, 5, norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True,
               backend="reference")
    randomize_norms(ref)
    m = make(kind, 3, 5, norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    x[1, 1, 0] = math.nan
    lengths = torch.tensor([5, 3, 4])

    def masks(layer):
        xr = x.clone().requires_grad_()
        out, h = layer(xr, lengths=lengths)
        states = h if isinstance(h, tuple) else (h,)
        grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in states), [xr, *layer.parameters()])
        return [t.isfinite() for t in (out, *states, *grads)]

    expected = masks(ref)
    assert not expected[0].all()
    for a, b in zip(masks(m), expected):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- selection, graphs


def test_select_uses_triton_only_for_cuda_or_when_forced():
    assert select.engine(torch.device("cpu"), torch.float16) is not eng  # (a CPU dtype the native engine lacks)
    with fused.force_engine("triton"):
        assert select.engine(torch.device("cpu")) is eng
    with pytest.raises(ValueError):
        with fused.force_engine("cudnn"):
            pass


def test_graph_argument_flattening_round_trips():
    """cuda_graphs keys and rebuilds a loop's arguments (named tuples of tensors and flags); the copies out of a
    graph keep views of one buffer as views of one copy."""
    _, inputs, loop = lstm_case(BATCH, LAYER, True, False, True, torch.float32)
    tensors = []
    spec_ = cuda_graphs.flatten((*inputs, loop, True), tensors)
    hash(spec_)
    rebuilt = cuda_graphs.unflatten(spec_, tensors)
    assert type(rebuilt[3]) is LSTMLoop and type(rebuilt[3].fixed_h) is Fixed and rebuilt[4] is True
    assert all(a is b for a, b in zip(rebuilt[:3], inputs)) and rebuilt[3].w_hh is loop.w_hh
    base = torch.randn(5, 2)
    copies = cuda_graphs.copy_out([base, base[1:], torch.randn(3)])
    assert copies[1].data_ptr() == copies[0].data_ptr() + 2 * 4 and copies[0].data_ptr() != base.data_ptr()
    torch.testing.assert_close(copies[1], base[1:])
    assert not cuda_graphs.enabled(torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- sm_90 compilation


def _signature(fn, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "mask_ptr":
            sig[name] = "*u8"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _variants():
    """(kernel name, constexprs, (N, H) for the tile): each kernel with each norm kind that changes its code, at a
    realistic tile (row norms: whole rows of H = 1024; batch norm: all rows of N = 64), plus its flag branches."""
    out = []
    for kind in (NONE, LAYER, BATCH):  # (RMS and BATCH_FIXED are smaller variants of LAYER's and BATCH's code)
        n_h = (64, 1024)
        flags_l = dict(KIND_H=kind, KIND_C=kind, HAS_BIAS=True, HAS_BC=True, JOINT=kind % 2 == 1, CARRY=kind > 2,
                       HAS_MASK=True, SAVE=True)
        out.append(("lstm_fwd_kernel", flags_l, n_h, 4))
        out.append(("lstm_bwd_kernel", {k: flags_l[k] for k in ("KIND_H", "KIND_C", "HAS_BC", "CARRY", "HAS_MASK")},
                    n_h, 4))
        out.append(("gru_fwd_kernel", dict(KIND_H=kind, HAS_BHH=True, HAS_MASK=True, SAVE=True), n_h, 4))
        out.append(("gru_bwd_kernel", dict(KIND_H=kind, HAS_MASK=True), n_h, 4))
        out.append(("gru_joint_fwd_kernel", dict(KIND_G=kind, KIND_N=kind, HAS_BIH=True, HAS_BHH=True,
                                                 HAS_MASK=True, SAVE=True), n_h, 2))
        out.append(("gru_joint_bwd_kernel", dict(KIND_G=kind, KIND_N=kind, HAS_MASK=True), n_h, 2))
        out.append(("rnn_fwd_kernel", dict(KIND_H=kind, HAS_BIAS=True, JOINT=True, RELU=kind == LAYER,
                                           HAS_MASK=True, SAVE=True), n_h, 1))
        out.append(("rnn_bwd_kernel", dict(KIND_H=kind, RELU=kind == LAYER, HAS_MASK=True), n_h, 1))
    # the branches without a mask, inference, no biases
    out.append(("lstm_fwd_kernel", dict(KIND_H=LAYER, KIND_C=NONE, HAS_BIAS=False, HAS_BC=False, JOINT=False,
                                        CARRY=False, HAS_MASK=False, SAVE=False), (32, 256), 4))
    out.append(("lstm_bwd_kernel", dict(KIND_H=LAYER, KIND_C=NONE, HAS_BC=False, CARRY=False, HAS_MASK=False),
                (32, 256), 4))
    return out


SM90_SHARED = 232448  # bytes of shared memory a block may use on sm_90


@pytest.fixture(scope="module")
def compiled_kernels():
    pytest.importorskip("triton.compiler", reason="this Triton has no triton.compiler")
    from normrnn.fused import triton_kernels

    return triton_kernels


@pytest.mark.parametrize("index", range(len(_variants())))
def test_kernels_compile_for_sm90(compiled_kernels, index):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, flags, (n, h), gates = _variants()[index]
    kinds = tuple(v for k, v in flags.items() if k.startswith("KIND"))
    grid, meta = eng._meta(n, h, gates, kinds)
    fn = getattr(compiled_kernels, name)
    constexprs = {**flags, "BN": meta["BN"], "BH": meta["BH"]}
    src = ASTSource(fn=fn, signature=_signature(fn, constexprs), constexprs=constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": meta["num_warps"]})
    assert "ptx" in k.asm and ".target sm_90" in k.asm["ptx"]
    assert k.metadata.shared <= SM90_SHARED, f"{name} {flags}: {k.metadata.shared} bytes of shared memory"
