"""Statistics for verdicts over a handful of seeds.

The compared arms of a claim share seeds, initialisation and data order, so every comparison is **paired**: the
per-seed differences, their mean, and a two-sided 95% t interval with n - 1 degrees of freedom (the exact
sign-flip p-value is reported beside it). A part of a claim

- *holds* when the interval's lower bound clears the practical margin (diff > margin at 97.5% one-sided),
- is *opposite* when its upper bound is below minus the margin (a significant effect the other way),
- is *absent* when the whole interval lies within ± the margin (an equivalence bound: TOST at 2.5% each side),
- is *unclear* otherwise (fewer than two pairs included).

Union rules ("refuted if any rival wins") are decided with Holm's step-down correction over the one-sided tests
of ``diff > margin``. Nothing here needs scipy: the t distribution is computed from the regularized incomplete
beta function (tests pin it against tabled quantiles).
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

# The six verdict labels (see core.VERDICTS).
SUPPORTED = "supported"
CONTRADICTED = "contradicted here"  # a significant effect opposite to the claim's
NOT_SHOWN = "not shown here"  # the interval lies within the margin, or the scale cannot show the effect
NOT_TESTABLE = "not testable with this design"
BY_CONSTRUCTION = "by construction"
INCONCLUSIVE = "inconclusive"
LABELS = (SUPPORTED, CONTRADICTED, NOT_SHOWN, NOT_TESTABLE, BY_CONSTRUCTION, INCONCLUSIVE)

LEVEL = 0.95  # two-sided confidence of every interval; one-sided tests run at (1 - LEVEL) / 2 = 2.5%
ALPHA_ONE_SIDED = (1 - LEVEL) / 2


# ----------------------------------------------------------------------------------------- descriptive statistics


def _finite(xs: Iterable[Optional[float]]) -> list[float]:
    return [float(x) for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]


def mean(xs: Sequence[float]) -> float:
    xs = _finite(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    xs = _finite(xs)
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def sem(xs: Sequence[float]) -> float:
    xs = _finite(xs)
    return std(xs) / math.sqrt(len(xs)) if xs else float("nan")


def fmt(xs: Sequence[Optional[float]], digits: int = 3) -> str:
    """``mean ± SD`` over seeds (labelled), or the single value, with the number of diverged runs left out."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    finite = _finite(xs)
    gone = len(xs) - len(finite)
    note = f" ({gone} diverged, left out)" if gone else ""
    if not finite:
        return "diverged"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}{note}"
    return f"{mean(finite):.{digits}f} ± {std(finite):.{digits}f} SD{note}"


def group(records: Iterable[Any], by: Callable[[dict], Any], value: Callable[[dict], float]) -> dict[Any, list]:
    """Values of ``value(result)`` grouped by ``by(key)``, e.g. per (norm, batch) over seeds. Diverged runs give
    NaN (see :func:`fmt`, which counts them)."""
    out: dict[Any, list] = defaultdict(list)
    for r in records:
        out[by(r.key)].append(float("nan") if diverged(r) else value(r.result))
    return dict(out)


