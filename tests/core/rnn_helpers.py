"""Small shared builders for the core tests."""
import itertools

import torch

import normrnn

CLASSES = {"LSTM": normrnn.LSTM, "GRU": normrnn.GRU, "RNN": normrnn.RNN}
NN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


def make(kind: str, *args, **kwargs):
    return CLASSES[kind](*args, **kwargs)


def initial_state(kind: str, rows: int, batch: int, hidden: int, dtype=torch.float32):
    h = torch.randn(rows, batch, hidden, dtype=dtype)
    return (h, torch.randn(rows, batch, hidden, dtype=dtype)) if kind == "LSTM" else h


def randomize_norms(module: torch.nn.Module) -> None:
    """Move every norm parameter away from its initial value so tests see the gains and biases act."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("norm_") or ".norm" in name or name.split(".")[0].startswith("norm"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)


def fused_variants():
    """(kind, norm, norm_terms, extra options) of every variant the fused backend covers."""
    for kind, norm, terms in itertools.product(["LSTM", "GRU", "RNN"], ["layer", "rms", "batch", "none"],
                                               ["separate", "joint"]):
        yield kind, norm, terms, {}
    for norm in ["layer", "batch", "rms"]:
        yield "LSTM", norm, "separate", dict(norm_cell=False)
        yield "LSTM", norm, "separate", dict(carry_normalized_cell=True)
    yield "RNN", "layer", "separate", dict(nonlinearity="relu")
    yield "LSTM", "layer", "separate", dict(bias=False)
    yield "GRU", "layer", "separate", dict(bias=False)
    yield "GRU", "layer", "joint", dict(bias=False)
    yield "GRU", "batch", "joint", dict(bias=False)


def outputs_and_grads(m, x, hx, lengths, weights):
    """Outputs and final states of ``m(x, hx, lengths=lengths)``, and the gradients of a weighted sum of them
    with respect to the input, the initial state and every parameter."""
    out, h = m(x, hx, lengths=lengths)
    states = h if isinstance(h, tuple) else (h,)
    # random weights on every output, padded positions included: their gradient must be dropped, not leaked
    loss = (out * weights).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(states))
    inputs = [x] + list(hx if isinstance(hx, tuple) else (hx,)) + list(m.parameters())
    return [out, *states], torch.autograd.grad(loss, inputs)


def reference_and_twin(kind: str, norm: str, terms: str, extra: dict, training: bool, backend: str = "fused",
                       device=None):
    """A 2-layer bidirectional float64 layer (3 -> 5) on the reference loop, its norms moved off their initial
    values (batch norm: with running statistics), and its twin with ``backend`` on ``device``, loaded with the
    same state; both in training or eval mode. Then the inputs of :func:`twin_inputs`."""
    torch.manual_seed(0)
    kw = dict(norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True, **extra)
    ref = make(kind, 3, 5, 2, backend="reference", **kw)
    randomize_norms(ref)
    if norm == "batch":  # non-trivial running statistics for eval and for steps with < 2 running sequences
        ref(torch.randn(7, 6, 3, dtype=torch.float64))
    twin = make(kind, 3, 5, 2, backend=backend, device=device, **kw)
    twin.load_state_dict(ref.state_dict())
    ref.train(training), twin.train(training)
    return ref, twin


def twin_inputs(kind: str):
    """Input (7, 4, 3), initial state, lengths and output weights for :func:`reference_and_twin`'s layers, on the
    CPU, with the input and the state requiring gradients."""
    x = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)
    hx = initial_state(kind, 4, 4, 5, torch.float64)
    hx = tuple(s.requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    return x, hx, torch.tensor([7, 3, 1, 5]), torch.randn(7, 4, 10, dtype=torch.float64)


def stream(m, x, state=None):
    """x (T, N, F) through ``m.step`` one step at a time: the stacked outputs and the last state."""
    outs = []
    for t in range(x.shape[0]):
        y, state = m.step(x[t], state)
        outs.append(y)
    return torch.stack(outs), state


def native_results(m, x, lengths):
    """On the native engine: the training output, the eval output (no grad) and the gradients of out² with
    respect to x and every parameter; ``x`` is copied (a leaf of its own)."""
    from normrnn import fused

    x = x.detach().clone().requires_grad_()
    with fused.force_engine("native"):
        out, _ = m(x, lengths=lengths)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *m.parameters()])
        m.eval()
        with torch.no_grad():
            infer, _ = m(x, lengths=lengths)
        m.train()
    return [out, infer, *grads]


def change_the_layer(m, check, input_size: int, batch_norm: bool) -> None:
    """The changes a streaming plan must follow, ``check()`` after each: an in-place update of every parameter (as
    an optimizer does), a replaced parameter (``bias_hh_l1``), with batch norm 6 trained steps (later steps then
    read their own statistics rows), and a cast to float64. ``m`` is in eval mode."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    check()
    m.bias_hh_l1 = torch.nn.Parameter(torch.randn(m.bias_hh_l1.shape[0]))
    check()
    if batch_norm:
        with torch.enable_grad():
            m.train()
            m(torch.randn(6, 4, input_size))
            m.eval()
        check()
    m.double()
    check()
