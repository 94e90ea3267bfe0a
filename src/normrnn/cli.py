"""The ``normrnn`` command: ``data``, ``train``, ``bench`` and ``study`` subcommands.

Each subcommand lives with its own code (``normrnn.data.cli``, ``normrnn.train.cli``, ...) and registers
itself here; importing is lazy so ``normrnn data list`` does not pay for the study's imports.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> module with `register(subparsers)`; each parser sets `func(args) -> int`.
SUBCOMMANDS = {
    "data": "normrnn.data.cli",
    "train": "normrnn.train.cli",
    "bench": "normrnn.bench.speed",
    "study": "normrnn.study.cli",
}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            if not e.name or not e.name.startswith("normrnn"):
                raise
            sub.add_parser(name, help="(not available in this build)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the named subcommand's module when one is given.
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(only).parse_args(argv)
    if not hasattr(args, "func"):
        build_parser(only).error(f"'{args.command}' is not available in this build")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
