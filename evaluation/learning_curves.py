"""Comparing active-learning strategies over seeds: cases to a target, their mean with a 95 % interval, and paired
differences against a baseline.

A curve is ``[(labelled cases, validation score), ...]``. A seed whose curve never reaches the target is
*censored*: it needed more than the last size; it is counted at ``last size + step`` (a lower bound, which favours
the strategy that never got there) and reported as censored, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

Curve = Sequence[Tuple[int, float]]


def cases_to_reach(curve: Curve, target: float) -> Optional[int]:
    """The first labelled-set size whose score reaches ``target``; None if none does."""
    for n, score in curve:
        if score >= target:
            return n
    return None


def censored_value(curve: Curve) -> int:
    """What a curve that never reached the target is counted as: its last size plus one more step of the curve."""
    sizes = [n for n, _ in curve]
    step = sizes[-1] - sizes[-2] if len(sizes) > 1 else 1
    return sizes[-1] + step


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided 95 % t-interval over ``n`` values (the interval is nan for one value)."""

    mean: float
    low: float
    high: float
    n: int

    def excludes(self, value: float) -> bool:
        return not (self.low <= value <= self.high)

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with Student's t interval."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


@dataclass(frozen=True)
class Comparison:
    """One strategy against the baseline over the same seeds."""

    cases: Interval  # cases to the target, per seed (censored seeds at their lower bound)
    censored: int  # seeds that never reached the target
    difference: Interval  # strategy minus baseline, paired by seed (cases)
    ratio: Interval  # strategy over baseline, paired by seed


def compare(
    needed: Mapping[str, Sequence[Optional[int]]],
    curves: Mapping[str, Sequence[Curve]],
    baseline: str,
) -> Dict[str, Comparison]:
    """Per strategy, its cases to the target and the paired difference and ratio against ``baseline``.

    Args:
        needed: strategy -> per seed, the cases it needed (None: never reached).
        curves: strategy -> per seed, its curve (for the censored value).
        baseline: the strategy the others are paired with.
    """

    def filled(strategy: str) -> List[float]:
        return [
            float(n if n is not None else censored_value(curve)) for n, curve in zip(needed[strategy], curves[strategy])
        ]

    base = np.asarray(filled(baseline))
    out = {}
    for strategy in needed:
        mine = np.asarray(filled(strategy))
        out[strategy] = Comparison(
            cases=mean_interval(mine),
            censored=sum(n is None for n in needed[strategy]),
            difference=mean_interval(mine - base),
            ratio=mean_interval(mine / base),
        )
    return out
