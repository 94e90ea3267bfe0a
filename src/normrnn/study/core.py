"""What a claim is: a hypothesis, an experiment grid, a metric, and a verdict rule written in code.

A claim module defines one subclass of :class:`Claim`. The study runs every :class:`Experiment` of its grid
(cached by a hash of the experiment's full specification), then asks the claim for its verdict, table, figure and
comparison-table cells, computed only from the measured records.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .stats import LABELS

VERDICTS = LABELS  # supported, contradicted here, not shown here, not testable with this design, by construction,
# inconclusive: see stats.py
PROFILES = ("smoke", "quick", "standard", "full")
_MISSING = object()  # a size without a standard-profile value (None is a value: "no limit")


@dataclass(frozen=True)
class StudyContext:
    """How the study runs: the profile (sizes), seeds, device, and the user's own data where given.

    smoke: seconds per claim, for CI (verdicts meaningless, the pipeline exercised); quick: minutes in all, small
    models on data obtainable with pip alone (verdicts "indicative"); standard: about 128 units, thousands of
    updates, 5 seeds, a learning rate per compared arm, sized to finish within 90 minutes on 2 CPU cores (the
    profile meant to decide); full: paper-sized runs, hours to days.
    """

    profile: str = "quick"
    seeds: int = 3
    device: str = "cpu"
    data_dir: Optional[str] = None
    text: Optional[str] = None  # the user's UTF-8 text file for the char-LM claims
    labelled: Optional[str] = None  # the user's TSV "label<TAB>text" file for the classification claims
    images: Optional[str] = None  # the user's IDX folder or CSV image set for the image claims
    progress: bool = True

    def pick(self, smoke: Any, quick: Any, full: Any, standard: Any = _MISSING) -> Any:
        """The profile's value of a size: ``ctx.pick(smoke=20, quick=300, full=5000, standard=2000)``."""
        if self.profile == "standard" and standard is _MISSING:
            raise ValueError("this size has no value for the standard profile")
        return {"smoke": smoke, "quick": quick, "full": full, "standard": standard}[self.profile]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))


@dataclass(frozen=True)
class Experiment:
    """One cell of a claim's grid. ``key``: the grid coordinates shown in tables (e.g. norm, batch, seed);
    ``spec``: everything that determines the result (key included), hashed for the run cache."""

    key: dict
    spec: dict

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Record:
    """An experiment and what it measured (JSON-able numbers, curves as lists)."""

    key: dict
    result: dict


@dataclass
class Verdict:
    """One of :data:`VERDICTS`, with the effect size and the reason in words.

    The runner adds what the claim's verdict is worth: ``scale`` (units × updates × seeds, data), the claim's
    "can this scale show it?" check (``scale_ok``, ``scale_check``; a failed check caps the label at *not shown
    here*), and the divergence note."""

    label: str
    effect: str
    reason: str
    numbers: dict = field(default_factory=dict)
    scale: str = ""
    scale_ok: Optional[bool] = None
    scale_check: str = ""
    divergence: dict = field(default_factory=dict)  # per arm: runs, diverged, at which update

    def __post_init__(self) -> None:
        if self.label not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.label!r}")


def conditions(*checks: tuple[bool, str]) -> tuple[bool, str]:
    """A scale check of several conditions, each (met, what was found): (all met, text). The unmet ones come first
    and the met ones after "met:", so that a report's "no: ..." never opens with a condition that holds (it read
    "no: 20 epochs (needs ≥ 20); ..." when the learning rate was the reason)."""
    unmet = [text for met, text in checks if not met]
    met = [text for met, text in checks if met]
    if not unmet:
        return True, "; ".join(met)
    return False, "; ".join(unmet) + ("; met: " + "; ".join(met) if met else "")


