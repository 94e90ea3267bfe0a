"""Where a run's numbers go: ``metrics.jsonl`` (one JSON object a line), optional TensorBoard, and hooks.

Only the main process (rank 0) writes; other ranks get a :class:`RunLog` with ``run_dir=None``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

# A hook is called as hook(event, record): event "step" after every update (record: step, epoch, loss, grad_norm,
# lr, items), "eval" after each evaluation, "checkpoint" after a checkpoint is written, "end" with the summary.
Hook = Callable[[str, dict], None]


def _clean(v: Any) -> Any:
    # JSON has no NaN/inf; write them as strings so the file stays valid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    """Appends records to ``<run_dir>/metrics.jsonl`` and mirrors scalars to TensorBoard when available."""

    def __init__(self, run_dir: Optional[Path], tensorboard: bool = True) -> None:
        self.path = None if run_dir is None else run_dir / "metrics.jsonl"
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; the JSONL file has everything
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self.tb is not None:
            prefix = record.get("split", record.get("kind", "train"))
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class LossRecorder:
    """A hook that keeps the per-step curves in memory: ``steps``, ``losses``, ``grad_norms``, ``lrs``.

    >>> rec = LossRecorder(); train(config, hooks=[rec]); rec.losses
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.lrs: list[float] = []
        self.evals: list[dict] = []

    def __call__(self, event: str, record: dict) -> None:
        if event == "step":
            self.steps.append(record["step"])
            self.losses.append(record["loss"])
            self.grad_norms.append(record["grad_norm"])
            self.lrs.append(record["lr"])
        elif event == "eval":
            self.evals.append(dict(record))
