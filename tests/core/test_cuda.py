"""On a CUDA device the layers run the fused backend's Triton engine (normrnn.fused.triton_engine: one GEMM and one
fused kernel per step, the time loop captured as CUDA graphs), or its PyTorch engine where Triton is missing (the
C++ kernels are CPU code). Every variant must there equal the readable reference loop run on the CPU: outputs,
final states, gradients and batch norm's running statistics, in training and in eval, with padding and both
directions. The Triton-specific tests at the end (graph cache, half precision, autocast + GradScaler) need a GPU;
the kernels' arithmetic is also checked without one, under Triton's interpreter (test_triton_engine.py).

The CUDA tests are skipped where no GPU is present (CI has none); on a GPU machine: ``pytest
tests/core/test_cuda.py``. The checks take the device as an argument, and the ``test_cpu_*`` tests run every one
of them on CPU tensors through the engine CUDA uses (the PyTorch engine, with the native kernels out of reach as
they are for CUDA tensors), so the CUDA path's code is exercised on every machine.
"""
import pytest
import torch
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import normrnn
from normrnn import fused
from normrnn.fused import cuda_graphs, select
from rnn_helpers import fused_variants, make, outputs_and_grads, randomize_norms, reference_and_twin, twin_inputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_engine_on_cpu(monkeypatch):
    """CPU tensors through what CUDA tensors get: the fused backend's PyTorch engine, and no native kernel
    anywhere (RMSNorm's fused pass included)."""
    monkeypatch.setattr(fused.native, "load", lambda: None)
    with fused.force_engine("torch"):
        yield


def _on(device, value):
    if isinstance(value, tuple):
        return tuple(_on(device, v) for v in value)
    return value.detach().to(device).requires_grad_(value.requires_grad)


def check_against_cpu_reference(device: str, backend: str, kind: str, norm: str, terms: str, extra: dict,
                                training: bool) -> None:
    ref, other = reference_and_twin(kind, norm, terms, extra, training, backend, device)
    if backend == "fused" and device != "cpu":
        assert other.active_backend() == ("fused-triton" if select.triton_available() else "fused-torch")
    elif backend == "fused" and fused.native.load() is None:
        assert other.active_backend() == "fused-torch"
    x, hx, lengths, weights = twin_inputs(kind)
    outs_o, grads_o = outputs_and_grads(other, _on(device, x), _on(device, hx), lengths, weights.to(device))
    outs_r, grads_r = outputs_and_grads(ref, x, hx, lengths, weights)
    for a, b in zip(outs_o + list(grads_o), outs_r + list(grads_r)):
        assert a.device.type == torch.device(device).type
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)
    for a, b in zip(other.buffers(), ref.buffers()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


def check_float32_realistic_shape(device: str, kind: str, norm: str) -> None:
    """float32 on the device against the float32 reference on the CPU, relative 1e-4 in norm."""
    torch.manual_seed(1)
    ref = make(kind, 64, 128, norm=norm, backend="reference")
    other = make(kind, 64, 128, norm=norm, device=device)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(50, 16, 64, requires_grad=True)
    xd = _on(device, x)
    out_o, _ = other(xd)
    g_o = torch.autograd.grad(out_o.pow(2).mean(), [xd, *other.parameters()])
    out_r, _ = ref(x)
    g_r = torch.autograd.grad(out_r.pow(2).mean(), [x, *ref.parameters()])
    for a, b in zip([out_o, *g_o], [out_r, *g_r]):
        assert (a.cpu() - b).norm() <= 1e-4 * b.norm(), ((a.cpu() - b).norm() / b.norm()).item()


def check_gradcheck(device: str, norm: str) -> None:
    """float64 gradcheck of a 2-layer bidirectional LSTM with padding, on the device."""
    torch.manual_seed(2)
    m = normrnn.LSTM(3, 4, 2, norm=norm, bidirectional=True, dtype=torch.float64, device=device)
    randomize_norms(m)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(5, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def fn(x, *ps):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x,), dict(lengths=lengths))
        return out, h, c

    assert gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def check_packed_and_streaming(device: str, norm: str) -> None:
    """A PackedSequence on the device equals padding + lengths; ``step`` equals the sequence in eval."""
    torch.manual_seed(4)
    m = normrnn.LSTM(4, 6, norm=norm, device=device)
    if norm == "batch":
        m(torch.randn(9, 5, 4, device=device))
    x = torch.randn(9, 3, 4, device=device)
    lengths = torch.tensor([9, 4, 6])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_p, (h_p, _) = m(packed)
    padded, got_lengths = pad_packed_sequence(out_p)
    out_l, (h_l, _) = m(x, lengths=lengths)
    assert torch.equal(got_lengths, lengths)
    mask = (torch.arange(9)[:, None] < lengths).to(device)[..., None]
    torch.testing.assert_close(padded * mask, out_l * mask, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_p, h_l, rtol=1e-5, atol=1e-6)
    m.eval()
    with torch.no_grad():
        expected, _ = m(x)
        state, steps = None, []
        for t in range(x.shape[0]):
            y, state = m.step(x[t], state)
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind,norm,terms,extra", list(fused_variants()), ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_cuda_equals_cpu_reference(backend, kind, norm, terms, extra, training):
    check_against_cpu_reference("cuda", backend, kind, norm, terms, extra, training)