class Claim:
    """Base class of the twelve claims. Subclasses set the text attributes and implement the five methods."""

    id: str = "C0"
    title: str = ""
    statement: str = ""  # the claim as commonly stated
    hypothesis: str = ""  # what exactly is measured and what would support it
    metric: str = ""
    rule: str = ""  # the verdict rule in words; :meth:`verdict` is the same rule in code
    setup: str = ""  # data, model, budget (may depend on the profile: see :meth:`describe_setup`)
    primary: str = ""  # the one primary test that decides the label, in words
    measured: str = ""  # which part of the claim the runs measure
    construction: str = ""  # which part is true by construction (an identity of the method, not a finding)
    # Where the full profile deliberately departs from the paper set-up of the issue (char-LM: 1000 units, BPTT 100,
    # batch 64, Adam 2e-3, clip 1.0; pixel images: 784 steps, 100 units; >= 3 seeds; learning rate searched):
    # {TrainConfig field or "seeds"/"tune_lr": why}. tests/study/test_full_profile.py holds every claim to it.
    paper_deviations: dict = {}

    def experiments(self, ctx: StudyContext) -> list[Experiment]:
        raise NotImplementedError

    def grid(self, ctx: StudyContext, settings: Iterable[dict], **common: Any) -> list[Experiment]:
        """One experiment per setting and seed, seeds innermost: key = the setting plus the seed; spec = the key,
        the claim, the profile and ``common`` (everything else that determines the result)."""
        exps = []
        for setting in settings:
            for seed in ctx.seed_list:
                key = {**setting, "seed": seed}
                exps.append(Experiment(key, {**key, "claim": self.id, "profile": ctx.profile, **common}))
        return exps

    def run(self, exp: Experiment, ctx: StudyContext, workdir: Path) -> dict:
        """Run one experiment and return its measurements. ``workdir`` is scratch space of this run."""
        raise NotImplementedError

    def train_plans(self, exp: Experiment, ctx: StudyContext) -> list:
        """The :class:`~normrnn.study.experiments.TrainPlan` of each training run :meth:`run` does for ``exp``
        (what it would train, built without training or fetching anything; :meth:`run` trains these). Empty for
        experiments that train nothing through the trainer (measurements at initialisation, timings, ...)."""
        return []

    def verdict(self, records: list[Record], ctx: StudyContext) -> Verdict:
        raise NotImplementedError

    def table(self, records: list[Record]) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows, typically mean ± std over seeds per setting."""
        raise NotImplementedError

    def figure(self, records: list[Record], ax) -> None:
        """Draw the claim's plot on a matplotlib Axes."""
        raise NotImplementedError

    def summary_cells(self, records: list[Record], verdict: Verdict) -> dict[str, dict[str, str]]:
        """Cells of the report's opening comparison table: ``{row: {"BN": text, "LN": text, "RMS": text}}``."""
        return {}

    def describe_setup(self, ctx: StudyContext) -> str:
        return self.setup

    def scale_check(self, records: list[Record], ctx: StudyContext) -> tuple[bool, str]:
        """Can runs at this scale show the claimed effect at all? (ok, what was checked and found). When not, the
        verdict is at most *not shown here*."""
        return True, "no scale condition: the measurement does not depend on training length"

    def scale_text(self, ctx: StudyContext) -> str:
        """The scale behind the verdict: units × updates × seeds, and the data (from the training plans)."""
        hidden, steps, data, tasks = set(), set(), set(), set()
        for exp in self.experiments(ctx):
            for p in self.train_plans(exp, ctx):
                hidden.add(p.cfg.hidden)
                steps.add(p.cfg.max_steps or 0)
                data.add(str(p.cfg.data_name))
                tasks.add(p.cfg.task)
        if not hidden:
            return f"{ctx.seeds} seed{'s' if ctx.seeds != 1 else ''}, {ctx.profile} profile"
        span = lambda v: str(min(v)) if len(v) == 1 else f"{min(v)}–{max(v)}"  # noqa: E731
        return (f"{span(hidden)} units × {span(steps)} updates × {ctx.seeds} seed{'s' if ctx.seeds != 1 else ''}, "
                f"{'/'.join(sorted(tasks))} on {', '.join(sorted(data))} ({ctx.profile} profile)")
