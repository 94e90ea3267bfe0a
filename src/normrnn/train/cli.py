"""``normrnn train``: the command line over :func:`normrnn.train.train`.

Every option defaults to ``None`` on the parser so that ``--resume RUN_DIR`` can tell the options a user typed
(which must agree with the run's config.json, apart from the resume-safe ones) from those left alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Optional

from .config import IMAGE_MODES, OPTIMIZERS, SCHEDULES, TASKS, TrainConfig

# CLI flag -> TrainConfig field, where the names differ.
_RENAMED = {"no_progress": "progress"}


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
    p.set_defaults(func=main)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the user typed on the command line."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in vars(args).items():
        if value is None or key in ("func", "command", "resume", "threads"):
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

    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        config = config_from_args(args)
        trainer = Trainer(config, resume=bool(args.resume))
    except (ValueError, FileNotFoundError, DataUnavailableError) as e:
        raise SystemExit(f"normrnn train: error: {e}") from None
    c = config
    action = f"resuming at step {trainer.step}" if args.resume else "training"
    print(f"{action}: {c.task} on {trainer.task.info.get('dataset')} | {c.cell} norm={c.norm} layers={c.layers} "
          f"hidden={c.hidden} | {trainer.steps_per_epoch} steps/epoch | run dir {c.out}", file=sys.stderr)
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
