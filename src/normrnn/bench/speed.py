"""``normrnn bench``: speed and memory of the normalized layers against ``nn.LSTM``/``nn.GRU``/``nn.LSTMCell``.

Method (this machine drifts by ~20% within an hour, so only ratios measured side by side mean anything):

* One process. Every *round* runs every configuration once, in an order that rotates from round to round;
  warm-up rounds first (they also absorb one-time costs such as compiling a fused extension), then the timed
  rounds. A configuration's time is the median over the timed rounds; its *ratio* is the median over rounds
  of (its time / the baseline's time in the same round), baseline = ``nn.LSTM`` (``nn.GRU`` for GRU rows,
  ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` for streaming rows) of the same shape.
* Training = forward + backward of ``output.sum()`` through input and parameters (grads set to None each
  time), module in train mode. Forward-only = eval mode under ``torch.no_grad()`` (batch norm uses running
  statistics there).
* Memory is a separate pass. On CPU each configuration runs in a fresh subprocess: model and input creation,
  a 2-step warm-up (lazily loaded kernels and thread pools, ~35 MiB that every configuration pays), then one
  forward+backward whose peak RSS above the RSS before it is reported (Linux: VmHWM reset through
  /proc/self/clear_refs; elsewhere ``getrusage`` maxrss). Also the bytes of the tensors autograd saved for
  backward (``saved_tensors_hooks``, parameters and input excluded; a second pass). On CUDA:
  ``torch.cuda.max_memory_allocated`` above the allocation after creation, in this process.
* Streaming: ``layer.step`` one step at a time (batch 1, eval, no_grad) against ``nn.LSTMCell`` /
  ``nn.GRUCell`` / ``nn.RNNCell`` called step by step (and LSTM also against ``nn.LSTM`` called with one-step
  sequences); reported per step.
* On CUDA (``--device cuda``): times from CUDA events around each call (after a synchronize); FlashRNN's shape
  (1024, 16, 768) joins the default shapes; the TF32 flags (``cuda.matmul``, ``cudnn``) are recorded with the
  GPU, driver, CUDA, cuDNN and Triton versions; per shape an ``nn.LSTM`` row with cuDNN's TF32 off (reported),
  and autocast rows: ``nn.LSTM`` and the LN-LSTM under ``torch.autocast("cuda", torch.bfloat16)`` against
  ``nn.LSTM`` in fp16 (cuDNN's half-precision kernels). ``--dry-run`` lists the rows and exits.

Writes ``speed.json`` (atomically) and ``speed.md`` to ``--out``; :func:`markdown_table` renders the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .report import atomic_write, gemm_info, machine_info, markdown_table, shape_name

DEFAULT_SHAPES = ((100, 32, 256), (100, 32, 512), (200, 8, 128), (50, 64, 1024))
CUDA_SHAPES = DEFAULT_SHAPES + ((1024, 16, 768),)  # + FlashRNN's speed figure (Pöppel et al. 2024)
QUICK_SHAPES = ((20, 4, 64),)
LSTM_NORMS = ("none", "layer", "rms", "batch")
LAYER_BACKENDS = ("fused", "reference")
SCHEMA = "normrnn-bench/1"

# Targets: the largest ratio to the baseline that counts as a pass.
TARGET_NORM_LSTM_TRAIN = 1.25  # layer/rms/batch LSTM fwd+bwd at H >= 256
TARGET_NORM_LSTM_TRAIN_SMALL = 1.5  # ... at H < 256 (H = 128 in the default shapes)
TARGET_GRU_TRAIN = 1.3  # LN-GRU fwd+bwd vs nn.GRU
TARGET_FORWARD = 1.2  # forward-only, every normrnn row
TARGET_STREAM = 1.0  # streaming step vs nn.LSTMCell / nn.GRUCell / nn.RNNCell
STREAM_NORMS = ("none", "layer", "rms", "batch")  # GRU.step / RNN.step rows
TARGET_MEMORY = 1.5  # training memory, every normrnn row


# --------------------------------------------------------------------------------------------- configurations


@dataclass
class Config:
    """One row of the benchmark. ``kind``: nn.LSTM, nn.GRU, normrnn.LSTM, normrnn.GRU (sequence rows) or
    stream:normrnn.LSTM, stream:nn.LSTMCell, stream:nn.LSTM, stream:normrnn.GRU, stream:nn.GRUCell,
    stream:normrnn.RNN, stream:nn.RNNCell (streaming rows)."""

    name: str
    group: str  # rows of a group share a baseline
    kind: str
    T: int
    N: int
    H: int
    norm: Optional[str] = None
    backend: Optional[str] = None  # requested backend, normrnn rows only
    baseline: Optional[str] = None  # name of the row this one is compared with (None: it is a baseline)
    label: str = ""  # the name without the shape, for tables
    targets: dict = field(default_factory=dict)  # metric -> max ratio
    dtype: str = "float32"  # parameters and input ("bfloat16", "float16": the half-precision rows)
    autocast: Optional[str] = None  # run under torch.autocast(device, dtype=this) (float32 parameters)
    cudnn_tf32: Optional[bool] = None  # torch.backends.cudnn.allow_tf32 while this row runs (None: as set)

    @property
    def streaming(self) -> bool:
        return self.kind.startswith("stream:")

    @property
    def is_normrnn(self) -> bool:
        return "normrnn" in self.kind


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        try:
            T, N, H = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: expected TxNxH, e.g. 100x32x256") from None
        if min(T, N, H) < 1:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: sizes must be positive")
        shapes.append((T, N, H))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def make_configs(shapes: Sequence[tuple[int, int, int]], stream_steps: int = 1000,
                 stream_hidden: int = 256, device: str = "cpu",
                 backends: Sequence[str] = LAYER_BACKENDS) -> list[Config]:
    """All rows: per shape nn.LSTM, normrnn LSTM (4 norms x ``backends``), nn.GRU, LN-GRU (``backends``), the bf16
    rows and on CUDA the TF32-off and autocast rows; then the streaming rows (if ``stream_steps > 0``): LSTM.step against nn.LSTMCell, GRU.step
    and RNN.step (4 norms each) against nn.GRUCell and nn.RNNCell."""
    configs: list[Config] = []
    for T, N, H in shapes:
        s = shape_name(T, N, H)
        lstm_base, gru_base = f"{s} nn.LSTM", f"{s} nn.GRU"
        configs.append(Config(lstm_base, f"{s} LSTM", "nn.LSTM", T, N, H, label="nn.LSTM"))
        for norm in LSTM_NORMS:
            for backend in backends:
                targets = {"forward": TARGET_FORWARD, "memory": TARGET_MEMORY}
                if norm != "none":
                    targets["train"] = TARGET_NORM_LSTM_TRAIN if H >= 256 else TARGET_NORM_LSTM_TRAIN_SMALL
                label = f"LSTM norm={norm} {backend}"
                configs.append(Config(f"{s} {label}", f"{s} LSTM", "normrnn.LSTM", T, N, H, norm=norm,
                                      backend=backend, baseline=lstm_base, label=label, targets=targets))
        configs.append(Config(gru_base, f"{s} GRU", "nn.GRU", T, N, H, label="nn.GRU"))
        for backend in backends:
            label = f"GRU norm=layer {backend}"
            configs.append(Config(f"{s} {label}", f"{s} GRU", "normrnn.GRU", T, N, H, norm="layer",
                                  backend=backend, baseline=gru_base, label=label,
                                  targets={"train": TARGET_GRU_TRAIN, "forward": TARGET_FORWARD,
                                           "memory": TARGET_MEMORY}))
        # bf16 parameters and input against nn.LSTM in bf16 (oneDNN's bf16 kernels); normrnn computes inside in
        # float32 (see the README), so this row says what that costs. Reported, no target.
        bf_base = f"{s} nn.LSTM bf16"
        configs.append(Config(bf_base, f"{s} LSTM bf16", "nn.LSTM", T, N, H, label="nn.LSTM bf16",
                              dtype="bfloat16"))
        configs.append(Config(f"{s} LSTM norm=layer auto bf16", f"{s} LSTM bf16", "normrnn.LSTM", T, N, H,
                              norm="layer", backend="auto", baseline=bf_base, label="LSTM norm=layer auto bf16",
                              dtype="bfloat16"))
        if device.startswith("cuda"):
            # cuDNN with its TF32 off, against the default nn.LSTM row (a like-for-like fp32 baseline for torch.mm,
            # whose TF32 is off by default); reported, no target
            configs.append(Config(f"{s} nn.LSTM cudnn-tf32-off", f"{s} LSTM", "nn.LSTM", T, N, H, baseline=lstm_base,
                                  label="nn.LSTM cudnn-tf32-off", cudnn_tf32=False))
            # autocast: bf16 LN-LSTM against cuDNN's fp16 LSTM (the target 2.0x at 1024x16x768)
            half_base = f"{s} nn.LSTM fp16"
            group = f"{s} LSTM autocast"
            configs.append(Config(half_base, group, "nn.LSTM", T, N, H, label="nn.LSTM fp16", dtype="float16"))
            configs.append(Config(f"{s} nn.LSTM autocast-bf16", group, "nn.LSTM", T, N, H, baseline=half_base,
                                  label="nn.LSTM autocast-bf16", autocast="bfloat16"))
            configs.append(Config(f"{s} LSTM norm=layer auto autocast-bf16", group, "normrnn.LSTM", T, N, H,
                                  norm="layer", backend="auto", baseline=half_base,
                                  label="LSTM norm=layer auto autocast-bf16", autocast="bfloat16",
                                  targets={"train": 2.0} if (T, N, H) == (1024, 16, 768) else {}))
    if stream_steps > 0:
        T, N, H = stream_steps, 1, stream_hidden
        group = f"stream {shape_name(T, N, H)}"
        cell = f"{group} nn.LSTMCell"
        configs.append(Config(cell, group, "stream:nn.LSTMCell", T, N, H, label="nn.LSTMCell"))
        configs.append(Config(f"{group} nn.LSTM (1 step/call)", group, "stream:nn.LSTM", T, N, H, baseline=cell,
                              label="nn.LSTM (1 step/call)"))
        for norm in ("layer", "none"):
            label = f"LSTM.step norm={norm} auto"
            configs.append(Config(f"{group} {label}", group, "stream:normrnn.LSTM", T, N, H, norm=norm,
                                  backend="auto", baseline=cell, label=label, targets={"step": TARGET_STREAM}))
        # GRU.step / RNN.step against nn.GRUCell / nn.RNNCell (batch norm: eval, running statistics).
        for kind in ("GRU", "RNN"):
            base = f"{group} nn.{kind}Cell"
            configs.append(Config(base, group, f"stream:nn.{kind}Cell", T, N, H, label=f"nn.{kind}Cell"))
            for norm in STREAM_NORMS:
                label = f"{kind}.step norm={norm} auto"
                configs.append(Config(f"{group} {label}", group, f"stream:normrnn.{kind}", T, N, H, norm=norm,
                                      backend="auto", baseline=base, label=label, targets={"step": TARGET_STREAM}))
    return configs


def select_configs(configs: Sequence[Config], only: Optional[str]) -> list[Config]:
    """The rows whose name contains ``only`` (case-insensitive; all when ``None``), with their baselines."""
    if not only:
        return list(configs)
    chosen = {c.name for c in configs if only.lower() in c.name.lower()}
    chosen |= {c.baseline for c in configs if c.name in chosen and c.baseline}
    return [c for c in configs if c.name in chosen]


# --------------------------------------------------------------------------------------------- building


def build(cfg: Config, device: str, seed: int = 0):
    """The module and the input of a configuration (same seed -> same weights and data)."""
    import torch
    from torch import nn

    import normrnn

    torch.manual_seed(seed)
    T, N, H = cfg.T, cfg.N, cfg.H
    kind = cfg.kind.split(":", 1)[-1]
    if kind == "nn.LSTM":
        module = nn.LSTM(H, H)
    elif kind == "nn.GRU":
        module = nn.GRU(H, H)
    elif kind in ("nn.LSTMCell", "nn.GRUCell", "nn.RNNCell"):
        module = getattr(nn, kind[3:])(H, H)
    elif kind in ("normrnn.LSTM", "normrnn.GRU", "normrnn.RNN"):
        cls = getattr(normrnn, kind[8:])
        options: dict[str, Any] = {"norm": cfg.norm}
        if cfg.norm == "batch" and not cfg.streaming:
            options["max_steps"] = max(256, T)  # recurrent batch norm keeps statistics per step
        module = cls(H, H, **options)
        # Set as an attribute too: a build whose constructor lacks ``backend=`` still gets a row.
        module.backend = cfg.backend
    else:
        raise ValueError(f"unknown kind {cfg.kind!r}")
    dtype = getattr(torch, cfg.dtype)
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(T, N, H, device=device, dtype=dtype)
    return module, x


def backend_used(module, cfg: Config) -> str:
    """What actually ran: ``"torch"`` for the PyTorch baselines, else the layer's ``active_backend()``."""
    if not cfg.is_normrnn:
        return "torch"
    return str(module.active_backend())


