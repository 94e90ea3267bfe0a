"""The full profile without running it: every claim's experiments and the TrainConfigs they would train hold the
issue's paper sizes, or depart from them only where the claim says so (``Claim.paper_deviations``); every compared
variant gets its own learning-rate search; ``normrnn study --dry-run`` lists it all and trains nothing."""
import json

import pytest

from normrnn.cli import main
from normrnn.study import experiments
from normrnn.study.claims import claim_ids, load_claims
from normrnn.study.cli import DEFAULT_SEEDS
from normrnn.study.core import Claim, Experiment, StudyContext, Verdict
from normrnn.study.experiments import TrainPlan, tuning_key
from normrnn.study.report import write_report
from normrnn.study.runner import run_claims

FULL = StudyContext(profile="full", seeds=DEFAULT_SEEDS["full"], progress=False)

# The full profile: char-LM as Cooijmans et al.; pixel Fashion-MNIST with 100 units over 784 steps.
PAPER_CHARLM = {"hidden": 1000, "seq_len": 100, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "clip": 1.0}
PAPER_IMAGE = {"image_mode": ("pixel", "permuted"), "hidden": 100}
# Deliberate departures, each explained in the claim's paper_deviations (and shown by --dry-run). A new deviation,
# or one that disappears, must be decided here as well as in the claim.
EXPECTED_DEVIATIONS = {
    "C4": {"hidden"},  # 512 units: a within-model train/eval comparison
    "C6": {"lr", "tune_lr"},  # its learning-rate grid is an axis of the experiment
    "C8": {"hidden"},  # 512 units: a within-model streaming comparison
    "C10a": {"hidden", "batch_size", "lr"},  # 256 units
    "C10c": {"hidden", "batch_size", "lr"},  # 256 units, an 8-layer depth part (C10b times one layer: no training)
    "C11": {"image_mode", "hidden"},  # a CNN front end is the claim
    "C12": {"hidden", "batch_size", "lr"},  # 256 units, five placements
}


@pytest.fixture
def no_training(monkeypatch):
    """Building experiments and plans must neither train nor fetch: any Trainer or download fails the test."""
    from normrnn.data import registry
    from normrnn.train import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("planning must not train or fetch anything")

    monkeypatch.setattr(trainer.Trainer, "__init__", refuse)
    monkeypatch.setattr(registry, "ensure_artifact", refuse)
    monkeypatch.setattr(registry, "fetch", refuse)


def _setting(key: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in key.items() if k != "seed"))


def _deviations(plans: list[TrainPlan]) -> set[str]:
    found = set()
    for p in plans:
        c = p.cfg
        if not p.tune_lr:
            found.add("tune_lr")
        if c.task == "charlm":
            found |= {k for k, v in PAPER_CHARLM.items() if getattr(c, k) != v}
        if c.task == "image":
            found |= {"image_mode"} if c.image_mode not in PAPER_IMAGE["image_mode"] else set()
            found |= {"hidden"} if c.hidden != PAPER_IMAGE["hidden"] else set()
    return found


@pytest.mark.parametrize("claim_id", claim_ids())
def test_full_profile_sizes(claim_id, no_training):
    claim = load_claims([claim_id])[0]
    exps = claim.experiments(FULL)
    assert exps and all(e.spec.get("profile", "full") == "full" for e in exps)
    seeds: dict = {}
    for e in exps:
        seeds.setdefault(_setting(e.key), set()).add(e.key["seed"])
    assert all(len(s) >= 3 for s in seeds.values()), seeds  # >= 3 seeds in every setting
    plans = [p for e in exps for p in claim.train_plans(e, FULL)]
    assert all(isinstance(p, TrainPlan) and p.cfg.seed in range(FULL.seeds) for p in plans)
    expected = EXPECTED_DEVIATIONS.get(claim_id, set())
    assert _deviations(plans) == expected, "undeclared or vanished departures from the paper set-up"
    assert set(claim.paper_deviations) == expected and all(claim.paper_deviations.values())
    if claim_id == "C6":  # the grid must contain the paper's rate
        assert 2e-3 in {p.cfg.lr for p in plans}


