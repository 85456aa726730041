"""Paired statistics (medrobust/study/stats.py) against independent oracles (issue #17):
scipy's bootstrap called here with the documented defaults, hand-computed seed aggregates,
Holm by hand, the exact verdict sentences for constructed tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medrobust.study.stats import aggregate_seeds, fmt_diff, holm, paired_difference, pareto_front, significant, verdicts


def test_paired_difference_defaults_are_a_95_percent_bca_bootstrap_with_9999_resamples_seed_0():
    from scipy import stats

    # 40 continuous cases: the interval moves with the resample count (8 cases would land on the same grid point)
    g = np.random.default_rng(5)
    ref = g.uniform(0.4, 0.9, 40)
    met = np.clip(ref + g.normal(0.03, 0.05, 40), 0, 1)
    res = paired_difference(ref, met)
    d = met - ref
    assert res.n == 40 and res.diff == pytest.approx(d.mean())
    boot = stats.bootstrap((ref, met), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                           confidence_level=0.95, n_resamples=9999, method="BCa", random_state=np.random.default_rng(0))
    assert res.ci_low == pytest.approx(float(boot.confidence_interval.low), rel=0, abs=1e-9)
    assert res.ci_high == pytest.approx(float(boot.confidence_interval.high), rel=0, abs=1e-9)
    assert res.p_value == pytest.approx(stats.wilcoxon(d).pvalue)


def test_paired_difference_with_one_case_keeps_the_case_and_its_difference():
    res = paired_difference([0.4], [0.7])
    assert res.n == 1 and res.diff == pytest.approx(0.3)
    assert math.isnan(res.ci_low) and math.isnan(res.ci_high) and math.isnan(res.p_value)
    empty = paired_difference([], [])
    assert empty.n == 0 and math.isnan(empty.diff)


def test_aggregate_seeds_by_hand():
    df = pd.DataFrame({"seed": [0, 0, 1, 1], "case": ["a", "b", "a", "b"], "score": [0.2, 0.4, 0.6, 1.0]})
    summ, by_case = aggregate_seeds(df)
    # seed means 0.3 and 0.8: mean 0.55, sample sd |0.8 - 0.3| / sqrt(2)
    assert summ["mean"] == pytest.approx(0.55) and summ["sd"] == pytest.approx(0.5 / math.sqrt(2))
    assert summ["n_seeds"] == 2 and summ["n_cases"] == 2
    assert by_case.to_dict() == pytest.approx({"a": 0.4, "b": 0.7})
    one, _ = aggregate_seeds(df[df.seed == 0])
    assert one["sd"] == 0.0 and one["mean"] == pytest.approx(0.3) and one["n_seeds"] == 1


def test_holm_and_pareto_by_hand():
    # sorted 0.01, 0.02, 0.04 -> x3, x2, x1 = 0.03, 0.04, 0.04 (running max); NaN stays NaN
    out = holm([0.04, np.nan, 0.01, 0.02])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    mask = pareto_front([0.9, 0.8, 0.7, 0.9, np.nan], [0.1, 0.5, 0.4, 0.05, 0.9])
    assert mask.tolist() == [True, True, False, False, False]


def test_fmt_diff_and_significant():
    assert fmt_diff(0.1234, 0.08, 0.16) == "+0.123 [0.080, 0.160]"
    assert fmt_diff(-0.05, math.nan, math.nan) == "-0.050"
    assert fmt_diff(math.nan, 0.0, 1.0) == "n/a"
    assert significant(0.01, 0.1, 0.3) and significant(0.01, -0.3, -0.1)
    assert not significant(0.2, 0.1, 0.3)  # p above the default alpha 0.05
    assert not significant(0.06, 0.1, 0.3) and significant(0.049, 0.1, 0.3)
    assert not significant(0.01, -0.1, 0.3)  # interval contains 0
    assert not significant(math.nan, 0.1, 0.3)


def _table():
    nan = math.nan
    return pd.DataFrame([
        # budget 0.5: A better (sig), B worse (sig), C level; A best robust
        dict(method="ref", budget=0.5, robust_mean=0.50, diff=nan, ci_low=nan, ci_high=nan, p_holm=nan, pareto=False),
        dict(method="A", budget=0.5, robust_mean=0.70, diff=0.2, ci_low=0.1, ci_high=0.3, p_holm=0.01, pareto=True),
        dict(method="B", budget=0.5, robust_mean=0.30, diff=-0.2, ci_low=-0.3, ci_high=-0.1, p_holm=0.01, pareto=False),
        dict(method="C", budget=0.5, robust_mean=0.52, diff=0.02, ci_low=-0.01, ci_high=0.05, p_holm=0.3, pareto=True),
    ])


def test_verdict_sentences_for_a_constructed_table():
    out = verdicts(_table(), "ref", pairwise={0.5: {"ref": 0.001, "B": 0.001, "C": 0.4}})
    assert out == {0.5: "A scores highest at budget 0.5 (0.700) but is not distinguishable from C. "
                        "Better than ref: A by +0.200 [0.100, 0.300]. Worse than ref: B by -0.200 [-0.300, -0.100]. "
                        "Not distinguishable from ref: C. Pareto front (clean vs robust): A and C."}
    # budgets in ascending order whatever the table's row order
    shuffled = pd.concat([_table(), _table().assign(budget=0.0)])  # 0.5 rows first
    assert list(verdicts(shuffled, "ref")) == [0.0, 0.5]
    beats = verdicts(_table(), "ref", pairwise={0.5: {"ref": 0.001, "B": 0.001, "C": 0.01}})
    assert beats[0.5].startswith("A scores highest at budget 0.5 (0.700) and beats every other method.")