# --------------------------------------------------------------------------------------------- running


class Runner:
    """Holds one configuration's module and input; each ``time_*`` call runs it once and returns seconds."""

    def __init__(self, cfg: Config, device: str, seed: int):
        import torch

        self.torch = torch
        self.cfg = cfg
        self.device = device
        self.module, self.x = build(cfg, device, seed)
        self.cuda = device.startswith("cuda")
        if cfg.streaming:
            self.module.eval()
            self.steps = list(self.x.unbind(0))  # (1, H) each
        else:
            self.x_train = self.x.detach().clone().requires_grad_(True)

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def train_once(self, x=None) -> None:
        m, x = self.module, self.x_train if x is None else x
        m.train()
        m.zero_grad(set_to_none=True)
        x.grad = None
        out = m(x)[0]
        out.sum().backward()

    def forward_once(self) -> None:
        m = self.module
        m.eval()
        with self.torch.no_grad():
            m(self.x)

    def stream_once(self) -> None:
        torch, kind, m = self.torch, self.cfg.kind, self.module
        with torch.no_grad():
            if kind.startswith("stream:normrnn."):
                state = None
                for x_t in self.steps:
                    _, state = m.step(x_t, state)
            elif kind in ("stream:nn.LSTMCell", "stream:nn.GRUCell", "stream:nn.RNNCell"):
                hc = None
                for x_t in self.steps:
                    hc = m(x_t, hc)
            elif kind == "stream:nn.LSTM":
                hc = None
                for x_t in self.steps:
                    _, hc = m(x_t.unsqueeze(0), hc)
            else:
                raise ValueError(kind)

    @contextlib.contextmanager
    def _settings(self):
        """The row's autocast and cuDNN TF32 setting while it runs."""
        torch, cfg = self.torch, self.cfg
        previous = torch.backends.cudnn.allow_tf32
        if cfg.cudnn_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = cfg.cudnn_tf32
        try:
            if cfg.autocast:
                with torch.autocast(self.device.split(":")[0], dtype=getattr(torch, cfg.autocast)):
                    yield
            else:
                yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous

    def _timed(self, fn: Callable[[], None]) -> float:
        with self._settings():
            self._sync()
            if self.cuda:  # device time between two events on the stream, the host's launch gaps included
                start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                fn()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1e3
            t0 = time.perf_counter()
            fn()
            self._sync()
            return time.perf_counter() - t0

    def measure(self) -> dict[str, float]:
        """One visit in a round: seconds for each metric of this configuration."""
        if self.cfg.streaming:
            return {"step": self._timed(self.stream_once) / self.cfg.T}
        train = self._timed(self.train_once)
        self.module.zero_grad(set_to_none=True)
        self.x_train.grad = None
        return {"train": train, "forward": self._timed(self.forward_once)}


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation."""
    v = sorted(values)

    def q(p: float) -> float:
        pos = (len(v) - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return q(0.25), q(0.5), q(0.75)


def _summary(values: Sequence[float]) -> Optional[dict]:
    if not values:
        return None
    q1, med, q3 = _quantiles(values)
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(values)}


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop a benchmark
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)


def _setup_one(cfg: Config, device: str, seed: int, row: dict, runners: dict) -> None:
    """Build a configuration and run it once (untimed); record its error instead of raising."""
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner = Runner(cfg, device, seed)
            runner.measure()  # first call: one-time costs (extension build, oneDNN setup) land here
        row["setup_s"] = time.perf_counter() - t0
        row["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})[:5]
        row["backend_used"] = backend_used(runner.module, cfg)
        runners[cfg.name] = runner
    except Exception as e:  # record and go on: one broken configuration must not stop the others
        row["error"] = _error_text(e)
        row["backend_used"] = f"requested: {cfg.backend}" if cfg.is_normrnn else "torch"


def run_timing(configs: Sequence[Config], device: str, rounds: int, warmup: int, seed: int = 0,
               progress: bool = True) -> dict[str, dict]:
    """The interleaved rounds. Returns per configuration name: times (metric -> list of seconds, timed rounds
    only), backend_used, setup_s, warnings, error."""
    rows: dict[str, dict] = {c.name: {"times": {}, "backend_used": None, "setup_s": None, "warnings": [],
                                      "error": None} for c in configs}
    runners: dict[str, Runner] = {}
    with _progress(len(configs), "bench setup", progress) as bar:
        for cfg in configs:
            _setup_one(cfg, device, seed, rows[cfg.name], runners)
            if bar is not None:
                bar.update(1)

    names = [c.name for c in configs]
    total = warmup + rounds
    # One tick per configuration run, so a slow round still shows movement; the label says which round.
    with _progress(total * len(runners), "bench rounds", progress) as bar:
        for r in range(total):
            if bar is not None:
                bar.set_description(f"bench round {r + 1}/{total}" + (" (warm-up)" if r < warmup else ""))
            k = r % max(1, len(names))
            order = names[k:] + names[:k]  # rotate: no configuration always runs first or after the same one
            for name in order:
                runner = runners.get(name)
                if runner is None:
                    continue
                try:
                    result = runner.measure()
                except Exception as e:
                    rows[name]["error"] = _error_text(e)
                    rows[name]["times"] = {}
                    del runners[name]
                    if bar is not None:
                        bar.total -= total - r - 1
                    continue
                finally:
                    if bar is not None:
                        bar.update(1)
                if r >= warmup:
                    for metric, seconds in result.items():
                        rows[name]["times"].setdefault(metric, []).append(seconds)
    del runners
    gc.collect()
    return rows


# --------------------------------------------------------------------------------------------- memory

_CHILD_FLAG = "--_memory-child"


def _proc_status_bytes() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process from /proc/self/status, in bytes ({} where absent)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = _proc_status_bytes()
    return "VmRSS" in status and "VmHWM" in status


def _maxrss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _saved_tensor_bytes(runner: Runner) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward, parameters and the input
    excluded (the activation memory). Tensors a custom Function keeps on ``ctx`` without
    ``save_for_backward`` are not seen."""
    import torch

    seen: dict[int, int] = {}
    own = {p.untyped_storage().data_ptr() for p in runner.module.parameters()}
    own.add(runner.x_train.untyped_storage().data_ptr())

    def pack(t):
        try:
            storage = t.untyped_storage()
            if storage.data_ptr() not in own:
                seen[storage.data_ptr()] = storage.nbytes()
        except Exception:  # e.g. opaque tensors without storage
            pass
        return t

    m = runner.module
    m.train()
    m.zero_grad(set_to_none=True)
    runner.x_train.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(runner.x_train)[0]
    out.sum().backward()
    return sum(seen.values())


