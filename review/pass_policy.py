"""The pass policy (``review.pass_policy``, off unless set): review effort only where the machine is unsure.

When a case enters a round of review, each organ whose predicted chance of failing (the quality estimator's,
stored with the case's score: ``case_scores.components.quality``) is below ``threshold`` needs one senior's
approval instead of every reader's. The organs are spread over the round's readers, one each, so every other reader
neither sees nor votes them, and no reader learns another's vote (review stays blind). A random ``audit_fraction``
of those organs is reviewed in full anyway: how often that full review asks for changes is the policy's miss rate,
measured live (:func:`figures`, shown on the overview page).

The draw of each organ is fixed by the case, round and organ (so it replays), and the plan, with every probability
and draw, is in the case's history. Organs the estimator did not judge (no estimate, or outside the scan's field of
view) are reviewed in full; the consensus rule for every other organ is unchanged.

``threshold: auto`` spares a team from guessing the threshold. Once the team's history holds enough failing organs,
it comes from there (:func:`history_threshold`): the estimator's retraining measures the serving version on the
held-out final cases (:func:`record_calibration`), and the threshold is the largest that the split-conformal rule
allows, so that at most ``max_missed`` of the failing organs pass, whatever the probabilities' calibration. Before
that, the open cases' own predictions choose it (:func:`choose_threshold`), which trusts their calibration. Either
is chosen again every :data:`AUTO_REFRESH_S`, and the audit measures whether it deserved the trust.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from sqlalchemy import func, select

from amoslabel.config import PassPolicy
from amoslabel.organs import ORGAN_BY_ID
from review import assignments, audit
from review.schema import AuditEvent, Case, CaseScore, Decision, Review

POLICY_EVENT = "pass_policy"
CALIBRATION_EVENT = "quality_calibration"  # the serving estimator measured on the held-out history (no case)
AUTO_REFRESH_S = 300.0  # how long an automatic threshold serves before it is chosen again
AUTO_MIN_ORGANS = 100  # fewer judged organs than this among the open cases choose no automatic threshold


def draw(case_id: str, round_: int, organ: int) -> float:
    """The organ's audit draw in [0, 1): the same for the same case, round and organ, on every server."""
    return zlib.crc32(f"audit:{case_id}:{round_}:{organ}".encode()) / 2**32


def choose_threshold(p_fail: Iterable[float], max_missed: float) -> float:
    """The largest threshold, in hundredths, at which the organs passed are expected to hold at most ``max_missed``
    of the failing ones. With calibrated probabilities, the failing organs expected among those passed are the sum
    of their probabilities, and among all organs the sum of all: so the rule is ``sum(p < t) <= max_missed *
    sum(p)``. It weighs every organ's probability, where counting the few known failures of a small history steps
    by whole organs."""
    p = np.sort(np.asarray(list(p_fail), dtype=np.float64))
    total = float(p.sum())
    if total <= 0:
        return 0.0
    below = np.concatenate([[0.0], np.cumsum(p)])  # below[n]: the sum of the n smallest
    thresholds = np.arange(101) / 100
    expected = below[np.searchsorted(p, thresholds, side="left")]  # the sum of p < t, for each t
    return float(thresholds[expected <= max_missed * total].max())


def by_hundredth(p_fail: Iterable[float], weights: Optional[Iterable[float]] = None) -> List[float]:
    """How many probabilities (or how much ``weights``) fall in each hundredth [j/100, (j+1)/100) (1.0 in the last):
    what a threshold in hundredths needs of them, as ``sum(bins[:j])`` is the count below ``j/100``."""
    bins = np.clip(np.floor(np.asarray(list(p_fail), dtype=np.float64) * 100), 0, 99).astype(int)
    w = None if weights is None else np.asarray(list(weights), dtype=np.float64)
    return [round(float(v), 3) for v in np.bincount(bins, weights=w, minlength=100)]


