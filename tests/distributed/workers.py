"""What each rank runs in the distributed tests (imported by name in fresh processes, see normrnn.multiproc).

Every worker builds the same model from the same seed as the single-process reference the test computes, takes
its rank's share of the batch, and returns tensors for the parent to compare.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

import normrnn
from normrnn.sync import COUNTER, sync_batch_norm
from normrnn.train.distributed import no_buffer_sync

T, N, I, H = 7, 8, 3, 5  # steps, global batch, input, hidden


def sample(seed: int = 1) -> dict[str, Tensor]:
    """A global batch: x (T, N, I), a projection for the loss (T, N, H), lengths (N,) with short tails, so that
    some late steps have a single running sequence per rank (global stats usable, local ones not) and the last
    step only one in the whole batch (running-stat fallback everywhere)."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(T, N, I, generator=g) * 2 + 0.5, "proj": torch.randn(T, N, H, generator=g),
            "lengths": torch.tensor([7, 4, 3, 2, 6, 5, 3, 2])}


def build_lstm(sync: bool, seed: int = 0) -> nn.Module:
    """The LSTM of the synced-BN tests (backend "auto": the fused native loop where the kernels build)."""
    torch.manual_seed(seed)
    return normrnn.LSTM(I, H, norm="batch", sync_stats=sync, max_steps=T)


def sync_bn_step(model: nn.Module, x: Tensor, proj: Tensor, lengths: Optional[Tensor]) -> dict[str, Any]:
    """One forward/backward of a sum loss; returns outputs, input and parameter grads and the buffers."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out, (h, c) = model(x, lengths=lengths)
    loss = (out * proj).sum() + h.sum() + 0.5 * c.sum()
    loss.backward()
    return {"out": out.detach(), "h": h.detach(), "x_grad": x.grad,
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


def sync_bn_worker(rank: int, world: int) -> dict[str, Any]:
    """Each rank: its N/world columns, padded and unpadded, two training steps each (running stats evolve)."""
    data, B = sample(), N // world
    cols = slice(rank * B, (rank + 1) * B)
    result: dict[str, Any] = {}
    for case, lengths in (("full", None), ("padded", data["lengths"][cols])):
        model = build_lstm(sync=True)
        result[f"{case}_backend"] = model.active_backend()
        steps = [sync_bn_step(model, data["x"][:, cols], data["proj"][:, cols], lengths) for _ in range(2)]
        result[case] = steps
    fused = normrnn.LSTM(I, H, norm="batch", sync_stats=True, backend="fused")
    try:
        fused(data["x"][:, cols])
        result["fused_error"] = None
    except ValueError as e:
        result["fused_error"] = str(e)
    result["counter"] = counter_worker(rank, world)
    return result


def ddp_pair_worker(rank: int, world: int, steps: int) -> dict[str, Any]:
    """LN DDP and synced-BN DDP, one launch (process start-up dominates these tests)."""
    return {"layer": ddp_worker(rank, world, "layer", False, steps),
            "batch": ddp_worker(rank, world, "batch", True, steps)}


def ddp_worker(rank: int, world: int, norm: str, sync: bool, steps: int) -> dict[str, Any]:
    """DDP training of a small classifier on rank's half of each global batch; returns losses (all-reduced mean)
    and the final parameters."""
    model, batches = ddp_setup(norm, sync)
    ddp = nn.parallel.DistributedDataParallel(model, **no_buffer_sync())
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    B = batches[0][0].shape[1] // world
    cols = slice(rank * B, (rank + 1) * B)
    losses = []
    for x, lengths, y in batches[:steps]:
        loss = ddp_loss(ddp, x[:, cols], lengths[cols], y[cols])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    return {"losses": losses, "params": {k: p.detach().clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


class Classifier(nn.Module):
    def __init__(self, norm: str, sync: bool) -> None:
        super().__init__()
        self.rnn = normrnn.GRU(I, H, norm=norm, sync_stats=sync, max_steps=T)
        self.head = nn.Linear(H, 3)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        _, h = self.rnn(x, lengths=lengths)
        return self.head(h[-1])


def ddp_setup(norm: str, sync: bool) -> tuple[nn.Module, list[tuple[Tensor, Tensor, Tensor]]]:
    torch.manual_seed(0)
    model = Classifier(norm, sync)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(T, N, I, generator=g), torch.randint(2, T + 1, (N,), generator=g),
                torch.randint(0, 3, (N,), generator=g)) for _ in range(6)]
    return model, batches


def ddp_loss(model: nn.Module, x: Tensor, lengths: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x, lengths), y)


def trainer_worker(rank: int, world: int, config: dict, out_full: str, out_cut: str, cut: int) -> dict[str, Any]:
    """The Trainer in DDP: an uninterrupted run, a run stopped at ``cut`` steps, and its resume."""
    from normrnn.train import LossRecorder, TrainConfig, train

    events: dict[str, list] = {}

    def hook(event: str, record: dict) -> None:
        events.setdefault(event, []).append(record)

    base = dict(config, rank=rank, world_size=world, progress=False, tensorboard=False)
    full, cut_rec, resumed = LossRecorder(), LossRecorder(), LossRecorder()
    train(TrainConfig(**base, out=out_full), hooks=[full, hook])
    train(TrainConfig(**{**base, "max_steps": cut}, out=out_cut), hooks=[cut_rec])
    summary = train(TrainConfig(**base, out=out_cut), hooks=[resumed], resume=True)
    return {"full": full.losses, "cut": cut_rec.losses, "resumed": resumed.losses, "summary": summary,
            "checkpoint_events": len(events.get("checkpoint", []))}


def hung_peer_worker(rank: int, world: int, sleep: float) -> dict[str, Any]:
    """Rank 1 never joins the collective; rank 0's must fail once the process-group timeout passes."""
    if rank == 1:
        time.sleep(sleep)
        return {"error": None, "elapsed": 0.0}
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        error = None
    except Exception as e:  # noqa: BLE001 - any error is the point: not a hang
        error = f"{type(e).__name__}: {e}"
    return {"error": error, "elapsed": time.monotonic() - t0}