# ----------------------------------------------------------------------------------------- the t distribution


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`; about 1e-10 accurate)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------------- paired comparisons


@dataclass
class Paired:
    """A paired comparison: ``diff`` = mean per-seed difference (positive = the claim's direction), its SD and SE,
    the two-sided 95% t interval [low, high] on n - 1 df, and the exact one-sided sign-flip p-value of diff > 0.
    ``seeds``: the seeds compared; ``dropped``: seeds left out (a diverged or missing run in either arm)."""

    n: int
    diff: float
    sd: float
    se: float
    low: float
    high: float
    p_sign: float
    diffs: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    a: float = float("nan")  # mean of the first arm over the compared seeds
    b: float = float("nan")

    @property
    def df(self) -> int:
        return max(self.n - 1, 0)

    def p_above(self, margin: float = 0.0) -> float:
        """One-sided t-test p-value of H0: diff <= margin."""
        if self.n < 2:
            return 1.0
        if self.se == 0:
            return 0.0 if self.diff > margin else 1.0
        return 1.0 - t_cdf((self.diff - margin) / self.se, self.df)

    def text(self, digits: int = 3, unit: str = "") -> str:
        """``+0.123 (95% CI +0.050 to +0.196, SE 0.020, n = 5 pairs)``."""
        u = f" {unit}" if unit else ""
        if self.n == 0:
            return "no pairs"
        if self.n < 2:
            return f"{self.diff:+.{digits}f}{u} (1 pair: no interval)"
        return (f"{self.diff:+.{digits}f}{u} (95% CI {self.low:+.{digits}f} to {self.high:+.{digits}f}, "
                f"SE {self.se:.{digits}f}, n = {self.n} pairs)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["df"] = self.df
        return d


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact one-sided p-value of mean(diffs) > 0 under random signs (all 2^n sign patterns; n <= 16)."""
    d = _finite(diffs)
    n = len(d)
    if n == 0:
        return 1.0
    if n > 16:
        raise ValueError("sign_flip_p enumerates 2^n patterns: at most 16 differences")
    obs = sum(d)
    hits = sum(1 for signs in itertools.product((1, -1), repeat=n)
               if sum(s * x for s, x in zip(signs, d)) >= obs - 1e-12 * (1 + abs(obs)))
    return hits / 2 ** n


def interval(diffs: Sequence[float], seeds: Optional[Sequence] = None, dropped: Sequence = (),
             a: float = float("nan"), b: float = float("nan")) -> Paired:
    """The paired statistics of per-seed differences ``diffs`` (positive = the claim's direction)."""
    d = _finite(diffs)
    n = len(d)
    m = mean(d)
    sd = std(d) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else math.inf
    if n > 1:
        half = t_quantile(1 - ALPHA_ONE_SIDED, n - 1) * se
        low, high = m - half, m + half
    else:
        low, high = -math.inf, math.inf
    return Paired(n, m, sd, se, low, high, sign_flip_p(d) if 0 < n <= 16 else float("nan"), d,
                  list(seeds) if seeds is not None else list(range(n)), list(dropped), a, b)


def paired(a: Mapping[Any, float], b: Mapping[Any, float], higher_is_better: bool = True) -> Paired:
    """Arm ``a`` against arm ``b`` per seed ({seed: value}; NaN/None = a diverged run): positive diff = ``a``
    better. Seeds missing or non-finite in either arm are dropped (and listed)."""
    seeds = sorted(set(a) | set(b), key=str)
    ok = [s for s in seeds if s in a and s in b and _finite([a[s]]) and _finite([b[s]])]
    dropped = [s for s in seeds if s not in ok]
    sign = 1.0 if higher_is_better else -1.0
    return interval([sign * (a[s] - b[s]) for s in ok], ok, dropped, mean([a[s] for s in ok]),
                    mean([b[s] for s in ok]))


def one_sample(values: Mapping[Any, float] | Sequence[float], sign: float = 1.0) -> Paired:
    """Per-seed values against 0 (``sign`` = -1 when lower is the claim's direction)."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    items = list(items)
    ok = [(s, v) for s, v in items if _finite([v])]
    return interval([sign * v for _, v in ok], [s for s, _ in ok], [s for s, v in items if not _finite([v])],
                    mean([v for _, v in ok]), 0.0)


HOLDS, OPPOSITE, ABSENT, UNCLEAR = "holds", "opposite", "absent", "unclear"


def status(c: Paired, margin: float) -> str:
    """``holds`` (low > margin), ``opposite`` (high < -margin), ``absent`` (the interval within ± margin) or
    ``unclear``. The boundaries are strict: an interval that touches a bound does not clear it."""
    if c.n < 2 or not math.isfinite(c.se):
        return UNCLEAR
    if c.low > margin:
        return HOLDS
    if c.high < -margin:
        return OPPOSITE
    if c.low > -margin and c.high < margin:
        return ABSENT
    return UNCLEAR


def holm(pvalues: Mapping[Any, float], alpha: float = ALPHA_ONE_SIDED) -> dict[Any, bool]:
    """Holm's step-down correction: {name: rejected} controlling the family-wise error at ``alpha``."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(order)
    out = {k: False for k in pvalues}
    for i, k in enumerate(order):
        if pvalues[k] <= alpha / (m - i):
            out[k] = True
        else:
            break
    return out


def any_beats(comparisons: Mapping[Any, Paired], margin: float, alpha: float = ALPHA_ONE_SIDED) -> list:
    """Which of a family of comparisons (positive diff = the rival better) clear ``margin`` under Holm's
    correction over the whole family: the union rule ("refuted if any rival wins") with its error controlled."""
    rejected = holm({k: c.p_above(margin) for k, c in comparisons.items()}, alpha)
    return [k for k, r in rejected.items() if r]


def all_beaten(comparisons: Mapping[Any, Paired], margin: float) -> bool:
    """Every comparison's interval clears ``margin`` (an intersection rule: each test at its own level is the
    correct test of "beats all", no correction needed)."""
    return bool(comparisons) and all(status(c, margin) == HOLDS for c in comparisons.values())


# ----------------------------------------------------------------------------------------- labels


def label_for(part: str) -> str:
    """The verdict label of a primary test's status, for a claim that says an effect exists."""
    return {HOLDS: SUPPORTED, OPPOSITE: CONTRADICTED, ABSENT: NOT_SHOWN, UNCLEAR: INCONCLUSIVE}[part]


def cap(label: str, scale_ok: bool) -> str:
    """A verdict at a scale that cannot show the effect is at most *not shown here*."""
    if not scale_ok and label in (SUPPORTED, CONTRADICTED):
        return NOT_SHOWN
    return label


# ----------------------------------------------------------------------------------------- diverged runs


def diverged(record: Any) -> bool:
    """Whether a record's training diverged (non-finite loss): its metric is not a measurement of the arm."""
    return bool(record.result.get("diverged"))


def per_seed(records: Iterable[Any], value: Callable[[dict], Optional[float]],
             where: Callable[[dict], bool] = lambda k: True) -> dict[Any, float]:
    """{seed: value(result)} of the records whose key passes ``where``; a diverged run gives NaN (dropped from
    every paired comparison, counted by :func:`divergence`)."""
    out = {}
    for r in records:
        if where(r.key):
            v = float("nan") if diverged(r) else value(r.result)
            out[r.key.get("seed", len(out))] = float("nan") if v is None else float(v)
    return out


def divergence(records: Iterable[Any], arm: Callable[[dict], Any]) -> dict[Any, dict]:
    """Per arm: runs, how many diverged and at which update (the trainer stops at the non-finite loss)."""
    out: dict[Any, dict] = {}
    for r in records:
        d = out.setdefault(arm(r.key), {"runs": 0, "diverged": 0, "at_steps": []})
        d["runs"] += 1
        if diverged(r):
            d["diverged"] += 1
            if r.result.get("steps") is not None:
                d["at_steps"].append(r.result["steps"])
    return out


def divergence_note(div: Mapping[Any, dict], name: Callable[[Any], str] = str) -> str:
    """``BN batch 2: diverged in 3/5 runs (at updates 12, 40, 41), left out of its metric.`` or ''."""
    parts = []
    for a, d in div.items():
        if d["diverged"]:
            when = f" (at update{'s' if len(d['at_steps']) > 1 else ''} {', '.join(map(str, d['at_steps']))})" \
                if d["at_steps"] else ""
            parts.append(f"{name(a)}: diverged in {d['diverged']}/{d['runs']} runs{when}")
    return ("Diverged runs, left out of their arm's metric and of every paired comparison: " + "; ".join(parts)
            + ".") if parts else ""


def divergence_rate(div: Mapping[Any, dict], a: Any) -> float:
    d = div.get(a)
    return d["diverged"] / d["runs"] if d and d["runs"] else 0.0


def diffs_with_interval(center: float, half: float, n: int = 5) -> list[float]:
    """Per-seed differences whose mean is ``center`` and whose 95% t interval is ``center ± half`` exactly (evenly
    spread): how the rule tests build tables just inside and just outside a threshold."""
    base = [i - (n - 1) / 2 for i in range(n)]
    s = std(base)
    scale = half * math.sqrt(n) / (t_quantile(1 - ALPHA_ONE_SIDED, n - 1) * s)
    return [center + scale * x for x in base]


# ----------------------------------------------------------------------------------------- scale checks

PLATEAU_TOL = 0.03  # a run has plateaued when its loss fell by less than 3% from the second-last to the last fifth
CHARLM_TRAINED_BPC = 2.2  # a converged small char-LSTM reaches about 1.7-2.0 valid BPC on Shakespeare-like text


def plateaued(curve: Sequence[float], tol: float = PLATEAU_TOL) -> bool:
    """Whether a loss curve has levelled off: the mean of its last fifth is within ``tol`` (relative) of the mean of
    the fifth before. Fewer than 10 points cannot show it."""
    c = _finite(curve)
    if len(c) < 10:
        return False
    k = len(c) // 5
    prev, last = mean(c[-2 * k:-k]), mean(c[-k:])
    return prev > 0 and (prev - last) / prev < tol


def share(flags: Iterable[bool]) -> float:
    f = list(flags)
    return sum(map(bool, f)) / len(f) if f else 0.0


def flip(c: Paired) -> Paired:
    """The same comparison the other way round (positive diff = the second arm better)."""
    return interval([-d for d in c.diffs], c.seeds, c.dropped, c.b, c.a)
