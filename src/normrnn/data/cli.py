"""``normrnn data list`` / ``normrnn data fetch NAME [--data-dir DIR]``.

Call :func:`register` with the main parser's ``add_subparsers()`` object; the
parsed namespace gets ``func=run``, so the main CLI can do ``return args.func(args)``.
"""

from __future__ import annotations

import argparse
import sys

from . import registry

__all__ = ["register", "run", "main"]


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``data`` command (with ``list`` and ``fetch``) to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="list and fetch datasets",
                                 description="Datasets: what exists, what is cached, fetch on demand.")
    sub = data.add_subparsers(dest="data_command", metavar="{list,fetch}")
    sub.required = True
    p_list = sub.add_parser("list", help="show known datasets and whether they are cached")
    p_list.add_argument("--data-dir", default=None, help="cache directory (default $NORMRNN_DATA or ~/.cache/normrnn)")
    p_fetch = sub.add_parser("fetch", help="download and verify a dataset into the cache")
    p_fetch.add_argument("name", help="dataset name (see 'data list'), or 'all'")
    p_fetch.add_argument("--data-dir", default=None, help="cache directory (default $NORMRNN_DATA or ~/.cache/normrnn)")
    for p in (data, p_list, p_fetch):
        p.set_defaults(func=run)
    return data


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``data`` command; returns the process exit code."""
    out = sys.stdout
    if args.data_command == "list":
        root = registry.cache_dir(args.data_dir)
        print(f"cache: {root}", file=out)
        rows = [("name", "kind", "cached", "size", "licence", "source")]
        for info in registry.list_datasets(args.data_dir):
            rows.append((info.name, info.kind, "yes" if info.cached else "no", _human(info.size),
                         info.licence, info.source))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5], file=out)
        return 0
    if args.data_command == "fetch":
        names = ([d.name for d in registry.DATASETS.values() if d.artifact] if args.name == "all"
                 else [args.name])
        status = 0
        for name in names:
            try:
                path = registry.fetch(name, args.data_dir)
            except (ValueError, registry.DataUnavailableError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"{name}: {path}", file=out)
        return status
    raise AssertionError(args.data_command)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m normrnn.data.cli list``."""
    parser = argparse.ArgumentParser(prog="normrnn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