def counter_worker(rank: int, world: int) -> dict[str, int]:
    """Bytes the synced norms all-reduce in one forward/backward of the test LSTM."""
    model = sync_batch_norm(build_lstm(sync=False))
    data = sample()
    COUNTER.reset()
    sync_bn_step(model, data["x"][:, :N // world], data["proj"][:, :N // world], None)
    return COUNTER.snapshot()


def raise_on_rank1(rank: int, world: int) -> None:
    """Rank 1 raises while rank 0 waits in a collective: the launcher must stop both."""
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    dist.all_reduce(torch.ones(1))


# ------------------------------------------------------------------------------------------------ fused synced BN
# Synchronised batch norm on the fused engines (and the reference loop, for comparison): every loop kind, with and
# without padding, two training steps each; the all-reduces of each step's forward and backward are counted.

FUSED_CASES: dict[str, tuple[str, dict]] = {
    "lstm": ("LSTM", {}),
    "lstm_joint": ("LSTM", {"norm_terms": "joint", "carry_normalized_cell": True}),
    "gru": ("GRU", {}),
    "gru_joint": ("GRU", {"norm_terms": "joint"}),
    "rnn": ("RNN", {}),
    "rnn_joint": ("RNN", {"norm_terms": "joint", "nonlinearity": "relu"}),
}


def build_case(case: str, sync: bool, engine: str, seed: int = 0) -> nn.Module:
    """The layer of ``case`` with batch norm; ``engine`` "native"/"torch" runs the fused backend, "reference" the
    reference loop."""
    torch.manual_seed(seed)
    cls, kw = FUSED_CASES[case]
    backend = "reference" if engine == "reference" else "fused"
    return getattr(normrnn, cls)(I, H, norm="batch", sync_stats=sync, max_steps=T, backend=backend, **kw)


def counted_step(model: nn.Module, x: Tensor, proj: Tensor, lengths: Optional[Tensor]) -> dict[str, Any]:
    """One forward/backward of a sum loss over the outputs and the final state(s); returns outputs, input and
    parameter grads, buffers and the all-reduces (calls, bytes) of the forward and of the backward."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    c0 = COUNTER.snapshot()
    out, state = model(x, lengths=lengths)
    c1 = COUNTER.snapshot()
    states = state if isinstance(state, tuple) else (state,)
    loss = (out * proj).sum() + sum((0.5 ** i) * (s * (i + 1.5)).sum() for i, s in enumerate(states))
    loss.backward()
    c2 = COUNTER.snapshot()
    return {"out": out.detach(), "state": [s.detach() for s in states], "x_grad": x.grad,
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()},
            "forward": {k: c1[k] - c0[k] for k in c0}, "backward": {k: c2[k] - c1[k] for k in c0}}


def fused_sync_run(case: str, engine: str, padded: bool, cols: slice, lengths: Optional[Tensor],
                   sync: bool = True) -> dict[str, Any]:
    """Two training steps of ``case`` on the columns ``cols`` of the sample batch."""
    from normrnn.fused.select import force_engine

    data = sample()
    with force_engine(None if engine == "reference" else engine):
        model = build_case(case, sync, engine)
        backend = model.active_backend()
        steps = [counted_step(model, data["x"][:, cols], data["proj"][:, cols],
                              lengths[cols] if padded else None) for _ in range(2)]
    return {"backend": backend, "steps": steps}


def sync_fused_worker(rank: int, world: int, cases: list, engines: list) -> dict[str, Any]:
    """Each rank: its N/world columns (lengths differing across ranks), every case x engine x padding."""
    data, B = sample(), N // world
    cols = slice(rank * B, (rank + 1) * B)
    return {(case, engine, padded): fused_sync_run(case, engine, padded, cols, data["lengths"])
            for case in cases for engine in engines for padded in (False, True)}
