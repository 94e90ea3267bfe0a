"""``normrnn train``: the command line over :func:`normrnn.train.train`.

Every option defaults to ``None`` on the parser so that ``--resume RUN_DIR`` can tell the options a user typed
(which must agree with the run's config.json, apart from the resume-safe ones) from those left alone.

Several processes: under torchrun (``torchrun --nproc_per_node N -m normrnn train ...``) the rank and world
size come from the environment; ``--nproc N`` starts that same command through ``torch.distributed.run``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any, Optional

from .config import IMAGE_MODES, OPTIMIZERS, SCHEDULES, TASKS, TrainConfig

# CLI flag -> TrainConfig field, where the names differ.
_RENAMED = {"no_progress": "progress"}
# Flags of the launching process, not of a run (never passed on to the workers).
_LAUNCH_ONLY = ("nproc",)
_PARSER: Optional[argparse.ArgumentParser] = None  # the `train` parser, to rebuild a worker's command line


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``normrnn``'s subparsers."""
    p = subparsers.add_parser("train", help="train a model with normalized recurrent layers",
                              description="Train a char-LM, text/image classifier or a synthetic task. "
                                          "Defaults: LN-LSTM, 256 units, batch 32, seq 100, Adam 2e-3.",
                              argument_default=None)
    d = TrainConfig()
    g = p.add_argument_group("task and data")
    g.add_argument("--task", choices=TASKS, help=f"what to learn (default {d.task})")
    g.add_argument("--data", metavar="NAME_OR_PATH",
                   help="dataset name or path (default per task: shakespeare, wordnet, fashion-mnist, synthetic)")
    g.add_argument("--data-dir", help="dataset cache directory")
    g.add_argument("--image-mode", choices=IMAGE_MODES, help="image task: pixel|row|permuted sequence, or cnn")
    g.add_argument("--limit", type=int, help="use at most N chars (charlm) / examples per split")
    g.add_argument("--eval-limit", type=int, help="valid/test limit (default: --limit)")
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=("lstm", "gru", "rnn"), help=f"recurrent cell (default {d.cell})")
    g.add_argument("--norm", choices=("layer", "rms", "batch", "none"), help=f"normalization (default {d.norm})")
    g.add_argument("--norm-terms", choices=("separate", "joint"), help="normalize W·x and U·h apart or jointly")
    g.add_argument("--layers", type=int, help=f"stacked layers (default {d.layers})")
    g.add_argument("--hidden", type=int, help=f"hidden units (default {d.hidden})")
    g.add_argument("--bidirectional", action="store_const", const=True, help="bidirectional (classifiers)")
    g.add_argument("--residual", action="store_const", const=True, help="residual connections between layers")
    g.add_argument("--dropout", type=float, help="dropout between layers")
    g.add_argument("--zoneout", type=float, help="zoneout probability")
    g.add_argument("--dropconnect", type=float, help="DropConnect on recurrent weights")
    g.add_argument("--nonlinearity", choices=("tanh", "relu"), help="rnn cell nonlinearity (default tanh)")
    g.add_argument("--no-norm-cell", dest="norm_cell", action="store_const", const=False,
                   help="lstm: do not normalize the cell before the output tanh")
    g.add_argument("--gamma-init", type=float, help="initial norm gain (default 1.0; 0.1 for batch norm)")
    g.add_argument("--embed", type=int, help="embedding width for token input (default min(hidden, 128))")
    g.add_argument("--pool", choices=("last", "mean"), help="classifier pooling (default last valid state)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help=f"(default {d.batch_size})")
    g.add_argument("--seq-len", type=int, help="charlm BPTT length / synthetic length / max tokens per text "
                                               f"(default {d.seq_len})")
    g.add_argument("--epochs", type=int, help=f"(default {d.epochs})")
    g.add_argument("--max-steps", type=int, help="stop after N updates")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip", type=float, help=f"gradient-norm clipping, 0 = off (default {d.clip})")
    g.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    g.add_argument("--warmup", type=int, help="linear warm-up updates")
    g.add_argument("--seed", type=int, help=f"(default {d.seed})")
    g = p.add_argument_group("running")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<task>-<norm>-<time>)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N updates")
    g.add_argument("--eval-every", type=int, help="also evaluate every N updates")
    g.add_argument("--log-every", type=int, help="log the training loss every N updates")
    g.add_argument("--no-progress", action="store_const", const=True, help="no progress bars")
    g = p.add_argument_group("several processes")
    g.add_argument("--nproc", type=int, help="train in N processes on this machine (DDP; gloo on CPU, NCCL on "
                                             "CUDA), launched through torch.distributed.run; --batch-size is per "
                                             "process")
    g.add_argument("--sync-stats", action="store_const", const=True,
                   help="batch norm: per-step statistics over all processes, not each one's own batch")
    g.add_argument("--dist-timeout", type=float,
                   help=f"seconds a process waits for the others before the job fails (default {d.dist_timeout:g})")
    p.set_defaults(func=main)
    global _PARSER
    _PARSER = p
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the user typed on the command line."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in vars(args).items():
        if value is None or key in ("func", "command", "resume", "threads", *_LAUNCH_ONLY):
            continue
        name = _RENAMED.get(key, key)
        if name == "progress":
            value = not value
        if name in fields:
            out[name] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: the saved one plus typed options for ``--resume``, else defaults plus options."""
    typed = _overrides(args)
    rank, world = _env_rank_world()
    if world > 1:  # started by torchrun: who this process is comes from the launcher, not the options
        typed.update(rank=rank, world_size=world)
    if args.resume:
        from .trainer import load_run_config

        if "out" in typed and typed["out"] != args.resume:
            raise ValueError("--out and --resume name different directories; --resume RUN_DIR is enough")
        return load_run_config(args.resume, **typed)
    if "out" not in typed:
        typed["out"] = f"runs/{typed.get('task', 'charlm')}-{typed.get('norm', 'layer')}-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig(**typed)


def main(args: argparse.Namespace) -> int:
    """Run ``normrnn train``; bad options and unusable data end in SystemExit with one message."""
    from ..data import DataUnavailableError
    from .trainer import Trainer

    if args.nproc is not None and args.nproc < 1:
        raise SystemExit(f"normrnn train: error: --nproc must be a positive int, got {args.nproc}")
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch(args)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        config = config_from_args(args)
        trainer = Trainer(config, resume=bool(args.resume))
    except (ValueError, FileNotFoundError, DataUnavailableError) as e:
        raise SystemExit(f"normrnn train: error: {e}") from None
    c = config
    if not c.is_main_process:  # rank 0 speaks for the job
        trainer.fit()
        return 0
    action = f"resuming at step {trainer.step}" if args.resume else "training"
    print(f"{action}: {c.task} on {trainer.task.info.get('dataset')} | {c.cell} norm={c.norm} layers={c.layers} "
          f"hidden={c.hidden} | {trainer.steps_per_epoch} steps/epoch | run dir {c.out}"
          + (f" | {c.world_size} processes" if c.world_size > 1 else ""), file=sys.stderr)
    summary = trainer.fit()
    _report(summary)
    return 0


def _report(summary: dict[str, Any], stream: Optional[Any] = None) -> None:
    stream = stream or sys.stdout
    metric = summary["metric"]
    rate = summary["items_per_s"]
    if rate:
        print(f"trained {summary['steps']} steps in {summary['train_time_s']:.1f} s: "
              f"{rate:,.0f} {summary['unit']}/s", file=stream)
    if summary.get("diverged"):
        print("training diverged (non-finite loss); stopped early", file=stream)
    valid, test = summary["valid"].get(metric), summary["test"].get(metric)
    print(f"valid {metric} {valid:.4f}" if valid is not None else f"valid {metric} n/a", file=stream)
    if test is not None:
        print(f"test {metric} {test:.4f}", file=stream)


def _env_rank_world() -> tuple[int, int]:
    from .distributed import env_rank_world

    return env_rank_world()


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``normrnn train`` options typed in ``args``, as a command line, without the launch-only ones.

    Rebuilt from the parser rather than taken from ``sys.argv``, so it also works when ``main`` is called from
    Python. A fresh run gets its run directory fixed here, so every worker writes to (and reads) the same one.
    """
    assert _PARSER is not None, "register() builds the parser first"
    argv: list[str] = []
    values = vars(args)
    for action in _PARSER._actions:
        if not action.option_strings or action.dest in _LAUNCH_ONLY:
            continue
        value = values.get(action.dest)
        if value is None:
            continue
        flag = action.option_strings[-1]
        argv += [flag] if action.nargs == 0 else [flag, str(value)]
    if not args.resume and args.out is None:
        argv += ["--out", f"runs/{args.task or 'charlm'}-{args.norm or 'layer'}-{time.strftime('%Y%m%d-%H%M%S')}"]
    return argv


def launch(args: argparse.Namespace) -> int:
    """Run ``python -m normrnn train ...`` in ``args.nproc`` processes through ``torch.distributed.run`` on this
    machine (a free local port; one CPU thread per process unless --threads says otherwise).

    Returns the launcher's exit status: non-zero, with the failing rank's error, when any worker fails (the
    launcher stops the others; the process-group timeout covers a worker that hangs instead of dying).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "--max_restarts=0", "-m", "normrnn", "train", *worker_argv(args)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores; torch's default would oversubscribe
    print(f"normrnn train: launching {args.nproc} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.run(cmd, env=env).returncode
