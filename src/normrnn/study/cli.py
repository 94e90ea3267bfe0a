"""``normrnn study``: run the claims, print the verdict table, write the report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .core import PROFILES, StudyContext

DEFAULT_SEEDS = {"smoke": 1, "quick": 3, "standard": 5, "full": 5}


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("study", help="test the claims about batch/layer/RMS norm in RNNs, write a report",
                              description="Train the models behind each claim and turn it into a measured "
                                          "verdict. Runs are cached under OUT/runs: rerunning resumes.")
    p.add_argument("--profile", choices=PROFILES, default="quick",
                   help="smoke (seconds, CI), quick (default, ≤ 15 min on 2 cores; verdicts indicative), standard "
                        "(about 128 units, thousands of updates, 5 seeds: the profile meant to decide, ≤ 90 min on 2 "
                        "cores), full (paper-sized, days on a CPU)")
    p.add_argument("--only", help="comma-separated claim ids, e.g. C1,C5 (default: all twelve)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="study-out", help="output directory (default study-out)")
    p.add_argument("--seeds", type=int, help="seeds per setting (default: smoke 1, quick 3, standard 5, full 5)")
    p.add_argument("--text", help="your own UTF-8 text file for the char-LM claims")
    p.add_argument("--labelled", help="your own TSV file (label<TAB>text per line) for the classification claims")
    p.add_argument("--images", help="your own image set (MNIST IDX folder or CSV) for the image claims")
    p.add_argument("--data-dir", help="dataset cache directory")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the study's small models run fastest on one thread, and "
                        "timings are not disturbed by threads fighting over cores)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the claims in this many processes (each on --threads threads), split by their planned "
                        "updates; they share the run cache, and the report is written once all are done (the "
                        "standard profile on 2 cores: --jobs 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", "--plan", dest="dry_run", action="store_true",
                   help="train nothing: list per claim the runs, how many are cached in OUT, the model sizes and "
                        "the updates still to do")
    p.set_defaults(func=run)
    return p


def verdict_table(results, ctx: StudyContext) -> str:
    """The verdict table as printed: label, scale, whether the scale can show the effect, and the effect."""
    from .report import INDICATIVE, scale_cell

    lines = [f"{'claim':5s} {'verdict':29s} scale | can this scale show it? | effect (paired, 95% CI)"]
    for r in results:
        v = r.verdict
        lines.append(f"{r.claim.id:5s} {v.label:29s} {v.scale} | {scale_cell(v)} | {v.effect}")
    note = INDICATIVE.get(ctx.profile, "").replace("**", "").replace("`", "")
    return "\n".join(lines + ([f"\n{note}"] if note else []))


TASK_COST = {"charlm": 2.7, "classify": 1.9}  # per update, relative to an image-row update (see claim_cost)


def claim_cost(claim, ctx: StudyContext) -> float:
    """A rough cost of a claim's runs, in 128-unit image-update equivalents. Measured on one idle thread of the AMD
    EPYC, 2026-12-05, batch 32: an image-row update 8.4 ms, a char-LM update (BPTT 50) 23 ms (2.7×), a WordNet
    classifier update with its share of the per-epoch evaluation about 16 ms (1.9×, once its embedding covers only
    the kept examples' words). An epoch-based run counts its epochs' updates; a run that trains nothing counts 200."""
    from .plan import estimated_steps

    total = 0.0
    for e in claim.experiments(ctx):
        plans = claim.train_plans(e, ctx)
        if not plans:
            total += 200
        for p in plans:
            c = p.cfg
            steps = c.max_steps or estimated_steps(c)
            search = 1.12 if p.tune_lr else 1.0
            total += steps * TASK_COST.get(c.task, 1.0) * max(c.hidden, 32) / 128 * search
    return total


def split_claims(claims: list, ctx: StudyContext, jobs: int) -> list[list[str]]:
    """Claim ids in ``jobs`` groups of about equal :func:`claim_cost`, largest first into the lightest group."""
    cost = {c.id: claim_cost(c, ctx) for c in claims}
    groups: list[list[str]] = [[] for _ in range(jobs)]
    load = [0.0] * jobs
    for cid in sorted(cost, key=cost.get, reverse=True):
        i = load.index(min(load))
        groups[i].append(cid)
        load[i] += cost[cid]
    return [g for g in groups if g]


def run_in_processes(args: argparse.Namespace, ctx: StudyContext) -> None:
    """Run the claims' experiments in ``args.jobs`` child processes (``normrnn study --only GROUP``), which fill
    the shared run cache; the caller then writes the report from the cache."""
    import subprocess

    from .claims import load_claims

    try:
        claims = load_claims(args.only.split(",") if args.only else None)
    except ValueError as e:
        sys.exit(f"normrnn study: {e}")
    groups = split_claims(claims, ctx, args.jobs)
    base = [sys.executable, "-m", "normrnn", "study", "--profile", ctx.profile, "--seeds", str(ctx.seeds),
            "--device", ctx.device, "--out", str(args.out), "--threads", str(args.threads or 1), "--no-progress"]
    for flag in ("text", "labelled", "images", "data_dir"):
        if getattr(args, flag):
            base += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    procs = []
    for g in groups:
        print(f"normrnn study: process {len(procs) + 1}/{len(groups)} runs {', '.join(g)}")
        procs.append(subprocess.Popen(base + ["--only", ",".join(g)], stdout=subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"normrnn study: a claim process exited with {codes}; the report covers what is cached")


def run(args: argparse.Namespace) -> int:
    import torch

    from . import run_study

    from .owndata import OwnDataError, check_own_data

    for name in ("text", "labelled", "images"):
        path = getattr(args, name)
        if path and not Path(path).exists():
            sys.exit(f"normrnn study: --{name} {path}: no such file or directory")
    if not args.dry_run:
        try:
            for name, found in check_own_data(args.text, args.labelled, args.images).items():
                print(f"normrnn study: --{name}: {found}")
        except OwnDataError as e:
            sys.exit(f"normrnn study: {e}")
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.profile]
    if seeds < 1:
        sys.exit("normrnn study: --seeds must be at least 1")
    ctx = StudyContext(profile=args.profile, seeds=seeds, device=args.device, data_dir=args.data_dir,
                       text=args.text, labelled=args.labelled, images=args.images, progress=not args.no_progress)
    if args.dry_run:
        from .claims import load_claims
        from .plan import format_plan, plan_claims

        try:
            claims = load_claims(args.only.split(",") if args.only else None)
        except ValueError as e:
            sys.exit(f"normrnn study: {e}")
        print(format_plan(plan_claims(claims, ctx, Path(args.out)), ctx))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.jobs > 1:
        run_in_processes(args, ctx)
    try:
        results, paths = run_study(ctx, args.out, args.only.split(",") if args.only else None)
    except ValueError as e:
        sys.exit(f"normrnn study: {e}")
    print("\n" + verdict_table(results, ctx))
    print(f"\nreport: {paths['html']} (and {paths['md'].name}, {paths['json'].name}); "
          f"{time.perf_counter() - t0:.0f} s")
    return 0
