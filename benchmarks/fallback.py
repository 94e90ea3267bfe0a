#!/usr/bin/env python
"""How fast is the pure-PyTorch fused engine (the fallback when the C++ kernels cannot be built)?

``python benchmarks/fallback.py [--shapes 100x32x256,200x8x128] [--rounds 10]``

LN-LSTM forward+backward, in one process, interleaved rounds, median of per-round ratios to ``nn.LSTM``:

* ``fused, PyTorch engine``: ``backend="fused"`` under ``normrnn.fused.force_engine("torch")``;
* ``fused, native engine``: the C++ kernels, for scale;
* ``reference``: ``backend="reference"``, normrnn's readable loop, which already computes the input projection and
  its norm for all steps at once;
* ``plain eager loop``: the textbook LN-LSTM (Ba et al.) written step by step, both projections and their layer
  norms inside the loop, as haste's PyTorch layer runs on a CPU: the "eager reference" of the speed issue.

Writes ``fallback.json`` and ``fallback.md`` to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

try:
    import normrnn  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch
import torch.nn.functional as F
from torch import nn

import normrnn
from normrnn.bench.report import atomic_write, machine_info
from normrnn.bench.speed import parse_shapes


class EagerLNLSTM(nn.Module):
    """LN-LSTM as usually hand-written: per step W_x x and W_h h, each layer-normed, then gates and a normed cell."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        G = 4 * hidden_size
        self.w_ih = nn.Parameter(torch.randn(G, input_size) / input_size ** 0.5)
        self.w_hh = nn.Parameter(torch.randn(G, hidden_size) / hidden_size ** 0.5)
        self.bias = nn.Parameter(torch.zeros(G))
        self.ln_ih, self.ln_hh, self.ln_c = nn.LayerNorm(G), nn.LayerNorm(G), nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H = x.shape[1], self.w_hh.shape[1]
        h = c = x.new_zeros(N, H)
        outs = []
        for x_t in x.unbind(0):
            gates = self.ln_ih(F.linear(x_t, self.w_ih)) + self.ln_hh(F.linear(h, self.w_hh)) + self.bias
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
            outs.append(h)
        return torch.stack(outs)


def _runners(T: int, N: int, H: int):
    x = torch.randn(T, N, H, requires_grad=True)
    base = nn.LSTM(H, H)
    fused = normrnn.LSTM(H, H, norm="layer", backend="fused")
    ref = normrnn.LSTM(H, H, norm="layer", backend="reference")
    eager = EagerLNLSTM(H, H)

    def train(module):
        def run():
            out = module(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        return run

    def with_torch_engine():
        with normrnn.fused.force_engine("torch"):
            train(fused)()

    return {"nn.LSTM": train(base), "fused, native engine": train(fused), "fused, PyTorch engine": with_torch_engine,
            "reference": train(ref), "plain eager loop": train(eager)}


def measure(shape: tuple[int, int, int], rounds: int, warmup: int) -> dict:
    runs = _runners(*shape)
    names = list(runs)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no configuration always goes first
        for name in order:
            t = time.perf_counter()
            runs[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    base = times["nn.LSTM"]
    rows = {}
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], base))
        rows[name] = {"ms": 1e3 * statistics.median(times[name]), "ratio_vs_nn_lstm": ratio}
    for name in names:
        rows[name]["speedup_of_pytorch_engine"] = rows[name]["ms"] / rows["fused, PyTorch engine"]["ms"]
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"normrnn fallback-engine benchmark — {results['date']}, {m.get('cpu_model')}, {m.get('threads')} threads, "
             f"torch {m.get('torch')}; LN-LSTM forward+backward, median of {results['rounds']} interleaved rounds.",
             "", "| shape | configuration | ms | vs nn.LSTM | this / PyTorch engine |", "|---|---|---:|---:|---:|"]
    for shape, rows in results["shapes"].items():
        for name, r in rows.items():
            lines.append(f"| {shape} | {name} | {r['ms']:.1f} | {r['ratio_vs_nn_lstm']:.2f}x | "
                         f"{r['speedup_of_pytorch_engine']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="100x32x256,200x8x128")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": a.rounds,
               "machine": machine_info("cpu", torch.get_num_threads()), "shapes": {}}
    for shape in parse_shapes(a.shapes):
        results["shapes"]["x".join(map(str, shape))] = measure(shape, a.rounds, a.warmup)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "fallback.json", json.dumps(results, indent=2))
    table = markdown(results)
    atomic_write(out / "fallback.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
