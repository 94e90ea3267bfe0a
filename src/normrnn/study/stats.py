"""Small statistics for verdicts over a handful of seeds: means, spreads and two-standard-error comparisons."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence


def mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def sem(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return std(xs) / math.sqrt(len(xs)) if xs else float("nan")


def fmt(xs: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` (or the single value), for tables."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    finite = [x for x in xs if math.isfinite(x)]
    if len(finite) < len(xs):
        return f"{mean(finite):.{digits}f} ({len(xs) - len(finite)} diverged)" if finite else "diverged"
    return f"{mean(xs):.{digits}f} ± {std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def group(records: Iterable[Any], by: Callable[[dict], Any], value: Callable[[dict], float]) -> dict[Any, list]:
    """Values of ``value(result)`` grouped by ``by(key)``, e.g. per (norm, batch) over seeds."""
    out: dict[Any, list] = defaultdict(list)
    for r in records:
        out[by(r.key)].append(value(r.result))
    return dict(out)


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> dict[str, float]:
    """How much better ``a`` is than ``b``: ``diff`` (positive = a better), its standard error (Welch), ``z``
    = diff / se, and ``d`` (Cohen's d with the pooled spread). A diff with se = 0 gets z = ±inf unless diff = 0."""
    ma, mb = mean(a), mean(b)
    diff = (ma - mb) if higher_is_better else (mb - ma)
    # One value per side gives no estimate of the spread: an infinite standard error, so nothing is significant.
    n_a = sum(1 for x in a if x is not None and math.isfinite(x))
    n_b = sum(1 for x in b if x is not None and math.isfinite(x))
    se = math.sqrt(sem(a) ** 2 + sem(b) ** 2) if min(n_a, n_b) >= 2 else math.inf
    if se > 0:
        z = diff / se  # 0 when se is infinite
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    pooled = math.sqrt((std(a) ** 2 + std(b) ** 2) / 2)
    d = diff / pooled if pooled > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"diff": diff, "se": se, "z": z, "d": d, "a": ma, "b": mb}


def better(c: dict[str, float], margin: float = 0.0, z: float = 2.0) -> bool:
    """``a`` beats ``b`` by more than ``margin`` and by more than ``z`` standard errors."""
    return c["diff"] > margin and c["z"] > z


def equivalent(c: dict[str, float], margin: float) -> bool:
    """The difference is within ±``margin`` (a practical tolerance) and within 2 standard errors of it."""
    return abs(c["diff"]) + 2 * c["se"] <= margin if math.isfinite(c["se"]) else False
