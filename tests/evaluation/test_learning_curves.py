"""Cases to a target over seeds: censoring, the t-interval, and paired comparisons against a baseline."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from evaluation.learning_curves import cases_to_reach, censored_value, compare, mean_interval

FAST = [(4, 0.3), (8, 0.55), (12, 0.6)]
SLOW = [(4, 0.3), (8, 0.4), (12, 0.5)]


def test_cases_to_reach_and_the_censored_lower_bound():
    assert cases_to_reach(FAST, 0.5) == 8 and cases_to_reach(FAST, 0.3) == 4
    assert cases_to_reach(SLOW, 0.55) is None
    assert censored_value(SLOW) == 16  # one more round of 4 beyond the last size


def test_the_interval_is_students_t():
    interval = mean_interval([8.0, 12.0, 10.0, 10.0])
    half = stats.t.ppf(0.975, 3) * stats.tstd([8, 12, 10, 10]) / 2
    assert (
        interval.mean == 10.0 and interval.low == pytest.approx(10 - half) and interval.high == pytest.approx(10 + half)
    )
    assert interval.excludes(14.0) and not interval.excludes(9.0) and str(interval).startswith("10.00 [")
    one = mean_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.low) and one.n == 1


def test_paired_comparison_against_the_baseline_counts_censored_seeds():
    needed = {"foreground_random": [8, 12, None], "clasp": [4, 8, 12]}
    curves = {"foreground_random": [FAST, FAST, SLOW], "clasp": [FAST, FAST, SLOW]}
    result = compare(needed, curves, "foreground_random")
    base, clasp = result["foreground_random"], result["clasp"]
    assert base.censored == 1 and base.cases.mean == pytest.approx((8 + 12 + 16) / 3)
    assert base.difference.mean == 0 and base.ratio.mean == 1
    assert clasp.censored == 0 and clasp.difference.mean == pytest.approx(-4.0)
    assert clasp.ratio.mean == pytest.approx((0.5 + 8 / 12 + 12 / 16) / 3)
    assert clasp.difference.excludes(0.0)  # the same -4 on every seed: the interval is a point
