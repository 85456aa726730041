"""Paired statistics (medrobust/study/stats.py) at their edges (issue #17).

When the BCa bootstrap fails (with very few resamples every bootstrap mean can fall on one side of
the observed mean, BCa's bias correction is infinite and scipy returns NaN) the documented fallback
is scipy's *paired percentile* interval with the same resamples; the oracle calls scipy here with
those settings written out. Also: two cases are enough for an interval and a p-value (exact
Wilcoxon p 0.5 by hand), ``significant``'s strict inequalities, and the verdict sentences at the
clean budget and with an empty Pareto front."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medrobust.study.stats import paired_difference

REF = np.array([0.1, 0.2, 0.0, 0.3, 0.1, 0.2])
MET = REF + np.array([0.7, 0.7, 0.4, 0.9, 0.6, 0.8])


def _scipy(method: str, n_resamples: int, paired: bool = True, seed: int = 0, confidence: float = 0.95):
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((REF, MET), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=paired, vectorized=True,
                             confidence_level=confidence, n_resamples=n_resamples, method=method,
                             random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def test_bca_failure_falls_back_to_the_paired_percentile_interval():
    lo_bca, hi_bca = _scipy("BCa", 4)
    assert math.isnan(lo_bca) and math.isnan(hi_bca)  # the situation under test: BCa fails here
    lo, hi = _scipy("percentile", 4)
    # the unpaired bootstrap gives another interval on these data, so pairing is visible
    assert (lo, hi) != pytest.approx(_scipy("percentile", 4, paired=False))
    res = paired_difference(REF, MET, n_resamples=4)
    assert res.n == 6 and res.diff == pytest.approx(4.1 / 6)
    assert res.ci_low == pytest.approx(lo, abs=1e-12) and res.ci_high == pytest.approx(hi, abs=1e-12)
    assert math.isfinite(res.ci_low) and res.ci_low <= res.ci_high
    # the fallback uses the caller's confidence level (BCa fails at 80 % too with seed 0)
    assert math.isnan(_scipy("BCa", 4, confidence=0.8)[0])
    res80 = paired_difference(REF, MET, n_resamples=4, confidence=0.8)
    assert (res80.ci_low, res80.ci_high) == pytest.approx(_scipy("percentile", 4, confidence=0.8), abs=1e-12)
    assert (res80.ci_low, res80.ci_high) != pytest.approx((lo, hi), abs=1e-6)


def test_bca_success_is_kept_even_with_few_resamples():
    lo_bca, hi_bca = _scipy("BCa", 5)
    assert math.isfinite(lo_bca) and math.isfinite(hi_bca)
    assert (lo_bca, hi_bca) != pytest.approx(_scipy("percentile", 5))  # the two methods differ here
    res = paired_difference(REF, MET, n_resamples=5)
    assert res.ci_low == pytest.approx(lo_bca, abs=1e-12) and res.ci_high == pytest.approx(hi_bca, abs=1e-12)


def test_two_cases_get_an_interval_and_a_p_value():
    # two positive differences 0.1 and 0.3: every resample mean lies in [0.1, 0.3]; the exact two-sided
    # Wilcoxon p of two same-sign differences is 2 * (1/2)^2 = 0.5
    res = paired_difference([0.2, 0.5], [0.3, 0.8])
    assert res.n == 2 and res.diff == pytest.approx(0.2)
    assert 0.1 - 1e-12 <= res.ci_low <= res.diff <= res.ci_high <= 0.3 + 1e-12
    assert res.p_value == pytest.approx(0.5)


def test_significant_needs_p_strictly_below_alpha_and_an_interval_excluding_zero():
    from medrobust.study.stats import significant

    assert significant(0.049, 0.1, 0.3) and not significant(0.05, 0.1, 0.3)  # p equal to alpha: not significant
    assert not significant(0.1, 0.1, 0.3, alpha=0.1) and significant(0.099, 0.1, 0.3, alpha=0.1)
    assert not significant(0.01, 0.0, 0.3)  # an interval touching 0 does not exclude it
    assert not significant(0.01, -0.3, 0.0)
    assert significant(0.01, 1e-9, 0.3) and significant(0.01, -0.3, -1e-9)


def test_verdict_at_budget_zero_has_no_pareto_sentence():
    import pandas as pd

    from medrobust.study.stats import verdicts

    nan = math.nan
    t = pd.DataFrame([
        dict(method="ref", budget=0.0, robust_mean=0.8, diff=nan, ci_low=nan, ci_high=nan, p_holm=nan, pareto=True),
        dict(method="A", budget=0.0, robust_mean=0.7, diff=-0.1, ci_low=-0.2, ci_high=0.05, p_holm=0.2, pareto=False),
        dict(method="ref", budget=1.0, robust_mean=0.3, diff=nan, ci_low=nan, ci_high=nan, p_holm=nan, pareto=False),
        dict(method="A", budget=1.0, robust_mean=0.4, diff=0.1, ci_low=-0.02, ci_high=0.2, p_holm=0.3, pareto=False),
    ])
    out = verdicts(t, "ref")
    # at the clean budget the front is the clean metric alone: no Pareto sentence even when a row is marked
    assert out[0.0] == "ref scores highest without attack (clean) (0.800). Not distinguishable from ref: A."
    # no method on the front at budget 1: no Pareto sentence either
    assert out[1.0] == "A scores highest at budget 1 (0.400). Not distinguishable from ref: A."


def test_holm_caps_at_one_and_pareto_skips_nan_anywhere():
    from medrobust.study.stats import holm, pareto_front

    # 0.6 x 2 = 1.2 -> capped at 1; then max(1.2, 0.7 x 1) -> 1
    np.testing.assert_allclose(holm([0.7, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.3, 0.9, np.nan]), [0.6, 0.9, np.nan])
    # a NaN point first: the points after it are still judged
    assert pareto_front([np.nan, 0.5, 0.4], [0.5, 0.5, 0.6]).tolist() == [False, True, True]
    assert pareto_front([0.5, np.nan, 0.6], [0.5, 0.9, 0.4]).tolist() == [True, False, True]


def test_pairwise_p_equal_to_alpha_is_a_tie_and_lists_of_three_names():
    import pandas as pd

    from medrobust.study.stats import _join, verdicts

    nan = math.nan
    t = pd.DataFrame([
        dict(method="ref", budget=0.5, robust_mean=0.5, diff=nan, ci_low=nan, ci_high=nan, p_holm=nan, pareto=False),
        dict(method="A", budget=0.5, robust_mean=0.7, diff=0.2, ci_low=0.1, ci_high=0.3, p_holm=0.01, pareto=True),
        dict(method="B", budget=0.5, robust_mean=0.45, diff=-0.05, ci_low=-0.1, ci_high=0.01, p_holm=0.2, pareto=False),
        dict(method="C", budget=0.5, robust_mean=0.52, diff=0.02, ci_low=-0.01, ci_high=0.05, p_holm=0.3, pareto=False),
        dict(method="D", budget=0.5, robust_mean=0.51, diff=0.01, ci_low=-0.02, ci_high=0.04, p_holm=0.4, pareto=False),
    ])
    out = verdicts(t, "ref", pairwise={0.5: {"ref": 0.001, "B": 0.05, "C": 0.001, "D": 0.001}})
    # p = alpha is not below alpha: A is not distinguishable from B
    assert out[0.5].startswith("A scores highest at budget 0.5 (0.700) but is not distinguishable from B.")
    assert "Not distinguishable from ref: B, C and D." in out[0.5]
    assert _join(["x"]) == "x" and _join(["x", "y"]) == "x and y" and _join(["x", "y", "z", "w"]) == "x, y, z and w"
