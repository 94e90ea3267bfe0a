"""Running a study: every experiment of every selected claim, cached by the hash of its specification.

``<out>/runs/<claim>/<digest>.json`` holds one experiment's spec and result, written atomically, so an
interrupted study resumes where it stopped and a finished claim is never recomputed. One overall progress bar
counts experiments; training runs show their own bars beneath it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from .core import Claim, Experiment, Record, StudyContext, Verdict


@dataclass
class ClaimResult:
    claim: Claim
    records: list[Record]
    verdict: Verdict
    seconds: float  # compute time of the runs done now (cached ones count 0)
    cached: int  # how many records came from the cache


SEARCHES = "lr_searches.json"  # under the run cache: {tuning key: chosen learning rate}


class RunCache:
    """One JSON file per experiment under ``root``: ``{"spec": ..., "result": ...}``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, claim: Claim, exp: Experiment) -> Path:
        return self.root / claim.id / f"{exp.digest}.json"

    def get(self, claim: Claim, exp: Experiment) -> Optional[dict]:
        p = self.path(claim, exp)
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed
        return data["result"] if data.get("spec") == json.loads(json.dumps(exp.spec, default=str)) else None

    def put(self, claim: Claim, exp: Experiment, result: dict) -> None:
        p = self.path(claim, exp)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"key": exp.key, "spec": exp.spec, "result": result}, indent=1, default=str)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


def run_claims(claims: list[Claim], ctx: StudyContext, out: Path) -> list[ClaimResult]:
    """Run (or read from the cache) every experiment of ``claims`` and judge each claim."""
    from .experiments import use_search_store

    cache = RunCache(Path(out) / "runs")
    use_search_store(cache.root / SEARCHES)  # the full profile's learning-rate searches resume with the runs
    plans = [(claim, claim.experiments(ctx)) for claim in claims]
    total = sum(len(exps) for _, exps in plans)
    results = []
    with tqdm(total=total, desc="study", disable=not ctx.progress, dynamic_ncols=True) as bar:
        for claim, exps in plans:
            records, seconds, cached = [], 0.0, 0
            for exp in exps:
                bar.set_postfix_str(f"{claim.id} {_short(exp.key)}")
                result = cache.get(claim, exp)
                if result is None:
                    t0 = time.perf_counter()
                    result = _run_one(claim, exp, ctx, Path(out) / "work")
                    result.setdefault("seconds", time.perf_counter() - t0)
                    seconds += time.perf_counter() - t0
                    if "error" not in result:  # a failure (a fetch that timed out, say) is retried next time
                        cache.put(claim, exp, result)
                else:
                    cached += 1
                records.append(Record(exp.key, result))
                bar.update(1)
            results.append(ClaimResult(claim, records, judge(claim, records, ctx), seconds, cached))
    # Only this call's claims' folders (each run removes its own): with --jobs, other processes are still running
    # theirs under the same OUT/work.
    for claim in claims:
        shutil.rmtree(Path(out) / "work" / claim.id, ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(out) / "work").rmdir()  # (only when empty)
    use_search_store(None)
    return results


def judge(claim: Claim, records: list[Record], ctx: StudyContext) -> Verdict:
    """The claim's verdict, with its scale, its "can this scale show it?" check (a failed check caps the label at
    *not shown here*) and the diverged runs per arm; a rule that cannot decide on these records says so instead of
    crashing the study."""
    from .stats import INCONCLUSIVE, cap, divergence, divergence_note

    ok = [r for r in records if "error" not in r.result]
    try:
        scale = claim.scale_text(ctx)
    except Exception as e:  # noqa: BLE001 - the scale text must not lose the verdict
        scale = f"{ctx.seeds} seeds, {ctx.profile} profile (scale unavailable: {type(e).__name__})"
    if not ok:
        return Verdict(INCONCLUSIVE, "–", "every run of this claim failed: " + records[0].result["error"]
                       if records else "no runs", scale=scale, scale_ok=None, scale_check="no runs")
    try:
        verdict = claim.verdict(ok, ctx)
        scale_ok, check = claim.scale_check(ok, ctx)
    except Exception as e:  # noqa: BLE001 - reported in the verdict, with the cause
        return Verdict(INCONCLUSIVE, "–", f"the verdict rule could not be applied: {type(e).__name__}: {e}",
                       scale=scale)
    verdict.scale, verdict.scale_ok, verdict.scale_check = scale, scale_ok, check
    capped = cap(verdict.label, scale_ok)
    if capped != verdict.label:
        verdict.reason = (f"The rule alone says '{verdict.label}', but this scale cannot show the effect ({check}), "
                          f"so: {capped}. " + verdict.reason)
        verdict.numbers["uncapped_label"] = verdict.label
        verdict.label = capped
    div = divergence(ok, lambda k: tuple((a, b) for a, b in k.items() if a != "seed"))
    note = divergence_note(div, lambda arm: " ".join(f"{a}={b}" for a, b in arm) or "all")
    verdict.divergence = {" ".join(f"{a}={b}" for a, b in arm) or "all": d for arm, d in div.items()}
    if note:
        verdict.reason += " " + note
    if ctx.seeds < 2 and verdict.label != INCONCLUSIVE:
        # One seed gives no spread to judge a difference against: report what the rule would say, decide nothing.
        return Verdict(INCONCLUSIVE, verdict.effect, f"Only one seed, so no verdict; with more seeds the rule "
                       f"would start from '{verdict.label}': {verdict.reason}", verdict.numbers, verdict.scale,
                       verdict.scale_ok, verdict.scale_check, verdict.divergence)
    return verdict


def _run_one(claim: Claim, exp: Experiment, ctx: StudyContext, work: Path) -> dict:
    workdir = work / claim.id / exp.digest
    workdir.mkdir(parents=True, exist_ok=True)
    from .experiments import take_tuning

    take_tuning()
    try:
        result = claim.run(exp, ctx, workdir)
        tuned = take_tuning()
        if tuned:  # the full profile's per-norm learning-rate choice, reported with the run
            result.setdefault("tuned_lr", tuned)
        return result
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, the study goes on
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _short(key: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items())
