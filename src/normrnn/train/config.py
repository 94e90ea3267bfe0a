"""The one dataclass that says everything about a training run, and the checks on it.

``config.json`` in the run directory is ``TrainConfig.to_dict()``; ``--resume`` rebuilds the config from it and
refuses options that would make the resumed run a different run (:func:`check_resume_compatible`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .models import CELLS, POOLS, RNNConfig

TASKS = ("charlm", "classify", "image", "adding", "copy")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "step")
IMAGE_MODES = ("pixel", "row", "permuted", "cnn")

# The default dataset of each task ("synthetic" tasks generate their own data).
DEFAULT_DATA = {"charlm": "shakespeare", "classify": "wordnet", "image": "fashion-mnist",
                "adding": "synthetic", "copy": "synthetic"}

SYNTHETIC_NAMES = {"adding": ("synthetic", "adding"), "copy": ("synthetic", "copy", "copy-memory")}

# Options a resumed run may change: they decide how long and where it runs and what it reports, not what it
# computes at each step. (Changing max_steps/epochs changes a cosine schedule's horizon; that is the user's call.)
# `rank` is who runs, not what is computed: every rank resumes from the config.json rank 0 wrote.
RESUME_SAFE = frozenset({"epochs", "max_steps", "device", "progress", "checkpoint_every", "eval_every", "out",
                         "tensorboard", "eval_limit", "log_every", "rank", "dist_timeout"})


@dataclass
class TrainConfig:
    """Every option of a run. Defaults give a modest char-LM (LN-LSTM, 256 units) on shakespeare."""

    # what to learn
    task: str = "charlm"  # charlm | classify | image | adding | copy
    data: Optional[str] = None  # dataset name or path; None: the task's default (DEFAULT_DATA)
    data_dir: Optional[str] = None  # dataset cache directory (normrnn.data's default when None)
    image_mode: str = "pixel"  # image task: pixel | row | permuted (sequential) or cnn (ConvRNN on the image)
    limit: Optional[int] = None  # subset: chars (charlm) or examples (others) per split, for short runs
    eval_limit: Optional[int] = None  # overrides `limit` for the valid/test splits
    # model
    cell: str = "lstm"
    norm: str = "layer"
    norm_terms: str = "separate"
    layers: int = 1
    hidden: int = 256
    bidirectional: bool = False
    residual: bool = False
    dropout: float = 0.0
    zoneout: float = 0.0
    dropconnect: float = 0.0
    nonlinearity: str = "tanh"  # rnn cell: tanh | relu
    norm_cell: bool = True  # lstm: normalize c_t before the output tanh
    gamma_init: Optional[float] = None  # norm gain at init; None: 1.0 (layer/rms), 0.1 (batch)
    embed: Optional[int] = None  # embedding width for token input; None: min(hidden, 128)
    pool: str = "last"  # classifiers: last valid state | masked mean
    # optimisation
    batch_size: int = 32
    seq_len: int = 100  # charlm: BPTT chunk; adding/copy: sequence length
    epochs: int = 1
    max_steps: Optional[int] = None  # exactly this many updates, over as many epochs as needed (None: `epochs`)
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd / rmsprop
    clip: float = 1.0  # gradient-norm clipping; 0 disables
    schedule: str = "constant"  # constant | cosine | step
    warmup: int = 0  # linear warm-up steps (any schedule)
    step_size: int = 1000  # step schedule: multiply the lr by step_gamma every step_size updates
    step_gamma: float = 0.5
    seed: int = 0
    # running and reporting
    device: str = "cpu"
    out: Optional[str] = None  # run directory; None: nothing written
    checkpoint_every: int = 0  # also checkpoint every N updates (always at each epoch end)
    eval_every: int = 0  # also evaluate on the valid split every K updates (always at each epoch end)
    log_every: int = 10  # write the training loss to metrics.jsonl every N updates (hooks see every one)
    progress: bool = True
    tensorboard: bool = True  # only used when the tensorboard package is importable
    # multi-process training (torchrun / `normrnn train --nproc N` set rank and world_size from the environment)
    rank: int = 0
    world_size: int = 1  # batch_size is per rank: the global batch is world_size·batch_size
    sync_stats: bool = False  # batch norm: per-step statistics over all ranks (normrnn.sync)
    dist_timeout: float = 600.0  # seconds any collective may wait for a peer before the job fails
    # task-specific knobs: adding {"min_len"}, copy {"copy_len", "symbols", "min_delay"} (variable lengths)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def data_name(self) -> str:
        return self.data if self.data is not None else DEFAULT_DATA[self.task]

    @property
    def is_main_process(self) -> bool:
        """Only rank 0 logs, evaluates and checkpoints."""
        return self.rank == 0

    @property
    def syncs_batch_norm(self) -> bool:
        """Whether batch-norm statistics are all-reduced across ranks (one collective per norm and step)."""
        return self.sync_stats and self.norm == "batch" and self.world_size > 1

    def rnn_config(self, max_steps: int = 256) -> RNNConfig:
        """The model's recurrent options; ``max_steps``: batch-norm statistics to keep (the task's length)."""
        return RNNConfig(cell=self.cell, norm=self.norm, norm_terms=self.norm_terms, layers=self.layers,
                         hidden=self.hidden, bidirectional=self.bidirectional, residual=self.residual,
                         dropout=self.dropout, zoneout=self.zoneout, dropconnect=self.dropconnect,
                         nonlinearity=self.nonlinearity, norm_cell=self.norm_cell, gamma_init=self.gamma_init,
                         max_steps=max(1, max_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(str, choices))}")


def _positive(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value >= 1)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {value!r}")


def validate(c: TrainConfig) -> None:
    """Raise one ValueError naming the first bad option."""
    _choice("task", c.task, TASKS)
    _choice("cell", c.cell, CELLS)
    _choice("norm", c.norm, ("layer", "rms", "batch", "none"))
    _choice("norm_terms", c.norm_terms, ("separate", "joint"))
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("schedule", c.schedule, SCHEDULES)
    _choice("image_mode", c.image_mode, IMAGE_MODES)
    _choice("pool", c.pool, POOLS)
    _choice("nonlinearity", c.nonlinearity, ("tanh", "relu"))
    if c.gamma_init is not None and (isinstance(c.gamma_init, bool) or not isinstance(c.gamma_init, (int, float))):
        raise ValueError(f"gamma_init must be a number or None, got {c.gamma_init!r}")
    for name in ("layers", "hidden", "batch_size", "seq_len", "epochs", "step_size", "log_every"):
        _positive(name, getattr(c, name))
    for name in ("max_steps", "limit", "eval_limit", "embed"):
        _positive(name, getattr(c, name), allow_none=True)
    for name in ("checkpoint_every", "eval_every", "warmup", "seed", "rank"):
        _positive(name, getattr(c, name), allow_zero=True)
    _positive("world_size", c.world_size)
    if not isinstance(c.sync_stats, bool):
        raise ValueError(f"sync_stats must be a bool, got {c.sync_stats!r}")
    if isinstance(c.dist_timeout, bool) or not isinstance(c.dist_timeout, (int, float)) or not c.dist_timeout > 0:
        raise ValueError(f"dist_timeout must be a positive number of seconds, got {c.dist_timeout!r}")
    if c.rank >= c.world_size:
        raise ValueError(f"rank {c.rank} is not below world_size {c.world_size}")
    for name in ("dropout", "zoneout", "dropconnect"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    for name in ("lr", "step_gamma"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    for name in ("weight_decay", "momentum", "clip"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    if c.task in ("charlm", "copy") and c.bidirectional:
        raise ValueError(f"task {c.task!r} predicts each step from the past: it cannot use a bidirectional stack")
    if c.task in ("adding", "copy") and c.data_name not in SYNTHETIC_NAMES[c.task]:
        raise ValueError(f"task {c.task!r} generates its own data; --data must be one of "
                         f"{', '.join(SYNTHETIC_NAMES[c.task])}, got {c.data!r}")
    if not isinstance(c.extra, dict):
        raise ValueError("extra must be a dict")


def check_resume_compatible(saved: TrainConfig, requested: TrainConfig) -> None:
    """ValueError listing every option that differs between a run's saved config and a resume request,
    apart from those in :data:`RESUME_SAFE`."""
    a, b = saved.to_dict(), requested.to_dict()
    bad = [f"{k}: run has {a[k]!r}, resume asked for {b[k]!r}" for k in a if k not in RESUME_SAFE and a[k] != b[k]]
    if bad:
        raise ValueError("incompatible resume: the run directory was trained with different options ("
                         + "; ".join(bad) + "); only " + ", ".join(sorted(RESUME_SAFE)) + " may change")
