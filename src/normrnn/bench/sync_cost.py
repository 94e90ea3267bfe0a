"""What synchronising batch-norm statistics costs and buys, at 2 ranks on one machine (claim C7).

:func:`measure_sync_cost` trains the same small LSTM regressor on the adding problem in DDP (gloo over
loopback) with layer norm, batch norm with each rank's own statistics, and batch norm with synced statistics,
and reports per variant:

* ``step_ms``: median wall time of a training step (forward, backward with DDP's gradient all-reduce, update);
* ``norm_allreduce_bytes_per_step`` / ``_calls_per_step``: what the synced norms send in a training step
  (counted in :func:`normrnn.sync.all_reduce_sum`), split into ``forward_``/``backward_`` calls and bytes, and
  per time step of the sequence (``_per_time_step``); ``ddp_grad_bytes_per_step``: parameters x 4 bytes, as DDP
  all-reduces every float32 gradient once per step;
* ``allreduce_latency_ms_per_step``: those all-reduces times the median latency of one small all-reduce measured
  in the same launch (``allreduce_latency_us``, the report's): the part of a synced step that is waiting, whatever
  the loop (on a loaded machine each all-reduce waits for the peer process to be scheduled);
* ``valid_mse`` (eval mode, running statistics) and ``train_mse_last``: the accuracy effect when each rank's
  batch is tiny. Synced BN at R ranks with batch B computes exactly what one process with batch R·B would.

Synced layers run the fused loop, whose engines all-reduce each step's sums through the loop's reducer
(:mod:`normrnn.fused.contract`): the input term's batch norm once for all steps, then per time step one
all-reduce per batch norm of the loop (the LSTM's recurrent term and cell: two), forward and backward.
``bn_sync_reference`` runs the same synchronisation on the reference loop (one all-reduce per norm call, the same
count), and the report's ``sync_overhead_fused`` / ``sync_overhead_reference`` are the synced over the unsynced
step time on the same loop.

``python -m normrnn.bench.sync_cost [--out sync_cost.json]`` prints (and saves) the dict.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# name -> (norm, sync_stats, backend)
VARIANTS = {
    "ln": ("layer", False, "auto"),
    "bn_local": ("batch", False, "auto"),
    "bn_local_reference": ("batch", False, "reference"),
    "bn_sync": ("batch", True, "auto"),
    "bn_sync_reference": ("batch", True, "reference"),
}


class _Regressor(nn.Module):
    """LSTM over (N, T, 2) adding-problem input -> last state -> one number."""

    def __init__(self, norm: str, sync: bool, backend: str, hidden: int, seq_len: int) -> None:
        super().__init__()
        from ..layers import LSTM

        self.rnn = LSTM(2, hidden, batch_first=True, norm=norm, sync_stats=sync, backend=backend,
                        max_steps=seq_len)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(x)
        return self.head(h[-1]).squeeze(-1)


def _train_variant(rank: int, world: int, name: str, batch: int, seq_len: int, hidden: int, steps: int,
                   warmup: int, lr: float, seed: int) -> dict[str, Any]:
    import torch.distributed as dist

    from ..data import adding_problem
    from ..sync import COUNTER
    from ..train.distributed import no_buffer_sync

    norm, sync, backend = VARIANTS[name]
    torch.manual_seed(seed)
    model = _Regressor(norm, sync, backend, hidden, seq_len)
    ddp = nn.parallel.DistributedDataParallel(model, **no_buffer_sync())
    opt = torch.optim.Adam(ddp.parameters(), lr=lr)
    train = adding_problem(steps * batch * world, seq_len, seed=seed + 1)
    times, losses = [], []
    COUNTER.reset()
    fwd_calls = fwd_bytes = 0
    for step in range(steps):
        # global batch `step` of world·batch examples; this rank takes its slice
        start = (step * world + rank) * batch
        x, y = train.x[start:start + batch], train.y[start:start + batch]
        if step == warmup:
            COUNTER.reset()
        before = (COUNTER.calls, COUNTER.bytes)
        t0 = time.perf_counter()
        loss = F.mse_loss(ddp(x), y)
        if step >= warmup:
            fwd_calls, fwd_bytes = fwd_calls + COUNTER.calls - before[0], fwd_bytes + COUNTER.bytes - before[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))

    timed = steps - warmup
    params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {
        "norm": norm, "sync_stats": sync, "backend": model.rnn.active_backend(),
        "step_ms": 1e3 * statistics.median(times[warmup:]),
        "norm_allreduce_calls_per_step": COUNTER.calls / timed,
        "norm_allreduce_bytes_per_step": COUNTER.bytes / timed,
        "forward_allreduce_calls_per_step": fwd_calls / timed,
        "forward_allreduce_bytes_per_step": fwd_bytes / timed,
        "backward_allreduce_calls_per_step": (COUNTER.calls - fwd_calls) / timed,
        "backward_allreduce_bytes_per_step": (COUNTER.bytes - fwd_bytes) / timed,
        "norm_allreduce_calls_per_time_step": COUNTER.calls / timed / seq_len,
        "norm_allreduce_bytes_per_time_step": COUNTER.bytes / timed / seq_len,
        "ddp_grad_bytes_per_step": params * 4, "params": params,
    }
    # Accuracy: mean training loss of the last 20 % of steps (averaged over ranks) and rank 0's eval MSE.
    tail = torch.tensor([statistics.fmean(losses[-max(1, steps // 5):])])
    dist.all_reduce(tail)
    out["train_mse_last"] = float(tail) / world
    if rank == 0:
        valid = adding_problem(512, seq_len, seed=seed + 2)
        model.eval()
        with torch.no_grad():
            out["valid_mse"] = float(F.mse_loss(model(valid.x), valid.y))
    out["total_bytes_per_step"] = out["norm_allreduce_bytes_per_step"] + out["ddp_grad_bytes_per_step"]
    return out


def allreduce_latency_us(n: int = 200, numel: int = 129) -> float:
    """Median time (µs) of one all-reduce of ``numel`` float32 values (an LSTM step's [count | sum | sum of
    squares] at 16 units x 4 gates) in this group: the latency floor of each synchronised step, here, now."""
    import torch.distributed as dist

    t, times = torch.zeros(numel), []
    for i in range(n + 10):
        t0 = time.perf_counter()
        dist.all_reduce(t)
        if i >= 10:
            times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def _rank_main(rank: int, world: int, variants: list[str], latency_samples: int = 200, **kw: Any) -> dict[str, Any]:
    """Every variant in one launch (interpreter start-up would otherwise dominate); first the all-reduce latency."""
    out: dict[str, Any] = {"allreduce_latency_us": allreduce_latency_us(latency_samples)}
    out.update({name: _train_variant(rank, world, name, **kw) for name in variants})
    return out


def measure_sync_cost(world: int = 2, batch_per_rank: int = 2, seq_len: int = 20, hidden: int = 32,
                      steps: int = 150, warmup: int = 5, lr: float = 5e-3, seed: int = 0,
                      variants: tuple[str, ...] = tuple(VARIANTS), out: Optional[str] = None,
                      timeout: float = 300.0, latency_samples: int = 200) -> dict[str, Any]:
    """Train each variant for ``steps`` steps at ``world`` ranks x ``batch_per_rank`` and return a JSON-able
    dict (see the module docstring); ``out``: also write it there as JSON. One CPU thread per rank."""
    from ..multiproc import run_local

    t0 = time.perf_counter()
    kw = dict(batch=batch_per_rank, seq_len=seq_len, hidden=hidden, steps=steps, warmup=warmup, lr=lr,
              seed=seed, variants=list(variants), latency_samples=latency_samples)
    results = run_local("normrnn.bench.sync_cost:_rank_main", world, kw, timeout=timeout)
    rank0 = results[0]
    latency = max(res.pop("allreduce_latency_us") for res in results)
    for name, r in rank0.items():
        # a step waits for the slowest rank: report the larger median
        r["step_ms"] = max(res[name]["step_ms"] for res in results)
        # what the synced norms' all-reduces cost at the measured latency, if nothing overlapped them
        r["allreduce_latency_ms_per_step"] = r["norm_allreduce_calls_per_step"] * latency / 1e3
    report: dict[str, Any] = {
        "claim": "C7", "world_size": world, "backend": "gloo", "transport": "loopback (127.0.0.1)",
        "threads_per_rank": 1, "task": "adding", "batch_per_rank": batch_per_rank,
        "global_batch": world * batch_per_rank, "seq_len": seq_len, "hidden": hidden, "cell": "lstm",
        "steps": steps, "lr": lr, "seed": seed, "torch": torch.__version__, "allreduce_latency_us": latency,
        "variants": rank0,
        "baseline_mse_predict_1": 1 / 6,
    }
    # Synced over unsynced step time on the same loop: bn_sync runs the fused loop (bn_local's), bn_sync_reference
    # the reference loop.
    if "bn_sync" in rank0 and "bn_local" in rank0:
        report["sync_overhead_vs_bn_local"] = rank0["bn_sync"]["step_ms"] / rank0["bn_local"]["step_ms"]
        if rank0["bn_sync"]["backend"] == rank0["bn_local"]["backend"]:
            report["sync_overhead_fused"] = report["sync_overhead_vs_bn_local"]
    if "bn_sync_reference" in rank0 and "bn_local_reference" in rank0:
        report["sync_overhead_reference"] = (rank0["bn_sync_reference"]["step_ms"]
                                             / rank0["bn_local_reference"]["step_ms"])
    if "bn_sync" in rank0:
        same = next((v for v in ("bn_local", "bn_local_reference")
                     if v in rank0 and rank0[v]["backend"] == rank0["bn_sync"]["backend"]), None)
        if same is not None:
            report["sync_overhead_vs_same_loop"] = rank0["bn_sync"]["step_ms"] / rank0[same]["step_ms"]
    if "bn_sync" in rank0 and "bn_sync_reference" in rank0:
        report["fused_sync_speedup_vs_reference_sync"] = (rank0["bn_sync_reference"]["step_ms"]
                                                          / rank0["bn_sync"]["step_ms"])
    report["wall_s"] = time.perf_counter() - t0
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normrnn.bench.sync_cost", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the result to this JSON file")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-per-rank", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    a = p.parse_args(argv)
    print(json.dumps(measure_sync_cost(steps=a.steps, batch_per_rank=a.batch_per_rank, seq_len=a.seq_len,
                                       hidden=a.hidden, variants=tuple(a.variants.split(",")), out=a.out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
