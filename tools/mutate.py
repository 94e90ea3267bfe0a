#!/usr/bin/env python3
"""Plant bugs one at a time in a scratch copy of the repository and check that the tests named for each one
catch it (``tools/mutations.py`` holds the list: what to change, where, why it matters, which tests must fail).

    .venv/bin/python tools/mutate.py                 # every mutation
    .venv/bin/python tools/mutate.py --fast          # the quick subset (Python-only, no rebuild of the kernels)
    .venv/bin/python tools/mutate.py --only for_cols_offset,residual_pre_norm
    .venv/bin/python tools/mutate.py --list

A mutation is located by its exact snippet, searched in every file its glob matches (``src/normrnn/fused/csrc/*``
rather than one file, so the list survives files being split or renamed); it must occur exactly once, or the
mutation is reported as stale rather than silently skipped. The scratch copy is imported through PYTHONPATH
(checked: ``normrnn.__file__`` must lie in it) with the repository's own .venv, and the native kernels of mutated
C++ sources build into their own cache folder (``$NORMRNN_MUTANT_BUILD``, default ~/.cache/normrnn/mutants) so
the main build cache stays clean. Before any mutation the named tests must pass on the unmodified copy (else a
"kill" would mean nothing). Writes a Markdown table and JSON (``--out``, default ``mutation-report``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from mutations import MUTATIONS, Mutation  # noqa: E402

COPY = ["src", "tests", "benchmarks", "pyproject.toml", "README.md", "Makefile", "constraints.txt"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "study-out", "*.so", "*.o")


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def scratch_copy(where: Path) -> Path:
    dest = where / "repo"
    dest.mkdir()
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def locate(repo: Path, m: Mutation) -> tuple[Path, str]:
    """The one file under ``repo`` matching m.glob that contains m.find exactly once, and its text."""
    hits = []
    for name in sorted(glob.glob(str(repo / m.glob), recursive=True)):
        path = Path(name)
        if not path.is_file():
            continue
        text = path.read_text()
        n = text.count(m.find)
        hits.extend([(path, text)] * n)
    if len(hits) != 1:
        raise LookupError(f"{m.id}: snippet found {len(hits)} times under {m.glob} (must be exactly once): "
                          f"{m.find[:80]!r}")
    return hits[0]


def env_for(repo: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["NORMRNN_BUILD"] = os.environ.get("NORMRNN_MUTANT_BUILD",
                                          str(Path.home() / ".cache" / "normrnn" / "mutants"))
    env.pop("NORMRNN_NATIVE", None)
    return env


def check_import(repo: Path) -> None:
    out = subprocess.run([python(), "-c", "import normrnn; print(normrnn.__file__)"], cwd=repo, env=env_for(repo),
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"the scratch copy is not what gets imported: normrnn.__file__ = {out}")


def run_tests(repo: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    cmd = [python(), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=timeout)
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        code, out = -1, f"timeout after {timeout:.0f} s\n{(e.stdout or b'')[-2000:]!r}"
    return code, time.monotonic() - start, out


def summary_line(out: str) -> str:
    """The first failing test (what caught the mutant), else pytest's last line."""
    lines = [line for line in out.strip().splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return (failed[0] if failed else lines[-1] if lines else "")[:200]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the mutations marked fast (no kernel rebuilds)")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the named tests unmutated first")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    ap.add_argument("--out", default="mutation-report", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)

    chosen = [m for m in MUTATIONS if (not args.fast or m.fast)
              and (not args.only or m.id in args.only.split(","))]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.id:32} {'fast' if m.fast else '    '} {m.glob:36} {m.why}")
        return 0
    if not chosen:
        raise SystemExit("no mutation selected")

    with tempfile.TemporaryDirectory(prefix="normrnn-mutants-") as tmp:
        repo = scratch_copy(Path(tmp))
        check_import(repo)
        for m in chosen:  # every snippet must still exist before spending time on any run
            locate(repo, m)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            code, secs, out = run_tests(repo, tests, args.timeout * 2)
            print(f"baseline (unmutated, {len(tests)} test ids): rc={code} in {secs:.0f} s: {summary_line(out)}",
                  flush=True)
            if code != 0:
                print(out[-6000:])
                raise SystemExit("the named tests fail without any mutation: fix them first")
        rows = []
        for m in chosen:
            path, text = locate(repo, m)
            path.write_text(text.replace(m.find, m.replace, 1))
            try:
                code, secs, out = run_tests(repo, m.tests, args.timeout)
            finally:
                path.write_text(text)
            killed = code not in (0, 5)  # 0: all passed; 5: nothing collected (a stale test id, not a kill)
            if code in (2, 3, 4):  # interrupted, internal or usage error: the run said nothing about the mutant
                killed = False
            row = dict(id=m.id, file=str(path.relative_to(repo)), killed=killed, rc=code, seconds=round(secs, 1),
                       tests=m.tests, why=m.why, result=summary_line(out), equivalent=m.equivalent)
            rows.append(row)
            print(f"{'KILLED ' if killed else 'SURVIVED'} {m.id:32} rc={code} {secs:5.0f} s  {row['result']}",
                  flush=True)
            if not killed:
                print(out[-3000:])

    killed = sum(r["killed"] for r in rows)
    explained = sum((not r["killed"]) and bool(r["equivalent"]) for r in rows)
    lines = [f"Mutation kill rate: {killed}/{len(rows)} ({100 * killed / len(rows):.0f}%)"
             + (f", {explained} survivor(s) explained as equivalent" if explained else ""), "",
             "| mutation | file | killed | s | tests that must catch it | caught by | what it plants |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        caught = r["result"].split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ") if r["killed"] else "–"
        lines.append(f"| {r['id']} | {r['file']} | {'yes' if r['killed'] else 'NO'} | {r['seconds']:.0f} | "
                     f"{'<br>'.join(r['tests'])} | {caught} | {r['why']} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(json.dumps(dict(killed=killed, total=len(rows), rows=rows), indent=1))
    print("\n".join(lines))
    return 0 if killed + explained == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