@needs_cuda
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_cuda_float32_realistic_shape(kind, norm):
    check_float32_realistic_shape("cuda", kind, norm)


@needs_cuda
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_cuda_gradcheck(norm):
    check_gradcheck("cuda", norm)


@needs_cuda
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_cuda_packed_sequence_and_streaming(norm):
    check_packed_and_streaming("cuda", norm)


# ---------------------------------------------------------------------------------------------- the Triton engine

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() and select.triton_available()),
                                  reason="needs a CUDA device and Triton")


def _lstm_pair(norm="layer", **kw):
    torch.manual_seed(11)
    ref = normrnn.LSTM(8, 16, norm=norm, backend="reference", **kw)
    randomize_norms(ref)
    gpu = normrnn.LSTM(8, 16, norm=norm, device="cuda", **kw)
    gpu.load_state_dict(ref.state_dict())
    return ref, gpu


@needs_triton
def test_cuda_graph_cache_reuse_and_invalidation():
    """The time loop is captured once per shape and replayed; a new shape is a new graph; a replaced or modified
    parameter is read fresh (every call copies all tensor arguments into the graph's inputs)."""
    cuda_graphs.clear()
    ref, gpu = _lstm_pair()
    assert gpu.active_backend() == "fused-triton"
    x = torch.randn(10, 4, 8)
    xd = x.cuda()

    def check():
        with torch.no_grad():
            torch.testing.assert_close(gpu(xd)[0].cpu(), ref(x)[0], rtol=1e-4, atol=1e-5)

    check()  # first call: no graph yet
    assert cuda_graphs.cache_info()["misses"] == 0 and cuda_graphs.cache_info()["eager"] >= 1
    check()  # second: captured
    misses = cuda_graphs.cache_info()["misses"]
    assert misses >= 1
    check()  # third: replayed
    info = cuda_graphs.cache_info()
    assert info["misses"] == misses and info["hits"] >= 1
    with torch.no_grad():  # a parameter replaced by a new tensor, then one changed in place
        w = torch.randn_like(ref.weight_hh_l0) * 0.3
        ref.weight_hh_l0 = torch.nn.Parameter(w)
        gpu.weight_hh_l0 = torch.nn.Parameter(w.cuda())
        check()
        ref.bias_hh_l0.add_(0.5)
        gpu.bias_hh_l0.add_(0.5)
        check()
    assert cuda_graphs.cache_info()["misses"] == misses
    x = torch.randn(13, 4, 8)
    xd = x.cuda()
    check()  # a new length: a new graph, captured on its second call
    check()
    assert cuda_graphs.cache_info()["misses"] > misses
    # training: forward and backward graphs, gradients equal the reference's
    ref.train(), gpu.train()
    xr = x.clone().requires_grad_()
    xg = xd.clone().requires_grad_()
    for _ in range(3):  # eager, captured, replayed
        g_r = torch.autograd.grad(ref(xr)[0].pow(2).sum(), [xr, *ref.parameters()])
        g_g = torch.autograd.grad(gpu(xg)[0].pow(2).sum(), [xg, *gpu.parameters()])
        for a, b in zip(g_g, g_r):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)
    assert len(cuda_graphs._cache) <= cuda_graphs.MAX_GRAPHS


