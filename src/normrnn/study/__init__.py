"""``normrnn study``: every claim about batch vs layer norm in RNNs as a measured verdict, with a report.

Where things live: :mod:`.core` (what a claim is), :mod:`.claims` (one module per claim), :mod:`.runner` (running
and caching experiments), :mod:`.report` (report.md/.html, figures, results.json), :mod:`.cli`.
"""
from .core import Claim, Experiment, Record, StudyContext, Verdict
from .runner import ClaimResult, run_claims


def run_study(ctx: StudyContext, out, only=None):
    """Run the claims ``only`` (all when None) under ``ctx``, write the report into ``out``; return the results
    and the report's paths."""
    from pathlib import Path

    from .claims import load_claims
    from .report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_claims(load_claims(only), ctx, out)
    return results, write_report(results, ctx, out)


__all__ = ["Claim", "Experiment", "Record", "StudyContext", "Verdict", "ClaimResult", "run_claims", "run_study"]
