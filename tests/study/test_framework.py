"""The study's machinery: statistics, a verdict rule on hand-made tables, the run cache, the report files."""
import json
import math
from html.parser import HTMLParser

import pytest

from normrnn.study.claims import load_claims
from normrnn.study.claims.c01_batch_size import CLAIM as C1
from normrnn.study.core import Claim, Experiment, Record, StudyContext, Verdict
from normrnn.study.report import write_report
from normrnn.study.runner import run_claims
from normrnn.study.stats import better, compare, equivalent, fmt

CTX = StudyContext(profile="quick", seeds=3, progress=False)


def test_compare_and_rules():
    c = compare([0.9, 0.91, 0.92], [0.5, 0.52, 0.48])
    assert c["diff"] == pytest.approx(0.41) and c["z"] > 10 and better(c, margin=0.1)
    c = compare([1.0, 1.1], [1.05, 1.0], higher_is_better=False)
    assert not better(c) and not better({**c, "diff": -c["diff"], "z": -c["z"]})
    assert equivalent(compare([0.50, 0.51, 0.50], [0.505, 0.50, 0.51]), margin=0.05)
    single = compare([1.0], [0.0])
    assert math.isinf(single["se"]) and not better(single)  # one seed: no spread, nothing significant
    assert fmt([1.0, 3.0]) == "2.000 ± 1.414 SD" and fmt([float("nan")]) == "diverged"


def _c1_records(acc: dict) -> list[Record]:
    """acc: {(norm, batch): [values over seeds]}"""
    return [Record({"norm": n, "batch": b, "seed": i}, {"valid_accuracy": v})
            for (n, b), vals in acc.items() for i, v in enumerate(vals)]


def test_c1_verdict_supported():
    recs = _c1_records({("layer", 2): [0.90, 0.91, 0.92], ("batch", 2): [0.60, 0.62, 0.58],
                        ("layer", 32): [0.93, 0.94, 0.95], ("batch", 32): [0.93, 0.92, 0.94]})
    assert C1.verdict(recs, CTX).label == "supported"


def test_c1_verdict_refuted():
    recs = _c1_records({("layer", 2): [0.90, 0.91, 0.92], ("batch", 2): [0.91, 0.90, 0.92],
                        ("layer", 32): [0.93, 0.94, 0.95], ("batch", 32): [0.93, 0.92, 0.94]})
    assert C1.verdict(recs, CTX).label == "refuted"


def test_c1_verdict_depends_and_inconclusive():
    depends = _c1_records({("layer", 2): [0.90, 0.91, 0.92], ("batch", 2): [0.70, 0.71, 0.72],
                           ("layer", 32): [0.93, 0.94, 0.95], ("batch", 32): [0.73, 0.74, 0.75]})
    assert C1.verdict(depends, CTX).label == "depends"
    noisy = _c1_records({("layer", 2): [0.95, 0.60, 0.90], ("batch", 2): [0.70, 0.90, 0.65],
                         ("layer", 32): [0.93, 0.94, 0.95], ("batch", 32): [0.93, 0.92, 0.94]})
    assert C1.verdict(noisy, CTX).label == "inconclusive"


class CountingClaim(Claim):
    """A claim whose runs count themselves, to see the cache at work."""

    id, title = "C0", "counting"
    statement = hypothesis = metric = rule = "test"

    def __init__(self):
        self.calls = 0

    def experiments(self, ctx):
        return [Experiment({"x": x, "seed": s}, {"x": x, "seed": s}) for x in (1, 2) for s in ctx.seed_list]

    def run(self, exp, ctx, workdir):
        self.calls += 1
        return {"y": exp.spec["x"] * 10 + exp.spec["seed"]}

    def verdict(self, records, ctx):
        return Verdict("supported", f"{len(records)} records", "test")

    def table(self, records):
        return ["x", "y"], [[r.key["x"], r.result["y"]] for r in records]

    def figure(self, records, ax):
        ax.plot([r.result["y"] for r in records])


def test_run_cache_resumes_without_recomputing(tmp_path):
    claim = CountingClaim()
    first = run_claims([claim], CTX, tmp_path)
    assert claim.calls == 6 and first[0].cached == 0
    again = run_claims([claim], CTX, tmp_path)
    assert claim.calls == 6 and again[0].cached == 6  # a rerun does no work
    assert [r.result for r in again[0].records] == [r.result for r in first[0].records]
    # a damaged cache entry is recomputed, the rest are not
    next((tmp_path / "runs" / "C0").glob("*.json")).write_text("{broken")
    run_claims([claim], CTX, tmp_path)
    assert claim.calls == 7


def test_single_seed_forces_inconclusive(tmp_path):
    res = run_claims([CountingClaim()], StudyContext(profile="quick", seeds=1, progress=False), tmp_path)
    assert res[0].verdict.label == "inconclusive" and "one seed" in res[0].verdict.reason


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs = set(), 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,"):
            self.imgs += 1


def test_report_files(tmp_path):
    results = run_claims([CountingClaim()], CTX, tmp_path)
    paths = write_report(results, CTX, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["claims"][0]["verdict"] == "supported" and len(data["claims"][0]["records"]) == 6
    tags = _Tags()
    tags.feed(paths["html"].read_text())
    assert "claim-c0" in tags.ids and tags.imgs == 1
    assert "## C0. counting" in paths["md"].read_text()


def test_unknown_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown claim.*C99"):
        load_claims(["C1", "C99"])


def test_full_profile_tunes_the_learning_rate_per_norm():
    """config() in the full profile picks the rate from the grid on a short run, once per setting."""
    from normrnn.study import experiments

    ctx = StudyContext(profile="full", seeds=2, progress=False)
    experiments.take_tuning()
    opts = dict(task="adding", data="synthetic", hidden=8, seq_len=10, batch_size=8, max_steps=10, limit=64,
                eval_limit=32, lr=2e-3)
    first = experiments.config(ctx, seed=0, **opts)
    assert first.lr in {1e-3, 2e-3, 4e-3}
    again = experiments.config(ctx, seed=1, **opts)  # another seed of the same setting: no new search
    assert again.lr == first.lr and again.seed == 1
    tuned = experiments.take_tuning()
    assert tuned[0]["grid"] == [1e-3, 2e-3, 4e-3] and tuned[0]["chosen"] == first.lr and tuned[1]["cached"]
    assert experiments.config(ctx, tune_lr=False, **opts).lr == 2e-3 and not experiments.take_tuning()
    quick = experiments.config(StudyContext(profile="quick", progress=False), **opts)
    assert quick.lr == 2e-3 and not experiments.take_tuning()  # quick runs take the claim's rate as given


class TunedClaim(CountingClaim):
    """A claim whose single run builds its config through the study's config() with tuning on."""

    def experiments(self, ctx):
        return [Experiment({"seed": 0}, {"seed": 0})]

    def run(self, exp, ctx, workdir):
        from normrnn.study.experiments import config

        cfg = config(ctx, tune_lr=True, task="adding", data="synthetic", hidden=8, seq_len=10, batch_size=8,
                     max_steps=5, limit=64, eval_limit=32, lr=1e-3, norm="layer")
        return {"y": cfg.lr}


def test_tuned_learning_rates_reach_the_report(tmp_path):
    results = run_claims([TunedClaim()], CTX, tmp_path)
    assert results[0].records[0].result["tuned_lr"][0]["norm"] == "layer"
    paths = write_report(results, CTX, tmp_path)
    assert "**Tuned.** Learning rate per compared variant" in paths["md"].read_text()
