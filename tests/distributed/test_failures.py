"""No hangs: a rank that stops answering makes the others fail at the process-group timeout, and a rank that
raises makes `normrnn train --nproc 2` exit non-zero with its error."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from normrnn.multiproc import WorkerError, run_local

import workers

HERE = str(workers.__file__).rsplit("/", 1)[0]


def test_hung_peer_fails_at_the_timeout():
    r0, _ = run_local("workers:hung_peer_worker", 2, {"sleep": 3.0}, path=HERE, timeout=60, dist_timeout=1.5)
    assert r0["error"] is not None and r0["elapsed"] < 3.0


def test_a_raising_rank_fails_the_run_and_the_others_are_stopped():
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_local("workers:raise_on_rank1", 2, {}, path=HERE, timeout=60)
    assert 1 in info.value.ranks and "boom on rank 1" in info.value.stderr
    assert time.monotonic() - t0 < 30


def normrnn_train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "normrnn", "train", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_nproc_trains_then_a_failing_rank_exits_non_zero(tmp_path):
    out = tmp_path / "run"
    common = ["--nproc", "2", "--task", "adding", "--seq-len", "8", "--hidden", "8", "--limit", "64",
              "--batch-size", "4", "--max-steps", "3", "--norm", "batch", "--sync-stats", "--no-progress",
              "--out", str(out)]
    ok = normrnn_train(*common)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "2 processes" in ok.stderr and (out / "checkpoint.pt").is_file()
    # Same --out again: rank 0 refuses (the run exists) while rank 1 goes on; the job must end, non-zero.
    t0 = time.monotonic()
    bad = normrnn_train(*common)
    assert bad.returncode != 0
    assert "already holds a run's checkpoint" in bad.stdout + bad.stderr
    assert time.monotonic() - t0 < 90