def history_threshold(failing_bins: Sequence[int], max_missed: float) -> Optional[float]:
    """The split-conformal threshold from held-out history (``failing_bins``: :func:`by_hundredth` of the failing
    organs' probabilities): with ``n`` failing organs and ``k = floor(max_missed * (n + 1))``, the largest hundredth
    below which fewer than ``k`` of them lie. A new failing organ, exchangeable with them, then passes with chance at
    most ``k / (n + 1) <= max_missed``. None while ``k`` is 0 (fewer than ``1 / max_missed - 1`` failing organs).
    Weighted bins (:func:`history_weights`) count each organ by its weight."""
    failing = float(sum(failing_bins))
    allowed = math.floor(max_missed * (failing + 1) + 1e-9)
    if allowed < 1:
        return None
    below = np.concatenate([[0.0], np.cumsum(failing_bins)])  # below[j]: how many lie under j / 100
    return float(np.flatnonzero(below < allowed - 1e-9).max() / 100)


def history_weights(s, case_ids: Iterable[str]) -> Dict[Tuple[str, int], float]:
    """What each organ the policy let through weighs in the history (the others weigh 1), by its case's newest plan:
    0 for an organ one reader approved, whose failure no other reader could see (counted as a success, it would
    raise the next threshold); ``1 / audit_fraction`` for an audited one, reviewed in full, which stands for those it
    was drawn among."""
    wanted = set(case_ids)
    newest: Dict[str, dict] = {}
    for case_id, details in s.execute(
        select(AuditEvent.case_id, AuditEvent.details).where(AuditEvent.action == POLICY_EVENT).order_by(AuditEvent.id)
    ).all():
        if case_id in wanted:
            newest[case_id] = details
    weights: Dict[Tuple[str, int], float] = {}
    for case_id, details in newest.items():
        for organ in details.get("one_approval", {}):
            weights[(case_id, int(organ))] = 0.0
        for organ in details.get("audited", []):
            weights[(case_id, int(organ))] = 1.0 / float(details.get("audit_fraction") or 1.0)
    return weights


def record_calibration(
    s,
    version: int,
    p_fail: Sequence[float],
    failed: Sequence[bool],
    cases: int,
    weights: Optional[Sequence[float]] = None,
) -> None:
    """Record the serving estimator ``version``'s probabilities on the held-out history (``cases`` final cases): per
    hundredth, how many organs and how many failing ones, each counted by its ``weights`` (:func:`history_weights`;
    1 without). :class:`AutoThreshold` chooses from the newest."""
    w = [1.0] * len(p_fail) if weights is None else list(weights)
    failing = [(p, x) for p, f, x in zip(p_fail, failed, w) if f]
    audit.record(
        s,
        None,
        "quality estimator",
        CALIBRATION_EVENT,
        None,
        None,
        f"quality estimator v{version} on the held-out history: {sum(x for _, x in failing):g} failing of "
        f"{sum(w):g} organs ({cases} final cases; organs the pass policy let through weighted)",
        {
            "version": version,
            "cases": cases,
            "organs": by_hundredth(p_fail, w),
            "failing": by_hundredth([p for p, _ in failing], [x for _, x in failing]),
        },
    )


def _newest_calibration_query():
    return (
        select(AuditEvent.details)
        .where(AuditEvent.case_id.is_(None), AuditEvent.action == CALIBRATION_EVENT)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )


def _newest_calibration(s) -> Optional[dict]:
    return s.execute(_newest_calibration_query()).scalars().first()


@dataclass(frozen=True)
class Choice:
    """A threshold (None: every organ in full), what it rests on in words, and the quality estimator version whose
    history measured it (None: not from the history), which a case must have been scored by for it to apply."""

    threshold: Optional[float]
    basis: str
    calibrated: Optional[int] = None


