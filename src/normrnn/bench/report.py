"""Reporting benchmark results: the machine they ran on, the Markdown table, and files written atomically."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional


def shape_name(T: int, N: int, H: int) -> str:
    return f"{T}x{N}x{H}"


def _git_commit(repo: Path) -> Optional[dict]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _cpuinfo_field(name: str) -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _lscpu_field(name: str) -> Optional[str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or _lscpu_field("model name") or platform.processor() or platform.machine()


def _cpu_vendor() -> Optional[str]:
    """``GenuineIntel``, ``AuthenticAMD``, ... (/proc/cpuinfo's vendor_id, or lscpu's Vendor ID)."""
    return _cpuinfo_field("vendor_id") or _lscpu_field("vendor id")


def gemm_info() -> Optional[dict]:
    """Which GEMM paths the native kernels had and chose per shape class in this process (normrnn.fused.native),
    or None where the kernels are not built."""
    try:
        from normrnn.fused import native

        if native.load() is None:
            return None
        info = native.gemm_info()
    except Exception:  # a report must not fail for want of it
        return None
    return {k: info.get(k) for k in ("forced", "available", "chosen", "timings_us", "measured", "read", "file")}


def machine_info(device: str, threads: int) -> dict:
    import torch

    import normrnn

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_vendor": _cpu_vendor(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "normrnn": getattr(normrnn, "__version__", None), "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "git": _git_commit(Path(normrnn.__file__).resolve().parent),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    if device.startswith("cuda"):
        b = torch.backends
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = b.cudnn.version()
        # cuDNN runs fp32 RNNs with TF32 by default, torch.mm does not: a fair comparison records both
        info["tf32"] = {"cuda.matmul.allow_tf32": b.cuda.matmul.allow_tf32, "cudnn.allow_tf32": b.cudnn.allow_tf32}
        try:
            import triton

            info["triton"] = triton.__version__
        except Exception:  # (no Triton: the layers run the PyTorch engine on CUDA, which the rows' backend shows)
            info["triton"] = None
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


# --------------------------------------------------------------------------------------------- markdown


def _fmt_time(seconds: Optional[dict], unit: str = "ms") -> str:
    if not seconds:
        return "–"
    scale = 1e3 if unit == "ms" else 1e6
    med, iqr = seconds["median"] * scale, seconds["iqr"] * scale
    digits = 1 if med >= 10 else 2
    return f"{med:.{digits}f} ± {iqr / 2:.{digits}f}"


def _fmt_ratio(ratio: Optional[float], target: Optional[float] = None) -> str:
    if ratio is None:
        return "–"
    text = f"{ratio:.2f}x"
    if target is not None:
        text += " ✓" if ratio <= target else " ✗"
    return text


def _fmt_target(target: Optional[float]) -> str:
    return "–" if target is None else f"≤{target:g}x"


def _short_backend(row: dict) -> str:
    used = row.get("backend_used") or ""
    return used.replace("|", "/")


def _label(row: dict) -> str:
    return row.get("label") or row["name"]


def markdown_table(results: dict) -> str:
    """The Markdown report of a results dict (as written to ``speed.json``): one table for the sequence rows,
    one for streaming. Times are median ± half the IQR over rounds; ratios are medians of per-round ratios to
    the group's baseline; ✓/✗ compare with the target."""
    rows = results.get("rows", [])
    info = results.get("machine", {})
    settings = results.get("settings", {})
    lines = []
    git = info.get("git") or {}
    lines.append(f"normrnn speed benchmark — {info.get('date', '?')}, {info.get('cpu_model', '?')}, "
                 f"{info.get('threads', '?')} threads, torch {info.get('torch', '?')}, device "
                 f"{info.get('device', '?')}, {settings.get('rounds', '?')} rounds after "
                 f"{settings.get('warmup', '?')} warm-up"
                 + (f", commit {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}" if git else "") + ".")
    gemm = info.get("gemm")
    if gemm:
        chosen = gemm.get("chosen") or {}
        lines.append("")
        lines.append(f"CPU: {info.get('cpu_vendor') or '?'} {info.get('cpu_model', '?')}. GEMM paths of the native "
                     f"kernels: {'forced ' + gemm['forced'] if gemm.get('forced') not in (None, 'auto') else 'measured per shape class'}"
                     f" (available: {', '.join(gemm.get('available') or []) or 'none'}); chosen: "
                     + (", ".join(f"{p} for {n} shape class{'es' if n != 1 else ''}" for p, n in
                                  Counter(chosen.values()).most_common()) or "none")
                     + " (every class in this machine's choice file; the JSON lists each).")
    lines.append("")
    seq = [r for r in rows if not r["kind"].startswith("stream:")]
    if seq:
        lines.append("| shape | configuration | backend used | fwd+bwd ms | ratio | target | fwd-only ms | ratio "
                     "| target | train mem MiB | ratio | target | saved MiB | ratio | status |")
        lines.append("|---|---|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|---:|---|")
        for r in seq:
            m, tg = r["metrics"], r.get("targets", {})
            train, fwd = m.get("train", {}), m.get("forward", {})
            mem = r.get("memory") or {}
            mib = f"{mem['peak_bytes'] / 2**20:.1f}" if mem.get("peak_bytes") is not None else (
                "err" if mem.get("error") else "–")
            saved = f"{mem['saved_bytes'] / 2**20:.2f}" if mem.get("saved_bytes") is not None else "–"
            status = r.get("status", "")
            if r.get("error"):
                status = "error: " + r["error"].replace("|", "/")[:80]
            lines.append("| " + " | ".join([
                shape_name(r["T"], r["N"], r["H"]), _label(r), _short_backend(r),
                _fmt_time(train.get("seconds")), _fmt_ratio((train.get("ratio") or {}).get("median"), tg.get("train")),
                _fmt_target(tg.get("train")),
                _fmt_time(fwd.get("seconds")), _fmt_ratio((fwd.get("ratio") or {}).get("median"), tg.get("forward")),
                _fmt_target(tg.get("forward")),
                mib, _fmt_ratio(mem.get("ratio"), tg.get("memory")), _fmt_target(tg.get("memory")),
                saved, _fmt_ratio(mem.get("saved_ratio")), status,
            ]) + " |")
        lines.append("")
    stream = [r for r in rows if r["kind"].startswith("stream:")]
    if stream:
        lines.append("| streaming (T x N x H) | configuration | backend used | µs/step | vs nn cell | target "
                     "| vs nn.LSTM 1-step | status |")
        lines.append("|---|---|---|---:|---:|---|---:|---|")
        for r in stream:
            step, tg = r["metrics"].get("step", {}), r.get("targets", {})
            status = r.get("status", "")
            if r.get("error"):
                status = "error: " + r["error"].replace("|", "/")[:80]
            lines.append("| " + " | ".join([
                shape_name(r["T"], r["N"], r["H"]), _label(r), _short_backend(r), _fmt_time(step.get("seconds"), "us"),
                _fmt_ratio((step.get("ratio") or {}).get("median"), tg.get("step")), _fmt_target(tg.get("step")),
                _fmt_ratio((step.get("ratio_vs_nn_lstm_step") or {}).get("median")), status,
            ]) + " |")
        lines.append("")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    lines.append("Rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ". Times: median ± half "
                 "the IQR; ratios: median of per-round ratios to the baseline of the same shape (nn.LSTM, nn.GRU, "
                 "nn.LSTMCell/GRUCell/RNNCell) measured in the same rounds; train mem: peak extra RSS (CUDA: "
                 "allocation) over "
                 "model+input in one fwd+bwd; saved: tensors autograd saved for backward, parameters and input "
                 "excluded.")
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: readers see the old file or the
    new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