def measure_memory_here(cfg: Config, device: str, threads: int, seed: int = 0) -> dict:
    """One forward+backward of ``cfg`` in this process; peak extra memory in bytes (see the module doc).
    Meant for a fresh process on CPU (maxrss never goes down)."""
    import torch

    torch.set_num_threads(threads)
    runner = Runner(cfg, device, seed)
    # Warm up on a 2-step, batch-2 slice: lazily loaded kernels, thread pools and workspaces (~35 MiB of RSS on
    # CPU, the same for every configuration) land here instead of in the measured pass.
    tiny = runner.x_train.detach()[: min(2, cfg.T), : min(2, cfg.N)].clone().requires_grad_(True)
    with runner._settings():
        runner.train_once(tiny)
    runner.module.zero_grad(set_to_none=True)
    del tiny
    result: dict[str, Any] = {}
    if device.startswith("cuda"):
        with runner._settings():  # (the first full-size call: a captured graph's pool counts in the peak)
            runner.train_once()
        runner.module.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with runner._settings():
            runner.train_once()
        torch.cuda.synchronize()
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        result["method"] = "torch.cuda.max_memory_allocated above the allocation after creation"
    else:
        gc.collect()
        if _reset_peak_rss():
            # Linux: peak RSS reset to the current RSS, so VmHWM - VmRSS is exactly this pass's peak extra.
            base = _proc_status_bytes()["VmRSS"]
            runner.train_once()
            peak = _proc_status_bytes()["VmHWM"]
            result["method"] = "peak RSS (VmHWM, reset via clear_refs) above the RSS after creation"
        else:
            # Elsewhere: getrusage's maxrss never goes down; measured from the previous peak (may under-count
            # a pass that stays below the peak of imports and creation).
            base = _maxrss_bytes()
            runner.train_once()
            peak = _maxrss_bytes()
            result["method"] = "getrusage maxrss above the previous peak"
        result["peak_bytes"] = max(0, peak - base)
    runner.module.zero_grad(set_to_none=True)
    with runner._settings():
        result["saved_bytes"] = _saved_tensor_bytes(runner)
    return result


