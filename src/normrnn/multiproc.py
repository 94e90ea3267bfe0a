"""Run a function in N local processes joined by a gloo process group on 127.0.0.1: for tests and benchmarks.

``run_local("pkg.module:fn", world=2, kwargs={...})`` starts ``world`` fresh interpreters (``python -m
normrnn.multiproc``), each with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, one CPU thread and
the process group initialised; each calls ``fn(rank, world, **kwargs)`` and the parent gets the return values
in rank order. Fresh interpreters rather than ``fork``: torch's thread pools do not survive a fork, and a target
need only be importable (``path`` is put on ``sys.path`` for modules outside the package, e.g. tests).

No hang: when any rank fails the others are killed and :class:`WorkerError` carries the failing rank's stderr;
past ``timeout`` every rank is killed and :class:`TimeoutError` raised.
"""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch

ADDRESS = "127.0.0.1"


class WorkerError(RuntimeError):
    """Ranks exited with an error: ``ranks`` (those that failed, in rank order), ``stderr`` (theirs, joined).

    A rank that raises usually takes its peers down with it (their collectives see the closed connection), so
    the cause may be in any of the failed ranks' output.
    """

    def __init__(self, failures: dict[int, tuple[int, str]]) -> None:
        self.ranks = sorted(failures)
        self.stderr = "\n".join(f"--- rank {r} (exit {code}) ---\n{err[-4000:]}" for r, (code, err) in
                                sorted(failures.items()))
        super().__init__(f"ranks {self.ranks} failed:\n{self.stderr}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (chosen at run time, not hard-coded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


def run_local(target: str, world: int = 2, kwargs: Optional[dict[str, Any]] = None, *, timeout: float = 60.0,
              path: Optional[str] = None, threads: int = 1, dist_timeout: float = 30.0) -> list[Any]:
    """``fn(rank, world, **kwargs)`` for every rank, ``target`` = ``"module:fn"``; returns the results by rank.

    kwargs and results travel through ``torch.save`` files, so tensors are fine. ``dist_timeout`` bounds each
    collective inside the workers; ``timeout`` bounds the whole run.
    """
    with tempfile.TemporaryDirectory(prefix="normrnn-mp-") as tmp:
        work = Path(tmp)
        torch.save(kwargs or {}, work / "kwargs.pt")
        env = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR=ADDRESS, MASTER_PORT=str(free_port()),
                   OMP_NUM_THREADS=str(threads), NORMRNN_DIST_TIMEOUT=str(dist_timeout))
        if path is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
        procs, logs = [], []
        for rank in range(world):
            log = open(work / f"stderr{rank}.txt", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "normrnn.multiproc", target, str(work)],
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=log, stderr=subprocess.STDOUT))
        try:
            _wait_all(procs, logs, timeout, work)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for log in logs:
                log.close()
        return [torch.load(work / f"result{r}.pt", weights_only=False) for r in range(world)]


def _wait_all(procs: list[subprocess.Popen], logs: list[Any], timeout: float, work: Path) -> None:
    """Wait for every rank. A rank that exited non-zero after writing its result only failed in the process
    group's teardown (see :func:`_worker`): its work counts."""
    deadline = time.monotonic() + timeout

    def failed(rank: int, code: Optional[int]) -> bool:
        return code not in (None, 0) and not (work / f"result{rank}.pt").exists()

    while True:
        codes = [p.poll() for p in procs]
        if any(failed(rank, code) for rank, code in enumerate(codes)):
            time.sleep(1.0)  # let the peers it takes down finish writing their errors
            failures = {}
            for rank, p in enumerate(procs):
                code = p.poll()
                if failed(rank, code):
                    logs[rank].seek(0)
                    failures[rank] = (code, logs[rank].read())
            raise WorkerError(failures)
        if all(code is not None for code in codes):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"ranks {[r for r, c in enumerate(codes) if c is None]} still running after "
                               f"{timeout:.0f} s; killed")
        time.sleep(0.05)


def close_process_group(wait: bool = True) -> None:
    """Destroy the default process group, after a barrier when ``wait`` (a rank that succeeded): a gloo rank
    whose peer has already torn down its connections can abort in teardown ("terminate called without an active
    exception"). The barrier is best effort: a group already broken (a peer timed out or died) has nobody left
    to wait for."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if wait:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 (any failure of a broken group: tear it down all the same)
            pass
    dist.destroy_process_group()


def _worker(target: str, work: Path) -> None:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=float(os.environ["NORMRNN_DIST_TIMEOUT"])))
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    try:
        result = fn(rank, world, **torch.load(work / "kwargs.pt", weights_only=False))
    except BaseException:
        close_process_group(wait=False)  # the peers may be inside a collective: no barrier to meet them in
        raise
    # The result first, atomically: the work is done once it is on disk, and a gloo rank can still abort in the
    # teardown below when its peer closes the connections first (more likely on a loaded machine).
    torch.save(result, work / f"result{rank}.pt.tmp")
    os.replace(work / f"result{rank}.pt.tmp", work / f"result{rank}.pt")
    close_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