class AutoThreshold:
    """``threshold: auto``: chosen from the held-out history of the version that scored the open cases
    (:func:`history_threshold`) when it has enough failing organs, else from the open cases' predictions
    (:func:`choose_threshold`); once per :data:`AUTO_REFRESH_S` per process. A number in the configuration is used as
    it is."""

    def __init__(self) -> None:
        self._chosen: Tuple[float, float, Choice] = (-math.inf, 0.0, Choice(None, ""))  # when, for which max_missed

    def resolve(self, s, policy: PassPolicy) -> Choice:
        """The threshold (None when neither the history nor the open cases can choose one yet) and its basis."""
        if policy.threshold != "auto":
            return Choice(float(policy.threshold), "configured")
        when, max_missed, _ = self._chosen
        if time.monotonic() - when > AUTO_REFRESH_S or max_missed != policy.max_missed:
            self._chosen = (time.monotonic(), policy.max_missed, self._choose(s, policy.max_missed))
        return self._chosen[2]

    @staticmethod
    def _choose(s, max_missed: float) -> Choice:
        scored = s.execute(
            select(CaseScore.members, CaseScore.components["quality"])
            .join(Case, Case.id == CaseScore.case_id)
            .where(Case.state.notin_(("final", "withdrawn")))
        ).all()
        p_fail = [float(q["p_fail"]) for _, quality in scored for q in (quality or {}).values()]
        versions = {(members or {}).get("quality") for members, quality in scored if quality}
        calibration = _newest_calibration(s)
        history = ""
        if calibration and calibration.get("version") in versions:
            failing = round(float(sum(calibration["failing"])), 1)
            threshold = history_threshold(calibration["failing"], max_missed)
            if threshold is not None:
                through = round(float(sum(calibration["failing"][: round(threshold * 100)])), 1)
                basis = (
                    f"auto from the team's history: {through:g} of the {failing:g} failing organs of "
                    f"{calibration['cases']} held-out final cases under it (quality estimator "
                    f"v{calibration['version']}); at most {max_missed:.0%} of the failing organs through"
                )
                return Choice(threshold, basis, int(calibration["version"]))
            history = f"; the history's {failing:g} failing organs are too few for {max_missed:.0%}"
        elif calibration:
            history = f"; the history measured quality estimator v{calibration.get('version')}, not the scoring one"
        threshold = choose_threshold(p_fail, max_missed) if len(p_fail) >= AUTO_MIN_ORGANS else None
        return Choice(
            threshold,
            f"auto: at most {max_missed:.0%} of the failing organs expected through, "
            f"by the predictions for {len(p_fail)} organs of the open cases"
            + ("" if threshold is not None else f" (too few: it needs {AUTO_MIN_ORGANS})")
            + history,
        )


def plan(
    s, case: Case, policy: Optional[PassPolicy], readers: Sequence[int], auto: Optional[AutoThreshold] = None
) -> Dict[int, int]:
    """At the start of a round of review: ``{organ: the one reader who approves it}``; recorded in the history.
    ``auto``: the workflow's :class:`AutoThreshold` (it keeps the chosen threshold between rounds)."""
    if policy is None or not readers:
        return {}
    choice = (auto or AutoThreshold()).resolve(s, policy)
    threshold, basis = choice.threshold, choice.basis
    score = s.get(CaseScore, case.id)
    quality = (score.components.get("quality") if score else None) or {}
    scored_by = (score.members or {}).get("quality") if score else None
    if choice.calibrated is not None and scored_by != choice.calibrated:  # rescoring after a promotion not done yet
        threshold, basis = None, f"{basis}; this case was scored by quality estimator v{scored_by}"
    chances = {int(organ): float(q["p_fail"]) for organ, q in quality.items()}
    below = sorted(o for o, p in chances.items() if threshold is not None and p < threshold)
    audited = [o for o in below if draw(case.id, case.round, o) < policy.audit_fraction]
    passing = [o for o in below if o not in audited]
    ordered = sorted(readers)
    designated = {organ: ordered[n % len(ordered)] for n, organ in enumerate(passing)}  # the load spread evenly
    names = ", ".join(ORGAN_BY_ID[o].name for o in passing) or "none"
    audit.record(
        s,
        case.id,
        "system",
        POLICY_EVENT,
        case.state,
        case.state,
        f"round {case.round}: one approval for {names}; {len(audited)} of {len(below)} predicted correct audited"
        + ("" if quality else " (no quality estimate: every organ in full)")
        + ("" if threshold is not None else f" (no threshold yet: every organ in full; {basis})"),
        {
            "round": case.round,
            "threshold": threshold,
            "threshold_basis": basis,
            "audit_fraction": policy.audit_fraction,
            "one_approval": {str(o): r for o, r in designated.items()},
            "audited": audited,
            "p_fail": {str(o): round(p, 4) for o, p in chances.items()},
            "draws": {str(o): round(draw(case.id, case.round, o), 4) for o in below},
        },
    )
    return designated


