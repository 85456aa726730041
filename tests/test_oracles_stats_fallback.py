"""Paired statistics (medrobust/study/stats.py) when the BCa bootstrap fails (issue #17): with very few
resamples every bootstrap mean can fall on one side of the observed mean, BCa's bias correction is
infinite and scipy returns NaN; the documented fallback is scipy's *paired percentile* interval with
the same resamples. The oracle calls scipy here with those settings written out."""

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