def test_the_paper_set_ups_are_run_somewhere(no_training):
    """At least the claims the issue names them for: char-LM at paper size (C2), pixel Fashion-MNIST (C1)."""
    by_id = {c.id: c for c in load_claims()}
    c1 = [p.cfg for e in by_id["C1"].experiments(FULL) for p in by_id["C1"].train_plans(e, FULL)]
    assert {c.data for c in c1} == {"fashion-mnist"} and {c.image_mode for c in c1} == {"permuted"}
    assert {c.hidden for c in c1} == {100} and all(p.tune_lr for e in by_id["C1"].experiments(FULL)
                                                   for p in by_id["C1"].train_plans(e, FULL))
    c2 = [p.cfg for e in by_id["C2"].experiments(FULL) for p in by_id["C2"].train_plans(e, FULL)]
    assert {(c.hidden, c.seq_len, c.batch_size, c.lr, c.clip) for c in c2} == {(1000, 100, 64, 2e-3, 1.0)}


def test_quick_and_smoke_keep_c1_on_rows(no_training):
    """C1's pixel sequences are the full profile's only: quick and smoke specs (and their run cache) are as
    before."""
    c1 = load_claims(["C1"])[0]
    for profile in ("smoke", "quick"):
        ctx = StudyContext(profile=profile, seeds=2, progress=False)
        for e in c1.experiments(ctx):
            assert "image_mode" not in e.spec and c1.train_plans(e, ctx)[0].cfg.image_mode == "row"


@pytest.mark.parametrize("claim_id", claim_ids())
def test_every_compared_variant_has_its_own_learning_rate_search(claim_id, no_training):
    """In the full profile two runs share a learning-rate search only if they are seeds of one setting."""
    claim = load_claims([claim_id])[0]
    owner: dict = {}
    for e in claim.experiments(FULL):
        for p in claim.train_plans(e, FULL):
            if p.tune_lr:
                owner.setdefault(tuning_key(p.cfg, p.variant), set()).add(_setting(e.key))
    shared = {k: v for k, v in owner.items() if len(v) > 1}
    assert not shared, f"settings sharing one tuned rate: {list(shared.values())}"


# ---------------------------------------------------------------------------------------- tuning per variant

OPTS = dict(task="adding", data="synthetic", norm="layer", hidden=8, seq_len=10, batch_size=8, max_steps=10,
            limit=64, eval_limit=32, lr=2e-3)


def test_choose_lr_searches_each_variant_as_itself(monkeypatch):
    monkeypatch.setattr(experiments, "_tuned", {})  # no search remembered from another test
    ctx = StudyContext(profile="full", seeds=2, progress=False)
    experiments.take_tuning()
    prepared = []

    def mark(tag):
        return lambda trainer: prepared.append((tag, trainer.config.lr))

    a = experiments.plan(ctx, variant={"v": "a"}, prepare=mark("a"), seed=0, **OPTS)
    b = experiments.plan(ctx, variant={"v": "b"}, prepare=mark("b"), seed=0, **OPTS)
    assert a.cfg == b.cfg and tuning_key(a.cfg, a.variant) != tuning_key(b.cfg, b.variant)
    experiments.resolve(a)
    experiments.resolve(b)
    experiments.resolve(experiments.plan(ctx, variant={"v": "a"}, prepare=mark("a"), seed=1, **OPTS))  # cached
    tuned = experiments.take_tuning()
    assert [t["variant"] for t in tuned] == [{"v": "a"}, {"v": "b"}, {"v": "a"}]
    assert "grid" in tuned[0] and "grid" in tuned[1] and tuned[2]["cached"]  # two searches, not one
    # every trial of each search trained the variant itself (the prepare hook ran on its trainer)
    assert sorted(prepared) == sorted((tag, lr) for tag in "ab" for lr in (1e-3, 2e-3, 4e-3))


class VariantClaim(Claim):
    """Two variants that the TrainConfig does not tell apart, each run through the study's plan()."""

    id, title = "CV", "variants"

    def experiments(self, ctx):
        return [Experiment({"v": v, "seed": 0}, {"v": v, "seed": 0}) for v in ("a", "b")]

    def train_plans(self, exp, ctx):
        return [experiments.plan(ctx, tune_lr=True, variant={"v": exp.key["v"]}, seed=0,
                                 **{**OPTS, "max_steps": 5})]

    def run(self, exp, ctx, workdir):
        summary, _, trainer = experiments.train_run(self.train_plans(exp, ctx)[0])
        return {"lr": trainer.config.lr}

    def verdict(self, records, ctx):
        return Verdict("inconclusive", "–", "test")

    def table(self, records):
        return ["v", "lr"], [[r.key["v"], r.result["lr"]] for r in records]

    def figure(self, records, ax):
        ax.plot([0, 1])

    def summary_cells(self, records, verdict):
        return {}