def latest(s, case_id: str) -> Optional[dict]:
    """The details of the case's newest plan (any round)."""
    event = (
        s.execute(
            select(AuditEvent.details)
            .where(AuditEvent.case_id == case_id, AuditEvent.action == POLICY_EVENT)
            .order_by(AuditEvent.id.desc())
            .limit(1)
        )
        .scalars()
        .first()
    )
    return event


def designated(details: Optional[dict], round_: int) -> Dict[int, int]:
    """A plan's ``{organ: designated reader}`` when it is of round ``round_`` (else empty)."""
    if not details or details.get("round") != round_:
        return {}
    return {int(o): int(r) for o, r in details.get("one_approval", {}).items()}


def one_approval(s, case: Case) -> Dict[int, int]:
    """The current round's ``{organ: designated reader}`` (empty when the policy did not apply to it)."""
    return designated(latest(s, case.id), case.round)


def not_mine(s, case: Case, reader: int) -> set:
    """The organs of the round that another of its readers approves alone (a reader who left the round frees them)."""
    plan = one_approval(s, case)
    if not plan:  # the policy did not apply to this round: no readers to look up on the vote's path
        return set()
    readers = set(assignments.readers(s, case))
    return {o for o, r in plan.items() if r != reader and r in readers}


def wilson(misses: int, n: int, z: float = 1.96) -> tuple:
    """The 95 % Wilson interval of a rate ``misses / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = misses / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def figures(s) -> Dict[str, object]:
    """The policy's record over every decided round: the audited organs' miss rate (full review asked for changes)
    with its confidence interval, and the organ votes it saved."""
    events = s.execute(
        select(AuditEvent.case_id, AuditEvent.details).where(AuditEvent.action == POLICY_EVENT).order_by(AuditEvent.id)
    ).all()
    if not events:
        return {}
    decisions = {
        (d.case_id, d.round): d.organs for d in s.execute(select(Decision)).scalars() if d.outcome != "pending"
    }
    readers = dict(
        (tuple(k), n)
        for *k, n in s.execute(
            select(Review.case_id, Review.round, func.count(func.distinct(Review.user_id))).group_by(
                Review.case_id, Review.round
            )
        ).all()
    )
    audited = misses = passed = saved = 0
    for case_id, details in events:
        organs = decisions.get((case_id, details.get("round")))
        if organs is None:
            continue  # the round is not decided yet
        for organ in details.get("audited", []):
            audited += 1
            misses += organs.get(ORGAN_BY_ID[int(organ)].name) == "changes"
        designated = details.get("one_approval", {})
        passed += len(designated)
        saved += len(designated) * max(readers.get((case_id, details.get("round")), 1) - 1, 0)
    low, high = wilson(misses, audited)
    newest = events[-1][1] if events else {}
    return {
        "threshold": newest.get("threshold"),  # the newest round's, and what it rests on
        "threshold_basis": newest.get("threshold_basis", "configured"),
        "audited": audited,
        "audited_misses": misses,
        "miss_rate": misses / audited if audited else None,
        "miss_rate_ci95": [low, high] if audited else None,
        "one_approval_organs": passed,
        "organ_votes_saved": saved,
    }
