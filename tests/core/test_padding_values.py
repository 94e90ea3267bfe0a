"""Whatever padded positions hold (NaN, inf, huge values), they must reach no output, no final state, no gradient
and no batch-norm statistic, in every backend and engine: padding is not data. Valid positions are untouched:
a NaN there must still show (masking is by selection, never by multiplying with a 0/1 mask)."""
import math

import pytest
import torch

from normrnn import fused
from rnn_helpers import fused_variants, initial_state, make, randomize_norms

BACKENDS = [pytest.param("reference", None, id="reference"), pytest.param("fused", "torch", id="fused-torch"),
            pytest.param("fused", "native", id="fused-native", marks=pytest.mark.native)]
POISONS = [math.nan, math.inf, -1e300]


def _run(m, x, hx, lengths, weights, engine):
    x = x.detach().clone().requires_grad_()
    with fused.force_engine(engine):
        out, h = m(x, hx, lengths=lengths)
        states = h if isinstance(h, tuple) else (h,)
        loss = (out * weights).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(states))
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [out, *states], grads


def _variants():
    seen = set()
    for kind, norm, terms, extra in fused_variants():
        if not extra and (kind, norm, terms) not in seen:
            seen.add((kind, norm, terms))
            yield kind, norm, terms


@pytest.mark.parametrize("backend,engine", BACKENDS)
@pytest.mark.parametrize("kind,norm,terms", list(_variants()), ids=str)
def test_padding_contents_never_matter(backend, engine, kind, norm, terms):
    torch.manual_seed(0)
    kw = dict(norm=norm, norm_terms=terms, dtype=torch.float64, bidirectional=True)
    m = make(kind, 3, 5, 2, backend=backend, **kw)
    randomize_norms(m)
    T, N = 6, 4
    x = torch.randn(T, N, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1])
    pad = torch.arange(T).unsqueeze(1) >= lengths  # (T, N)
    hx = initial_state(kind, 4, N, 5, torch.float64)
    weights = torch.randn(T, N, 10, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    clean, clean_grads = _run(m, x, hx, lengths, weights, engine)
    clean_buffers = [b.clone() for b in m.buffers()]
    assert all(torch.isfinite(t).all() for t in [*clean, *clean_grads])
    for poison in POISONS:
        m.load_state_dict(state)  # (batch norm's running statistics moved in the clean run)
        dirty = x.clone()
        dirty[pad] = poison
        got, grads = _run(m, dirty, hx, lengths, weights, engine)
        for a, b in zip(got, clean):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda s: f"padding = {poison}: {s}")
        assert (got[0][pad] == 0).all()
        for a, b in zip(grads, clean_grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda s: f"padding = {poison}: {s}")
        for a, b in zip(m.buffers(), clean_buffers):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda s: f"padding = {poison}: {s}")


@pytest.mark.parametrize("backend,engine", BACKENDS)
def test_nan_in_a_valid_position_still_shows(backend, engine):
    """Masking must select, not multiply: a NaN in a valid input reaches that sequence's output."""
    torch.manual_seed(1)
    m = make("LSTM", 3, 5, backend=backend, norm="layer", dtype=torch.float64)
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    x[1, 0, 0] = math.nan
    with torch.no_grad(), fused.force_engine(engine):
        out, _ = m(x, lengths=torch.tensor([4, 2, 3]))
    assert out[1:, 0].isnan().all()
    assert torch.isfinite(out[:, 1:]).all()


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("synced", [False, True])
def test_batch_norm_statistics_ignore_padding(poison, synced, monkeypatch):
    """RecurrentBatchNorm called directly (as the cells call it on a step's rows): padded rows holding NaN or inf
    change neither the normalized valid rows, nor the running statistics, nor the gradient. ``synced``: the
    synchronised moments (normrnn.sync), on one process with the all-reduce as the identity."""
    from normrnn import sync
    from normrnn.norms import RecurrentBatchNorm

    if synced:
        monkeypatch.setattr(sync, "is_active", lambda group=None: True)
        monkeypatch.setattr(sync, "all_reduce_sum", lambda t, group=None: t)
    torch.manual_seed(2)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 1, 0, 1, 1]], dtype=torch.bool)
    weights = torch.randn(3, 5, 4, dtype=torch.float64)
    results = []
    for value in (None, poison):
        norm = RecurrentBatchNorm(4, max_steps=8, dtype=torch.float64, sync_stats=synced)
        xi = x.clone()
        if value is not None:
            xi[~mask] = value
        xi.requires_grad_()
        y = norm(xi, 0, mask)
        grads = torch.autograd.grad((torch.where(mask.unsqueeze(-1), y, 0) * weights).sum(),
                                    [xi, norm.weight, norm.bias])
        results.append((y[mask], grads[0][mask], *grads[1:], norm.running_mean.clone(), norm.running_var.clone()))
    for a, b in zip(*results):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_direction_ignores_padding_values(kind, reverse):
    """The reference loop on its own (the definition the engines are tested against): padded input holding NaN
    changes no output (zero there), no final state and no gradient."""
    from normrnn import reference

    torch.manual_seed(3)
    m = make(kind, 3, 4, norm="batch", dtype=torch.float64, backend="reference")
    randomize_norms(m)
    p = m._cell(0, 0)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 3])
    mask = torch.arange(5).unsqueeze(1) < lengths
    h0 = tuple(torch.zeros(3, 4, dtype=torch.float64) for _ in range(2 if kind == "LSTM" else 1))
    results = []
    for poison in (None, math.nan):
        xi = x.clone()
        if poison is not None:
            xi[~mask] = poison
        xi.requires_grad_()
        out, state = reference.run_direction(p, xi, h0, mask, lengths, reverse=reverse, training=True)
        grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in state), [xi, *m.parameters()])
        results.append([out, *state, grads[0][mask], *grads[1:]])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