@needs_triton
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_cuda_bf16_agrees_with_float32(kind):
    """bf16 parameters and input against float32 on the same rounded values: the layers compute in float32
    inside, so the outputs agree to a few bf16 roundings."""
    torch.manual_seed(12)
    m32 = make(kind, 16, 32, norm="layer", device="cuda")
    m16 = make(kind, 16, 32, norm="layer", device="cuda", dtype=torch.bfloat16)
    m16.load_state_dict(m32.state_dict())
    m32.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in m16.state_dict().items()})
    x = torch.randn(20, 8, 16, device="cuda").to(torch.bfloat16)
    a, b = m16(x)[0], m32(x.float())[0]
    assert a.dtype == torch.bfloat16
    assert ((a.float() - b).norm() / b.norm()).item() < 2e-2


@needs_triton
def test_cuda_autocast_and_grad_scaler():
    """A short fp16 autocast training run with GradScaler: finite, decreasing loss; an inf in the input makes
    the scaler skip that step (NaN/inf propagate to the gradients, as in nn.LSTM) and the weights stay."""
    torch.manual_seed(13)
    m = normrnn.LSTM(8, 16, norm="layer", device="cuda")
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(12, 4, 8, device="cuda")
    losses = []
    for step in range(6):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            out = m(x)[0]
            assert out.dtype == torch.float16
            loss = out.float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    before = [p.detach().clone() for p in m.parameters()]
    scale = scaler.get_scale()
    bad = x.clone()
    bad[3, 1, 2] = float("inf")
    opt.zero_grad()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = m(bad)[0].float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    for p, q in zip(m.parameters(), before):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------------------------- the same on the CPU
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind,norm,terms,extra", list(fused_variants()), ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_cpu_equals_cpu_reference(cuda_engine_on_cpu, backend, kind, norm, terms, extra, training):
    check_against_cpu_reference("cpu", backend, kind, norm, terms, extra, training)


@pytest.mark.parametrize("kind,norm", [("LSTM", "layer"), ("GRU", "rms")])  # (sampled: the torch engine is slow)
def test_cpu_float32_realistic_shape(cuda_engine_on_cpu, kind, norm):
    check_float32_realistic_shape("cpu", kind, norm)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_cpu_gradcheck(cuda_engine_on_cpu, norm):
    check_gradcheck("cpu", norm)


@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_cpu_packed_sequence_and_streaming(cuda_engine_on_cpu, norm):
    check_packed_and_streaming("cpu", norm)


def test_cuda_without_triton_falls_back_to_the_torch_engine_with_one_warning(monkeypatch):
    """Where Triton does not import, CUDA tensors get the PyTorch engine and one warning (select decides from the
    device type alone, so this runs without a GPU)."""
    import sys
    import warnings

    monkeypatch.setattr(select, "_triton", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # (import triton raises ImportError)
    with pytest.warns(RuntimeWarning, match="Triton is not available"):
        assert select.engine(torch.device("cuda")) is fused.torch_engine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select.engine(torch.device("cuda")) is fused.torch_engine
    with pytest.raises(RuntimeError, match="Triton"), fused.force_engine("triton"):
        select.engine(torch.device("cuda"))


def test_cpu_runs_import_no_triton():
    """A CPU install gains no dependency: training and inference on CPU tensors never import Triton."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch, normrnn\n"
            "m = normrnn.LSTM(4, 8, norm='layer', backend='fused')\n"
            "m(torch.randn(3, 2, 4, requires_grad=True))[0].sum().backward()\n"
            "m.eval(); m(torch.randn(3, 2, 4))\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    src = str(Path(normrnn.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": src})
    assert r.returncode == 0, r.stderr[-2000:]
