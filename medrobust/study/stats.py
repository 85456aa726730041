"""Paired statistics for method comparisons: differences per case, intervals, tests, Pareto fronts.

Every comparison is paired by case: two methods evaluated on the same test cases give one
difference per case (method minus reference). With several training seeds, each case's metric is
first averaged over the seeds (:func:`aggregate_seeds`), so the tests see one value per case and
method; the spread over seeds is reported separately as the standard deviation of the seeds' case
means.

- :func:`paired_difference`: mean difference with a bootstrap confidence interval
  (``scipy.stats.bootstrap``, ``paired=True``: cases are resampled, keeping each case's pair) and
  a Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``).
- :func:`holm`: Holm's step-down correction of a family of p-values.
- :func:`pareto_front`: which methods no other method beats on both clean and robust metric.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from medrobust.errors import ConfigError


@dataclass
class PairedResult:
    """A paired comparison of a method with a reference on the same cases.

    Attributes:
        n: number of paired cases.
        diff: mean of ``method - reference`` over cases.
        ci_low, ci_high: the bootstrap confidence interval of ``diff``.
        p_value: two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0).
    """

    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_difference(reference: Sequence[float], method: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 9999, seed: int = 0) -> PairedResult:
    """Mean per-case difference ``method - reference`` with a bootstrap CI and a Wilcoxon p-value.

    Args:
        reference: per-case metric of the reference method ``(n,)``.
        method: per-case metric of the compared method, same cases in the same order ``(n,)``.
        confidence: confidence level of the interval.
        n_resamples: bootstrap resamples.
        seed: seed of the bootstrap (results are reproducible).

    Returns:
        A :class:`PairedResult`. With every difference equal (e.g. identical methods) the
        interval collapses to that value and, when it is 0, ``p_value`` is 1. Fewer than two
        cases give NaN interval and p-value.

    Raises:
        ConfigError: when the two arrays differ in length or hold NaN.
    """
    from scipy import stats

    a = np.asarray(reference, dtype=float)
    b = np.asarray(method, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"paired comparison needs two 1-D arrays over the same cases, got shapes {a.shape} and {b.shape}; evaluate both methods on the same cases.")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ConfigError("paired comparison got NaN per-case values; drop or fix the cases without a metric first.")
    d = b - a
    n = len(d)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedResult(n, mean, math.nan, math.nan, math.nan)
    if np.ptp(d) <= 1e-12:  # degenerate (up to rounding): every resample gives the same mean
        return PairedResult(n, mean, mean, mean, wilcoxon_p(d))

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(y - x, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, confidence_level=confidence,
                              n_resamples=n_resamples, method="BCa", random_state=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa can fail on very small samples
            res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, confidence_level=confidence,
                                  n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedResult(n, mean, lo, hi, wilcoxon_p(d))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of differences ``d`` (zero differences dropped)."""
    from scipy import stats

    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries stay NaN.

    Sort the m valid p-values ascending, multiply the i-th smallest (0-based) by ``m - i``,
    take the running maximum and cap at 1.

    Args:
        p_values: the family's raw p-values.

    Returns:
        Adjusted p-values in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adj
    return out


def pareto_front(clean: Sequence[float], robust: Sequence[float]) -> np.ndarray:
    """Which points no other point dominates (at least as good on both, better on one).

    Args:
        clean, robust: one value per method (higher is better).

    Returns:
        Boolean mask ``(n,)``; NaN points are never on the front.
    """
    c = np.asarray(clean, dtype=float)
    r = np.asarray(robust, dtype=float)
    n = len(c)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if np.isnan(c[i]) or np.isnan(r[i]):
            continue
        dominated = (c >= c[i]) & (r >= r[i]) & ((c > c[i]) | (r > r[i]))
        out[i] = not dominated.any()
    return out


