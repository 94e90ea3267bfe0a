"""The statistics core: the t distribution against tabled values, the paired interval and the sign-flip test against
hand-computed answers, Holm's correction and the status boundaries on both sides of each threshold."""
import math

import pytest

from normrnn.study import stats


@pytest.mark.parametrize("p, df, q", [
    (0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 4, 2.776445105), (0.975, 9, 2.262157163),
    (0.975, 29, 2.045229642), (0.95, 5, 2.015048373), (0.9, 3, 1.637744354), (0.995, 10, 3.169272667),
])
def test_t_quantile_matches_tables(p, df, q):
    assert stats.t_quantile(p, df) == pytest.approx(q, abs=1e-6)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-q, abs=1e-6)
    assert stats.t_cdf(q, df) == pytest.approx(p, abs=1e-9)


def test_paired_interval_known_answer():
    a = {0: 11.0, 1: 12.0, 2: 13.0, 3: 14.0, 4: 15.0}
    b = {s: 10.0 for s in a}
    c = stats.paired(a, b)
    assert (c.n, c.df, c.diff) == (5, 4, 3.0)
    assert c.sd == pytest.approx(1.5811388, abs=1e-6)
    assert c.se == pytest.approx(0.7071068, abs=1e-6)
    assert (c.low, c.high) == (pytest.approx(1.0367568, abs=1e-6), pytest.approx(4.9632432, abs=1e-6))
    assert c.p_sign == pytest.approx(1 / 32)
    lower = stats.paired(b, a, higher_is_better=False)  # lower is better: a is worse by 3
    assert lower.diff == pytest.approx(3.0)  # b better than a by 3 (lower)
    assert "95% CI" in c.text() and "SE" in c.text() and "n = 5 pairs" in c.text()


def test_paired_drops_diverged_and_missing_seeds():
    c = stats.paired({0: 1.0, 1: float("nan"), 2: 3.0, 3: 2.0}, {0: 0.0, 1: 0.0, 2: 1.0})
    assert c.seeds == [0, 2] and c.dropped == [1, 3] and c.diffs == [1.0, 2.0]


def test_sign_flip_exact():
    assert stats.sign_flip_p([1, -2, 3]) == pytest.approx(3 / 8)
    assert stats.sign_flip_p([1, 2, 3]) == pytest.approx(1 / 8)  # 3 seeds can never reach 2.5%
    assert stats.sign_flip_p([-1, -2, -3]) == 1.0


def test_one_sample_and_single_pair():
    c = stats.one_sample([0.1, 0.2, 0.3], sign=-1)
    assert c.diff == pytest.approx(-0.2) and c.low < c.diff < c.high
    single = stats.one_sample([0.5])
    assert single.n == 1 and stats.status(single, 0.0) == stats.UNCLEAR


@pytest.mark.parametrize("n", [3, 5, 8])
def test_diffs_with_interval_builds_the_interval_asked(n):
    c = stats.interval(stats.diffs_with_interval(0.3, 0.1, n))
    assert c.diff == pytest.approx(0.3) and c.low == pytest.approx(0.2) and c.high == pytest.approx(0.4)


EPS = 1e-4


@pytest.mark.parametrize("center, half, margin, expected", [
    (0.05 + 0.02 + EPS, 0.02, 0.05, "holds"),  # lower bound just above the margin
    (0.05 + 0.02 - EPS, 0.02, 0.05, "unclear"),  # just below: not shown above the margin
    (-0.05 - 0.02 - EPS, 0.02, 0.05, "opposite"),
    (-0.05 - 0.02 + EPS, 0.02, 0.05, "unclear"),
    (0.0, 0.05 - EPS, 0.05, "absent"),  # the interval just inside ± margin
    (0.0, 0.05 + EPS, 0.05, "unclear"),  # just outside
    (0.03 - EPS, 0.02, 0.05, "absent"),
    (0.03 + EPS, 0.02, 0.05, "unclear"),
    (0.02 + EPS, 0.02, 0.0, "holds"),  # margin 0: the interval clears 0
    (0.02 - EPS, 0.02, 0.0, "unclear"),
])
def test_status_boundaries(center, half, margin, expected):
    assert stats.status(stats.interval(stats.diffs_with_interval(center, half)), margin) == expected


def test_holm_boundaries():
    # three tests at alpha 0.025: thresholds 0.025/3, 0.025/2, 0.025 step down
    assert stats.holm({"a": 0.025 / 3, "b": 0.0125, "c": 0.025}) == {"a": True, "b": True, "c": True}
    assert stats.holm({"a": 0.025 / 3 + 1e-6, "b": 0.5, "c": 0.5})["a"] is False  # the smallest p: 0.025 / 3
    assert stats.holm({"a": 0.0, "b": 0.0125 + 1e-6, "c": 0.0}) == {"a": True, "b": True, "c": True}
    assert stats.holm({"a": 0.001, "b": 0.0126, "c": 0.0127}) == {"a": True, "b": False, "c": False}
    # uncorrected, 0.02 would pass a single test at 0.025; among three it must not
    assert stats.holm({"a": 0.02, "b": 0.5, "c": 0.5}) == {"a": False, "b": False, "c": False}
    assert stats.holm({"a": 0.02}) == {"a": True}


def test_any_beats_uses_holm_over_the_family():
    # one rival whose interval just clears the margin on its own (p just under 2.5%), among three: not enough
    alone = stats.interval(stats.diffs_with_interval(0.02 + 0.01 + EPS, 0.01))
    assert alone.p_above(0.02) < 0.025 and stats.any_beats({"r": alone}, 0.02) == ["r"]
    null = stats.interval(stats.diffs_with_interval(0.0, 0.01))
    assert stats.any_beats({"r": alone, "s": null, "t": null}, 0.02) == []
    strong = stats.interval(stats.diffs_with_interval(0.2, 0.01))
    assert stats.any_beats({"r": strong, "s": null, "t": null}, 0.02) == ["r"]


def test_p_above_agrees_with_the_interval():
    c = stats.interval(stats.diffs_with_interval(0.1, 0.04))
    assert c.p_above(0.06 - EPS) < 0.025 < c.p_above(0.06 + EPS)


def test_labels_and_cap():
    assert stats.label_for("holds") == "supported" and stats.label_for("opposite") == "contradicted here"
    assert stats.label_for("absent") == "not shown here" and stats.label_for("unclear") == "inconclusive"
    assert stats.cap("supported", False) == "not shown here" and stats.cap("contradicted here", False) == \
        "not shown here"
    assert stats.cap("supported", True) == "supported" and stats.cap("inconclusive", False) == "inconclusive"
    assert set(stats.LABELS) == {"supported", "contradicted here", "not shown here", "not testable with this design",
                                 "by construction", "inconclusive"}


def test_divergence_counts_and_note():
    class R:
        def __init__(self, key, result):
            self.key, self.result = key, result
    recs = [R({"norm": "batch", "seed": s}, {"diverged": s < 2, "steps": 10 + s, "acc": 0.1}) for s in range(5)]
    div = stats.divergence(recs, lambda k: k["norm"])
    assert div == {"batch": {"runs": 5, "diverged": 2, "at_steps": [10, 11]}}
    assert "diverged in 2/5 runs (at updates 10, 11)" in stats.divergence_note(div)
    vals = stats.per_seed(recs, lambda r: r["acc"])
    assert math.isnan(vals[0]) and vals[4] == 0.1
    assert stats.fmt([0.1, float("nan")]) == "0.100 (1 diverged, left out)"
    assert stats.fmt([1.0, 3.0]) == "2.000 ± 1.414 SD"
