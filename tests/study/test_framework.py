"""The study's machinery: statistics, a verdict rule on hand-made tables, the run cache, the report files."""
import json
import math
from html.parser import HTMLParser

import pytest

from normrnn.study.claims import load_claims
from normrnn.study.core import Claim, Experiment, Record, StudyContext, Verdict
from normrnn.study.report import write_report
from normrnn.study.runner import run_claims
from normrnn.study.stats import fmt

CTX = StudyContext(profile="quick", seeds=3, progress=False)


def test_fmt_labels_the_spread():
    assert fmt([1.0, 3.0]) == "2.000 ± 1.414 SD" and fmt([float("nan")]) == "diverged"


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


def test_jobs_run_claims_in_processes_and_one_report(tmp_path, capsys):
    """--jobs 2: two child processes fill the shared run cache, then one report holds every claim."""
    from normrnn.cli import main

    out = tmp_path / "out"
    assert main(["study", "--profile", "smoke", "--only", "C9,C10b", "--jobs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "process 1/2" in printed and "process 2/2" in printed
    data = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in data["claims"]] == ["C9", "C10b"]
    assert all(c["seconds"] == 0 for c in data["claims"])  # the children ran them: the parent read the cache


def test_a_finished_claim_process_leaves_the_others_work_folders(tmp_path):
    """With --jobs the claim processes share OUT/work: one that finishes removes its own claims' folders only, not
    the folder of a run another process is in the middle of."""
    from normrnn.study.core import StudyContext
    from normrnn.study.runner import run_claims

    busy = tmp_path / "work" / "C5" / "0123abcd"
    busy.mkdir(parents=True)
    (tmp_path / "work" / "C9").mkdir()
    run_claims([], StudyContext(profile="smoke", seeds=1, progress=False), tmp_path)
    assert busy.is_dir()


def test_a_scale_check_names_the_unmet_conditions_first():
    """'no: ...' opens with what failed; what holds follows after 'met:' (it read 'no: 20 epochs (needs ≥ 20); ...'
    when the learning rate was the reason)."""
    from normrnn.study.core import conditions

    assert conditions((True, "20 epochs (needs ≥ 20)"), (False, "rate shared"), (True, "plateaued")) == (
        False, "rate shared; met: 20 epochs (needs ≥ 20); plateaued")
    assert conditions((True, "a"), (True, "b")) == (True, "a; b")
    assert conditions((False, "a"), (False, "b")) == (False, "a; b")