def _memory_child_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    cfg = Config(**spec["config"])
    try:
        result = measure_memory_here(cfg, spec["device"], spec["threads"], spec["seed"])
    except Exception as e:
        result = {"error": _error_text(e)}
    sys.stdout.write("\n@@MEMORY@@" + json.dumps(result) + "\n")
    return 0


def _child_env() -> dict:
    """Environment for the memory subprocess: the directory this copy of normrnn is imported from goes first on
    PYTHONPATH, so the child measures the same code even when normrnn is not installed."""
    import normrnn

    src = str(Path(normrnn.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _memory_in_subprocess(cfg: Config, device: str, threads: int, seed: int, env: dict, timeout: float) -> dict:
    spec = {"config": asdict(cfg), "device": device, "threads": threads, "seed": seed}
    code = "import sys, normrnn.bench.speed as b; sys.exit(b._memory_child_main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@MEMORY@@")]
    if not marker:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"memory subprocess failed: {tail[0]}")
    return json.loads(marker[-1][len("@@MEMORY@@"):])


def run_memory(configs: Sequence[Config], device: str, threads: int, seed: int = 0, jobs: int = 2,
               timeout: float = 900, progress: bool = True) -> dict[str, dict]:
    """Memory of every sequence configuration. CPU: one fresh subprocess each, ``jobs`` at a time (RSS is per
    process, so running them side by side changes their speed, not what they measure); CUDA: in this process,
    one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [c for c in configs if not c.streaming]
    out: dict[str, dict] = {}
    cuda = device.startswith("cuda")

    def one(cfg: Config) -> dict:
        try:
            if cuda:
                import torch

                result = measure_memory_here(cfg, device, threads, seed)
                gc.collect()
                torch.cuda.empty_cache()
                return result
            return _memory_in_subprocess(cfg, device, threads, seed, env, timeout)
        except Exception as e:
            return {"error": _error_text(e)}

    env = None if cuda else _child_env()
    with _progress(len(todo), "bench memory", progress) as bar:
        if cuda or jobs <= 1:
            for cfg in todo:
                out[cfg.name] = one(cfg)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for cfg, result in zip(todo, pool.map(one, todo)):
                    out[cfg.name] = result
                    if bar is not None:
                        bar.update(1)
    return out


# --------------------------------------------------------------------------------------------- results


def _ratio_summary(times: dict, base_times: dict, metric: str) -> Optional[dict]:
    """Per-round ratio (same round, so drift cancels), summarized over rounds."""
    a, b = times.get(metric), base_times.get(metric)
    if not a or not b or len(a) != len(b):
        return None
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    return _summary(ratios)


def _mark(ratio: Optional[float], target: Optional[float]) -> Optional[str]:
    if ratio is None or target is None:
        return None
    return "pass" if ratio <= target else "miss"


def assemble(configs: Sequence[Config], timing: dict[str, dict], memory: Optional[dict[str, dict]]) -> list[dict]:
    """One JSON row per configuration: times, ratios to the baseline, targets and marks."""
    by_name = {c.name: c for c in configs}
    rows = []
    for cfg in configs:
        t = timing[cfg.name]
        base = by_name.get(cfg.baseline) if cfg.baseline else None
        base_t = timing.get(cfg.baseline) if cfg.baseline else None
        row: dict[str, Any] = {
            "name": cfg.name, "label": cfg.label or cfg.name, "group": cfg.group, "kind": cfg.kind,
            "T": cfg.T, "N": cfg.N, "H": cfg.H,
            "norm": cfg.norm, "backend_requested": cfg.backend, "backend_used": t["backend_used"],
            "baseline": cfg.baseline, "error": t["error"], "setup_s": t["setup_s"], "warnings": t["warnings"],
            "metrics": {}, "targets": dict(cfg.targets), "marks": {},
        }
        metrics = ("step",) if cfg.streaming else ("train", "forward")
        for metric in metrics:
            samples = t["times"].get(metric, [])
            entry: dict[str, Any] = {"seconds": _summary(samples), "samples_s": list(samples)}
            if base is not None:
                ok = t["error"] is None and base_t is not None and base_t["error"] is None
                entry["ratio"] = _ratio_summary(t["times"], base_t["times"], metric) if ok else None
            row["metrics"][metric] = entry
        if cfg.kind in ("stream:normrnn.LSTM", "stream:nn.LSTMCell"):
            # Also against nn.LSTM called one step at a time (the other streaming baseline).
            other = next((c for c in configs if c.group == cfg.group and c.kind == "stream:nn.LSTM"), None)
            if other is not None:
                ot = timing[other.name]
                ok = t["error"] is None and ot["error"] is None
                row["metrics"]["step"]["ratio_vs_nn_lstm_step"] = (
                    _ratio_summary(t["times"], ot["times"], "step") if ok else None)
        if not cfg.streaming and memory is not None:
            mem = dict(memory.get(cfg.name) or {})
            if mem and base is not None:
                bmem = memory.get(base.name) or {}
                if mem.get("peak_bytes") is not None and bmem.get("peak_bytes"):
                    mem["ratio"] = mem["peak_bytes"] / bmem["peak_bytes"]
                if mem.get("saved_bytes") is not None and bmem.get("saved_bytes"):
                    mem["saved_ratio"] = mem["saved_bytes"] / bmem["saved_bytes"]
            row["memory"] = mem or None
        for metric, target in cfg.targets.items():
            if metric == "memory":
                ratio = (row.get("memory") or {}).get("ratio")
            else:
                ratio = ((row["metrics"].get(metric) or {}).get("ratio") or {}).get("median")
            row["marks"][metric] = _mark(ratio, target)
        marks = [m for m in row["marks"].values() if m is not None]
        if t["error"]:
            row["status"] = "error"
        elif not cfg.targets:
            row["status"] = "baseline" if cfg.baseline is None else "n/a"
        elif any(m == "miss" for m in marks):
            row["status"] = "miss"
        elif len(marks) < len(cfg.targets):
            row["status"] = "incomplete"  # e.g. memory not measured
        else:
            row["status"] = "pass"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help="comma-separated TxNxH (sequence length x batch x input=hidden size); default "
                             + ",".join(shape_name(*s) for s in DEFAULT_SHAPES))
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads (default: os.cpu_count())")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run: 3 rounds, shape " + ",".join(shape_name(*s) for s in QUICK_SHAPES)
                             + ", 50 streaming steps (explicit options still win)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="output directory for speed.json and speed.md (default benchmarks/results)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument("--memory-jobs", type=int, default=2,
                        help="memory subprocesses run side by side on CPU (default 2)")
    parser.add_argument("--stream-steps", type=int, default=None,
                        help="streaming steps (default 1000; 50 with --quick; 0 skips streaming)")
    parser.add_argument("--stream-hidden", type=int, default=256, help="streaming hidden size (default 256)")
    parser.add_argument("--only", default=None, metavar="TEXT",
                        help="only the rows whose name contains TEXT (case-insensitive), with their baselines; "
                             "e.g. --only stream for the streaming rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    parser.add_argument("--backends", default=",".join(LAYER_BACKENDS),
                        help="normrnn backends of the sequence rows (default fused,reference; the reference loop "
                             "is slow on CUDA)")
    parser.add_argument("--dry-run", action="store_true", help="list the rows and settings, run nothing")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``normrnn`` command."""
    parser = subparsers.add_parser("bench", help="speed/memory benchmark against nn.LSTM/nn.GRU/nn.LSTMCell",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    import torch

    quick = args.quick
    cuda = args.device == "cuda"
    shapes = args.shapes or list(QUICK_SHAPES if quick else (CUDA_SHAPES if cuda else DEFAULT_SHAPES))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("auto", "fused", "reference") for b in backends):
        print(f"normrnn bench: --backends takes auto, fused, reference; got {args.backends!r}", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (3 if quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    stream_steps = args.stream_steps if args.stream_steps is not None else (50 if quick else 1000)
    if rounds < 1 or warmup < 0 or args.threads < 1 or stream_steps < 0 or args.stream_hidden < 1:
        print("normrnn bench: --rounds and --threads must be >= 1, --warmup and --stream-steps >= 0",
              file=sys.stderr)
        return 2
    device = args.device
    configs = select_configs(make_configs(shapes, stream_steps, args.stream_hidden, device, backends), args.only)
    if not configs:
        print(f"normrnn bench: no row matches --only {args.only!r}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"device {device}, shapes {[shape_name(*s) for s in shapes]}, rounds {rounds} (+{warmup} warm-up), "
              f"{len(configs)} rows:")
        for cfg in configs:
            extra = [f"{k}={v}" for k, v in (("dtype", cfg.dtype), ("autocast", cfg.autocast),
                                               ("cudnn_tf32", cfg.cudnn_tf32)) if v not in (None, "float32")]
            print(f"  {cfg.name:60s} vs {cfg.baseline or '-':40s} {' '.join(extra)}")
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print("normrnn bench: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    progress = not args.no_progress

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    started = time.time()
    try:
        info = machine_info(device, args.threads)
        timing = run_timing(configs, device, rounds, warmup, args.seed, progress)
        if device == "cpu":
            info["gemm"] = gemm_info()  # the paths the timed rows ran on (each shape class chosen at its first use)
        memory = None if args.no_memory else run_memory(configs, device, args.threads, args.seed,
                                                        jobs=max(1, args.memory_jobs), progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
    results = {
        "schema": SCHEMA,
        "machine": info,
        "settings": {"shapes": [shape_name(*s) for s in shapes], "rounds": rounds, "warmup": warmup,
                     "threads": args.threads, "quick": quick, "device": device, "memory": not args.no_memory,
                     "backends": backends,
                     "timing": "CUDA events" if cuda else "time.perf_counter around synchronized calls",
                     "memory_method": ("torch.cuda.max_memory_allocated" if device == "cuda" else
                                       "peak RSS in a fresh subprocess per configuration, above the RSS after "
                                       "creation and a 2-step warm-up"),
                     "stream_steps": stream_steps, "stream_hidden": args.stream_hidden, "seed": args.seed,
                     "only": args.only,
                     "loss": "output.sum()", "wall_s": round(time.time() - started, 1)},
        "rows": assemble(configs, timing, memory),
    }
    out = Path(args.out)
    table = markdown_table(results)
    atomic_write(out / "speed.json", json.dumps(results, indent=1, sort_keys=False) + "\n")
    atomic_write(out / "speed.md", table)
    print(table)
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'} in {results['settings']['wall_s']} s", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/speed.py [options]``: the same as ``normrnn bench [options]``."""
    parser = argparse.ArgumentParser(prog="speed.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
