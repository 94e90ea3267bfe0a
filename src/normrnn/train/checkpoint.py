"""Atomic checkpoints and the random-number state that makes a resumed run bit-identical.

A checkpoint is written to a temporary file in the run directory, flushed and fsync'ed, then moved over
``checkpoint.pt`` with ``os.replace`` (atomic on POSIX), and the directory is fsync'ed so the rename survives a
crash. A kill at any moment leaves either the old or the new complete checkpoint, never a torn one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
PathLike = Union[str, os.PathLike]


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from: Python, NumPy, torch CPU and every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(path: Path) -> tuple[int, str]:
    """A temp file next to ``path`` (same filesystem, so os.replace is atomic) with the permissions an ordinary
    new file would get (mkstemp makes it owner-only)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def _atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write(f)`` on a temp file, fsync it, then atomically put it at ``path``."""
    path = Path(path)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever went wrong (disk full, KeyboardInterrupt), the old file stays; drop the partial one.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is always either its old content or the complete new one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write a small text file (config.json, summary.json) with the same all-or-nothing guarantee."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def checkpoint_path(run_dir: PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT


def load_checkpoint(run_dir: PathLike, map_location: Optional[Union[str, torch.device]] = "cpu") -> dict[str, Any]:
    """The run's checkpoint; ValueError when there is none (or it cannot be read)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ValueError(f"cannot resume: {path} does not exist (no checkpoint was written in {run_dir})")
    try:
        # weights_only=False: the checkpoint holds RNG states (Python tuples, NumPy arrays) we wrote ourselves.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise ValueError(f"cannot resume: {path} is not a readable checkpoint ({e})") from e
