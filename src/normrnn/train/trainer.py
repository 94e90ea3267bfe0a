"""The training loop: optimizer, schedule, clipping, evaluation, logging and exact resume.

Reads top to bottom: building the optimizer and schedule, then :class:`Trainer` (set-up, the loop, evaluation,
checkpoints), then :func:`train`, the one-call Python API.

Exact resume rests on three things: the batches of an epoch are a pure function of (seed, epoch) (see
:mod:`.batches`); a checkpoint holds everything a step reads (weights, optimizer and schedule state, the carried
BPTT state, the data position and every RNG state); and evaluation runs with forked RNG so it never shifts the
random numbers training draws.

Several processes (``world_size > 1``, launched by torchrun): each rank trains on its share of every step's
batches in DDP (:mod:`.distributed`), all ranks log the same all-reduced loss, rank 0 evaluates (the result is
broadcast) and writes checkpoints, which hold every rank's RNG and BPTT state, so a restart with the same world
size resumes exactly.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .models import count_parameters
from .checkpoint import (atomic_save, atomic_write_text, checkpoint_path, load_checkpoint, rng_state,
                         seed_everything, set_rng_state)
from .config import TrainConfig, check_resume_compatible
from .distributed import (all_reduce_mean, broadcast_object, gather_objects, init_distributed, local_device,
                          pad_to_common_length, rank_plan, shutdown, unwrap_model, wrap_model)
from .runlog import Hook, RunLog
from .tasks import Task, make_task, to_device

CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------- optimisation


def build_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / RMSprop / SGD (with ``momentum``) at ``lr`` with ``weight_decay``."""
    c = config
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum)
    return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum)


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier after ``step`` updates: linear warm-up, then constant, cosine to zero over
    ``total_steps``, or ×``step_gamma`` every ``step_size`` updates."""
    c = config

    def factor(step: int) -> float:
        if c.warmup and step < c.warmup:
            return (step + 1) / c.warmup
        if c.schedule == "cosine":
            progress = min(1.0, (step - c.warmup) / max(1, total_steps - c.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if c.schedule == "step":
            return c.step_gamma ** ((step - c.warmup) // c.step_size)
        return 1.0

    return factor


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present); ValueError for anything unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; expected cpu, cuda, cuda:N or auto")
    return device


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One run. ``Trainer(config).fit()`` trains and returns the summary dict; ``resume=True`` continues the
    run in ``config.out`` from its checkpoint (ValueError when there is none or the options differ)."""

    def __init__(self, config: TrainConfig, hooks: Sequence[Hook] = (), resume: bool = False) -> None:
        self.config, self.hooks = config, list(hooks)
        self.device = resolve_device(config.device)
        self.distributed = config.world_size > 1
        if self.distributed:
            self.device = local_device(self.device)
        self._owns_group = init_distributed(config, self.device)
        if self.distributed:
            # A default run dir is stamped with the time, which may differ between ranks: rank 0's wins.
            config.out = broadcast_object(config.out, config)
        self.main = config.is_main_process
        self.run_dir = Path(config.out) if config.out else None
        checkpoint = self._prepare_run_dir(resume)

        # Seeding before anything random (model init, dropout masks) makes the run a function of the seed.
        seed_everything(config.seed)
        self.task: Task = make_task(config)
        self.model = self.task.build_model().to(self.device)
        self.module = wrap_model(self.model, config, self.device)  # what the loop calls (DDP with world > 1)
        if self.distributed and config.rank > 0:
            # Same init everywhere (DDP also broadcasts rank 0's weights), but each rank its own dropout masks.
            seed_everything(config.seed + 7919 * config.rank)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, config)
        self.steps_per_epoch = len(rank_plan(self.task, 0, config))
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split gives no batch of size {config.batch_size}; "
                             f"lower --batch-size or raise --limit")
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs  # the cosine horizon
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config, self.total_steps))

        # Position: `step` updates done; the next batch is `batch_index` of epoch `epoch`.
        self.step, self.epoch, self.batch_index = 0, 0, 0
        self.best: Optional[dict[str, Any]] = None
        self.last_valid: dict[str, float] = {}
        self.diverged = False
        if checkpoint is not None:
            self._restore(checkpoint)
        self.log = RunLog(self.run_dir if self.main else None, config.tensorboard)

    # ------------------------------------------------------------------------------------------ set-up

    def _prepare_run_dir(self, resume: bool) -> Optional[dict]:
        """Create the run directory (fresh run) or load its checkpoint and check the options (resume)."""
        c = self.config
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs the run directory (config.out / --resume RUN_DIR)")
            config_file = self.run_dir / "config.json"
            if not config_file.is_file():
                raise ValueError(f"cannot resume: {self.run_dir} is not a run directory (no config.json)")
            check_resume_compatible(TrainConfig.from_dict(json.loads(config_file.read_text())), c)
            checkpoint = load_checkpoint(self.run_dir, map_location=self.device)
            if checkpoint.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"cannot resume: checkpoint format {checkpoint.get('version')!r} is not "
                                 f"{CHECKPOINT_VERSION}")
            if self.main:
                atomic_write_text(json.dumps(c.to_dict(), indent=2), config_file)  # resume-safe changes
                self._truncate_metrics(checkpoint["step"])
            return checkpoint
        if self.run_dir is not None and self.main:
            if checkpoint_path(self.run_dir).exists():
                raise ValueError(f"{self.run_dir} already holds a run's checkpoint; resume it (--resume) or "
                                 f"choose another --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            atomic_write_text(json.dumps(c.to_dict(), indent=2), self.run_dir / "config.json")
        return None

    def _truncate_metrics(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint: the resumed run writes them again."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= step]
        atomic_write_text("".join(line + "\n" for line in keep), path)

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.epoch, self.batch_index = ck["step"], ck["epoch"], ck["batch_index"]
        self.best, self.last_valid, self.diverged = ck["best"], ck["last_valid"], ck.get("diverged", False)
        # Several ranks: each continues with its own RNG and BPTT state (world_size cannot change on resume).
        mine = ck["ranks"][self.config.rank] if "ranks" in ck else ck
        if self.batch_index > 0:  # mid-epoch: the truncated-BPTT state continues where it stopped
            self.task.start_epoch(self.epoch)
            self.task.load_carry_state(mine["carry"], self.device)
        set_rng_state(mine["rng"])  # last: nothing above may draw random numbers after this

    def state_dict(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                "batch_index": self.batch_index, "carry": self.task.carry_state(), "best": self.best,
                "last_valid": self.last_valid, "diverged": self.diverged, "rng": rng_state()}

    def _rank_states(self) -> Optional[list[dict[str, Any]]]:
        """Every rank's RNG and carried BPTT state (on CPU), gathered on all ranks; None for one process."""
        if not self.distributed:
            return None
        carry = self.task.carry_state()
        if carry is not None:
            carry = carry.cpu() if torch.is_tensor(carry) else tuple(s.cpu() for s in carry)
        return gather_objects({"rng": rng_state(), "carry": carry}, self.config)

    def save_checkpoint(self) -> None:
        if self.run_dir is None:
            return
        ranks = self._rank_states()  # a collective: every rank takes part, rank 0 writes
        if not self.main:
            return
        state = self.state_dict()
        if ranks is not None:
            state["ranks"] = ranks
        atomic_save(state, checkpoint_path(self.run_dir))
        self._emit("checkpoint", {"step": self.step, "epoch": self.epoch, "batch_index": self.batch_index})

    # ------------------------------------------------------------------------------------------ hooks & logs

    def _emit(self, event: str, record: dict) -> None:
        for hook in self.hooks:
            hook(event, record)

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``max_steps``; evaluate; return the summary (also ``summary.json``)."""
        c = self.config
        items, train_time = 0, 0.0
        limit = c.max_steps  # None: run every epoch
        stopped = False
        # max_steps, when given, wins over epochs: exactly max_steps updates, over as many epochs as that takes.
        while (limit is not None or self.epoch < c.epochs) and not stopped:
            plan = rank_plan(self.task, self.epoch, c)
            if self.batch_index == 0:
                self.task.start_epoch(self.epoch)
            bar = tqdm(total=len(plan), initial=self.batch_index,
                       desc=f"epoch {self.epoch + 1}" + ("" if limit else f"/{c.epochs}"),
                       disable=not (c.progress and self.main), leave=False, dynamic_ncols=True)
            for i in range(self.batch_index, len(plan)):
                if (limit is not None and self.step >= limit) or self.diverged:
                    stopped = True
                    break
                t0 = time.perf_counter()
                loss, n = self._train_step(plan[i])
                train_time += time.perf_counter() - t0
                items += n
                self.batch_index = i + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", **{f"{self.task.unit}/s": f"{items / max(train_time, 1e-9):.0f}"})
                if c.eval_every and self.step % c.eval_every == 0:
                    self.evaluate("valid")
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
            bar.close()
            if not stopped:  # the epoch ran to its end
                self.epoch, self.batch_index = self.epoch + 1, 0
                self.evaluate("valid")
                self.save_checkpoint()
        if stopped or not self.last_valid:
            # Stopped by max_steps (or resumed a finished run): evaluate and checkpoint where it stopped.
            if not self.last_valid or self.last_valid.get("step") != self.step:
                self.evaluate("valid")
            self.save_checkpoint()
        test = self.evaluate("test")
        summary = self._summary(test, items, train_time)
        if self.run_dir is not None and self.main:
            atomic_write_text(json.dumps(summary, indent=2), self.run_dir / "summary.json")
        self._emit("end", summary)
        self.log.close()
        shutdown(self._owns_group)
        return summary

    def _train_step(self, batch: dict) -> tuple[float, int]:
        """One update on ``batch``; returns (loss, items). Sets ``diverged`` on a non-finite loss."""
        c = self.config
        self.module.train()
        batch = pad_to_common_length(to_device(batch, self.device), c)
        loss, n = self.task.loss(self.module, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks here
        # The norm is computed (and reported) even without clipping: inf max_norm leaves gradients unchanged.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.clip if c.clip > 0 else math.inf))
        # The mean over ranks: what every rank logs, and a divergence all ranks agree on (else they'd part ways).
        value = all_reduce_mean(float(loss.detach()), c, self.device)
        if not math.isfinite(value):
            # A diverged run is a result, not a crash: stop training and report it.
            self.diverged = True
            return value, n
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": value, "grad_norm": grad_norm,
                  "lr": lr, "items": n}
        self._emit("step", record)
        if self.main and self.step % c.log_every == 0:
            self.log.write(record)
        return value, n

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the current weights on ``split``; logged, and for ``valid`` tracked as best/last.

        RNG is forked so evaluation never changes what training draws next (exact resume). Several ranks: rank 0
        evaluates and broadcasts the metrics, so every rank tracks the same best and returns the same summary."""
        metrics = self._compute_metrics(split) if self.main else {}
        metrics = broadcast_object(metrics, self.config)
        record = {"kind": "eval", "split": split, "step": self.step, "epoch": self.epoch, **metrics}
        if split == "valid":
            self.last_valid = dict(record)
            value = metrics.get(self.task.metric)
            if value is not None and math.isfinite(value) and (self.best is None or (
                    value > self.best["value"] if self.task.higher_is_better else value < self.best["value"])):
                self.best = {"value": value, "step": self.step, "epoch": self.epoch}
        self.log.write(record)
        self._emit("eval", record)
        return metrics

    def _compute_metrics(self, split: str) -> dict[str, float]:
        model = unwrap_model(self.module)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                return self.task.evaluate(model, split)
            finally:
                model.train()

    def _summary(self, test: dict[str, float], items: int, train_time: float) -> dict[str, Any]:
        valid = {k: v for k, v in self.last_valid.items() if k not in ("kind", "split", "step", "epoch")}
        return {
            "task": self.config.task, "dataset": self.task.info.get("dataset"), "metric": self.task.metric,
            "higher_is_better": self.task.higher_is_better,
            "valid": valid, "test": test,
            **{f"valid_{k}": v for k, v in valid.items()}, **{f"test_{k}": v for k, v in test.items()},
            "best_valid": None if self.best is None else self.best["value"],
            "best_step": None if self.best is None else self.best["step"],
            "steps": self.step, "epochs_completed": self.epoch, "diverged": self.diverged,
            "params": count_parameters(self.model), "unit": self.task.unit, "world_size": self.config.world_size,
            # Throughput of this process's training steps only (evaluation and checkpoints excluded).
            "train_time_s": train_time, "items_per_s": items / train_time if train_time > 0 else None,
            "data": self.task.info, "run_dir": None if self.run_dir is None else str(self.run_dir),
        }


# ---------------------------------------------------------------------------------------------- API


def train(config: TrainConfig, hooks: Sequence[Hook] = (), resume: bool = False) -> dict[str, Any]:
    """Train ``config`` and return the summary dict (valid/test metrics, best valid, steps, throughput).

    hooks: callables ``hook(event, record)`` for "step" (loss, grad_norm, lr), "eval", "checkpoint", "end".
    resume: continue the run in ``config.out`` from its checkpoint.
    """
    return Trainer(config, hooks=hooks, resume=resume).fit()


def load_run_config(run_dir: str, **overrides: Any) -> TrainConfig:
    """The config a run directory was trained with, with ``overrides`` applied (for :func:`train` with
    ``resume=True``); ValueError when ``run_dir`` is not a run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"cannot resume: {run_dir} is not a run directory (no config.json)")
    d = json.loads(path.read_text())
    d.update(overrides, out=str(run_dir))
    return TrainConfig.from_dict(d)