def test_report_shows_the_rate_tuned_for_each_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "_tuned", {})
    ctx = StudyContext(profile="quick", seeds=1, progress=False)
    results = run_claims([VariantClaim()], ctx, tmp_path)
    tuned = [r.result["tuned_lr"] for r in results[0].records]
    assert [t[0]["variant"] for t in tuned] == [{"v": "a"}, {"v": "b"}] and all("grid" in t[0] for t in tuned)
    md = write_report(results, ctx, tmp_path)["md"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("**Tuned.**"))
    for r in results[0].records:
        assert f"v={r.key['v']}: 0.002 → {r.result['lr']:g}" in line
    data = json.loads((tmp_path / "results.json").read_text())
    assert "tuned_lr" in json.dumps(data)


def test_searches_are_kept_with_the_run_cache(tmp_path, monkeypatch):
    """A resumed study reuses the learning-rate searches it finished (they are stored next to the runs)."""
    monkeypatch.setattr(experiments, "_tuned", {})
    ctx = StudyContext(profile="full", seeds=2, progress=False)
    p = experiments.plan(ctx, variant={"v": "a"}, seed=1, **OPTS)
    experiments.take_tuning()
    try:
        experiments.use_search_store(tmp_path / "lr_searches.json")
        chosen = experiments.resolve(p).lr
        monkeypatch.setattr(experiments, "_tuned", {})  # a new process
        experiments.use_search_store(tmp_path / "lr_searches.json")
        assert experiments.resolve(p).lr == chosen
    finally:
        experiments.use_search_store(None)
    first, again = experiments.take_tuning()
    assert "grid" in first and again["cached"]


# ---------------------------------------------------------------------------------------------------- dry run

def test_dry_run_lists_runs_cache_and_sizes(tmp_path, capsys, monkeypatch):
    ctx = StudyContext(profile="smoke", seeds=1, progress=False)
    run_claims(load_claims(["C9"]), ctx, tmp_path)  # C9 in smoke: measurements at initialisation, seconds
    capsys.readouterr()
    from normrnn.train import trainer

    monkeypatch.setattr(trainer.Trainer, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["study", "--profile", "smoke", "--only", "C9,C1", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    n9 = len(load_claims(["C9"])[0].experiments(ctx))
    assert f"C9 Depth at initialisation: {n9} runs, {n9} cached, 0 to run" in out
    assert "C1 Batch size: 4 runs, 0 cached, 4 to run; 16 updates" in out  # 2 norms x 2 batches x 4 updates
    assert "image on mnist-5k (28 steps of a row): LSTM 16 units × 1 layer" in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

    assert main(["study", "--profile", "full", "--plan", "--out", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "C1 Batch size: 60 runs, 0 cached, 60 to run" in out and "12 learning-rate searches" in out
    assert "image on fashion-mnist (784 steps of 1 pixel, permuted): LSTM 100 units × 1 layer" in out
    assert ("charlm on shakespeare (BPTT 100): LSTM 1000 units × 1 layer; norm batch, layer; variants "
            "training=zero-state; batch 64") in out
    assert out.count("departs from the paper set-up") == len(EXPECTED_DEVIATIONS)
    assert all(f"\n{c} " in out for c in claim_ids()) and "total: " in out
    assert not (tmp_path / "none").exists()


def test_a_search_whose_every_trial_diverges_says_so(monkeypatch):
    """No silent choice: every trial diverged -> the smallest rate, flagged, and the report says so."""
    from normrnn.study.report import tuned_rates

    monkeypatch.setattr(experiments, "_tuned", {})
    experiments.take_tuning()

    class Diverging:
        def __init__(self, cfg, hooks=()):
            self.config = cfg

        def fit(self):
            return {"best_valid": float("nan"), "diverged": True, "higher_is_better": False}

    monkeypatch.setattr(experiments, "Trainer", Diverging)
    ctx = StudyContext(profile="standard", seeds=2, progress=False)
    cfg = experiments.config(ctx, seed=0, **OPTS)
    tuned = experiments.take_tuning()
    assert cfg.lr == pytest.approx(1e-3) and tuned[0]["all_diverged"] is True
    rec = type("R", (), {"key": {"norm": "layer", "seed": 0}, "result": {"tuned_lr": tuned}})()
    assert "every trial diverged" in str(tuned_rates([rec]))


def test_jobs_split_every_claim_once_by_cost():
    from normrnn.study.cli import claim_cost, split_claims

    claims = load_claims()
    std = StudyContext(profile="standard", seeds=5, progress=False)
    groups = split_claims(claims, std, 2)
    assert sorted(c for g in groups for c in g) == sorted(claim_ids())
    loads = [sum(claim_cost(c, std) for c in claims if c.id in g) for g in groups]
    assert max(loads) / min(loads) < 1.2  # two processes of about equal work
