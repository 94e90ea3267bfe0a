"""Deployment: ``torch.export`` of eval-mode layers of every cell and norm, a streaming step with its state and
step index as tensors, and ONNX through ``torch.onnx.export`` checked with onnxruntime against PyTorch."""
import pytest
import torch

import normrnn
from normrnn.export import StreamingStep
from rnn_helpers import make, randomize_norms

VARIANTS = [(kind, norm, terms) for kind in ["LSTM", "GRU", "RNN"] for norm in ["layer", "rms", "batch", "none"]
            for terms in ["separate", "joint"] if terms == "separate" or norm in ("layer", "batch")]


def _trained(kind, norm, terms, bidirectional=True):
    """An eval-mode float32 layer with norms off their initial values (batch norm: running statistics of 9
    steps, so that steps 9+ reuse the last one)."""
    torch.manual_seed(0)
    m = make(kind, 4, 6, 2, norm=norm, norm_terms=terms, bidirectional=bidirectional)
    randomize_norms(m)
    if norm == "batch":
        m(torch.randn(9, 5, 4))
    return m.eval()


def _state(kind, rows, batch):
    return tuple(torch.randn(rows, batch, 6) for _ in range(2 if kind == "LSTM" else 1))


@pytest.mark.parametrize("kind,norm,terms", VARIANTS, ids=str)
def test_torch_export_equals_eager(kind, norm, terms):
    """The exported graph (state in, state out) gives the eager layer's outputs and final state on new data, and
    holds no call outside ATen (the fused kernels are not traceable)."""
    m = _trained(kind, norm, terms)
    hx = _state(kind, 4, 3)
    hx = hx if kind == "LSTM" else hx[0]
    ep = torch.export.export(m, (torch.randn(12, 3, 4), hx))
    foreign = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"
               and not str(n.target).startswith(("aten.", "<built-in function getitem>"))}
    assert not foreign, foreign
    x = torch.randn(12, 3, 4)
    with torch.no_grad():
        want_out, want_h = m(x, hx)
        ref = make(kind, 4, 6, 2, norm=norm, norm_terms=terms, bidirectional=True, backend="reference").eval()
        ref.load_state_dict(m.state_dict())
        exact_out, exact_h = ref(x, hx)
    got_out, got_h = ep.module()(x, hx)
    # float32 over 12 steps of O(1) values: the graph's decomposed ops round differently from the eager reference
    # loop (and more so from the fused kernels) by a few ulps per step, 1e-6 relative at most here; an error in the
    # math (a wrong statistic, a dropped term) is of order 1e-2 or more
    got_states = got_h if isinstance(got_h, tuple) else (got_h,)
    for want in (exact_out, want_out):
        assert (got_out - want).norm() <= 1e-5 * want.norm()
    for got, want in zip(got_states, exact_h if isinstance(exact_h, tuple) else (exact_h,)):
        assert (got - want).norm() <= 1e-5 * want.norm()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_exported_streaming_step_equals_the_sequence(kind, norm):
    """An exported StreamingStep, called 12 times with its own state and step index, gives the whole-sequence
    forward: batch norm reads each step's running statistics, and the last trained one past them."""
    m = _trained(kind, norm, "separate", bidirectional=False)
    state, step = _state(kind, 2, 3), torch.tensor(0)
    ep = torch.export.export(StreamingStep(m), (torch.randn(3, 4), state, step))
    x = torch.randn(12, 3, 4)
    start = _state(kind, 2, 3)
    with torch.no_grad():
        want, _ = m(x, start if kind == "LSTM" else start[0])
    state, step, outs = start, torch.tensor(0), []
    for t in range(12):
        y, state, step = ep.module()(x[t], state, step)
        outs.append(y)
    assert int(step) == 12
    assert (torch.stack(outs) - want).norm() <= 1e-5 * want.norm()


def test_streaming_step_rejects_bidirectional():
    with pytest.raises(ValueError, match="unidirectional"):
        StreamingStep(normrnn.LSTM(4, 6, bidirectional=True))


@pytest.mark.parametrize("kind,norm,streaming", [("LSTM", "batch", True), ("GRU", "layer", False),
                                                 ("RNN", "rms", True)])
def test_onnx_export_runs_in_onnxruntime(kind, norm, streaming, tmp_path):
    """torch.onnx.export (the dynamo exporter) with a dynamic batch size; onnxruntime's outputs equal PyTorch's
    (float32: 1e-5 of the norm). Streaming: the state and step index go from one call into the next."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = _trained(kind, norm, "separate", bidirectional=not streaming)
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows = 2 if streaming else 4
    state = _state(kind, rows, 3)
    if streaming:
        module, args = StreamingStep(m), (torch.randn(3, 4), state, torch.tensor(0))
        dynamic = ({0: batch}, tuple({1: batch} for _ in state), None)
    else:
        module, args = m, (torch.randn(7, 3, 4), state if kind == "LSTM" else state[0])
        dynamic = ({1: batch}, tuple({1: batch} for _ in state) if kind == "LSTM" else {1: batch})
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, verbose=False)
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    x = torch.randn(7, 5, 4)  # another batch size than exported with
    with torch.no_grad():
        want, _ = m(x)
    if streaming:
        state, step, outs = [torch.zeros(rows, 5, 6).numpy() for _ in state], torch.tensor(0).numpy(), []
        for t in range(7):
            y, *state, step = session.run(None, dict(zip(names, [x[t].numpy(), *state, step])))
            outs.append(torch.from_numpy(y))
        got = torch.stack(outs)
    else:
        zeros = [torch.zeros(rows, 5, 6).numpy() for _ in state]
        got = torch.from_numpy(session.run(None, dict(zip(names, [x.numpy(), *zeros])))[0])
    assert (got - want).norm() <= 1e-5 * want.norm(), ((got - want).norm() / want.norm()).item()