def aggregate_seeds(per_case: pd.DataFrame, value: str = "score") -> tuple[dict[str, float], pd.Series]:
    """Aggregate one method's per-case values over seeds.

    Args:
        per_case: rows ``(seed, case, value)``: one per case and seed.
        value: the column with the metric.

    Returns:
        ``({"mean", "sd", "n_seeds", "n_cases"}, per-case mean over seeds)``: ``mean`` and ``sd``
        are the mean and the sample standard deviation (0 for one seed) over seeds of each seed's
        mean over cases; the Series (indexed by case, sorted) averages each case over the seeds
        and is what the paired tests use.

    Raises:
        ConfigError: when the seeds were evaluated on different cases.
    """
    seed_means = per_case.groupby("seed")[value].mean()
    cases = per_case.groupby("seed")["case"].apply(lambda s: tuple(sorted(map(str, s))))
    if cases.nunique() > 1:
        raise ConfigError("the seeds of one method were evaluated on different cases; evaluate every seed on the same split.")
    by_case = per_case.groupby("case")[value].mean().sort_index()
    sd = float(seed_means.std(ddof=1)) if len(seed_means) > 1 else 0.0
    return {"mean": float(seed_means.mean()), "sd": sd, "n_seeds": int(len(seed_means)), "n_cases": int(len(by_case))}, by_case


def fmt_diff(diff: float, lo: float, hi: float, digits: int = 3) -> str:
    """``+0.123 [0.080, 0.160]``."""
    if math.isnan(diff):
        return "n/a"
    if math.isnan(lo):
        return f"{diff:+.{digits}f}"
    return f"{diff:+.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def significant(p_holm: float, lo: float, hi: float, alpha: float = 0.05) -> bool:
    """A difference counts when the Holm-adjusted p is below ``alpha`` and the interval excludes 0."""
    return (not math.isnan(p_holm)) and p_holm < alpha and (lo > 0 or hi < 0)


def verdicts(table: pd.DataFrame, reference: str, alpha: float = 0.05, pairwise: Optional[dict] = None,
             budget_label: str = "budget") -> dict[float, str]:
    """Plain-language verdict per budget from a comparison table.

    Args:
        table: one row per method and budget with columns ``method, budget, robust_mean, diff,
            ci_low, ci_high, p_holm, pareto`` (the reference's own rows have NaN statistics).
        reference: the reference method.
        alpha: family-wise significance level.
        pairwise: ``{budget: {method: p_holm}}``: the best method at each budget compared with
            every other (Holm within the budget); None skips the "not distinguishable" sentence.
        budget_label: how budgets are named in the sentences (e.g. "L2 RMS").

    Returns:
        ``{budget: sentence(s)}``.
    """
    out: dict[float, str] = {}
    for b, g in table.groupby("budget", sort=True):
        where = "without attack (clean)" if b == 0 else f"at {budget_label} {b:g}"
        others = g[g.method != reference]
        better = [r for _, r in others.iterrows() if significant(r.p_holm, r.ci_low, r.ci_high, alpha) and r["diff"] > 0]
        worse = [r for _, r in others.iterrows() if significant(r.p_holm, r.ci_low, r.ci_high, alpha) and r["diff"] < 0]
        level = [r for _, r in others.iterrows() if not significant(r.p_holm, r.ci_low, r.ci_high, alpha)]
        parts = []
        best = g.sort_values("robust_mean", ascending=False).iloc[0]
        if pairwise is not None and b in pairwise:
            ties = [m for m, p in pairwise[b].items() if m != best.method and not (p < alpha)]
            if ties:
                parts.append(f"{best.method} scores highest {where} ({best.robust_mean:.3f}) but is not distinguishable from "
                             f"{_join(ties)}.")
            else:
                parts.append(f"{best.method} scores highest {where} ({best.robust_mean:.3f}) and beats every other method.")
        else:
            parts.append(f"{best.method} scores highest {where} ({best.robust_mean:.3f}).")
        if better:
            parts.append(f"Better than {reference}: " + "; ".join(f"{r.method} by {fmt_diff(r['diff'], r.ci_low, r.ci_high)}" for r in better) + ".")
        if worse:
            parts.append(f"Worse than {reference}: " + "; ".join(f"{r.method} by {fmt_diff(r['diff'], r.ci_low, r.ci_high)}" for r in worse) + ".")
        if level:
            parts.append(f"Not distinguishable from {reference}: {_join([r.method for r in level])}.")
        front = g[g.pareto.astype(bool)].method.tolist()
        if b > 0 and front:
            parts.append(f"Pareto front (clean vs robust): {_join(front)}.")
        out[float(b)] = " ".join(parts)
    return out


def _join(names: list[str]) -> str:
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
