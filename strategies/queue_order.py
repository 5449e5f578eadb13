"""The order of the junior's queue: which open case a team annotates next (``active_learning.queue_order``).

Each order turns the stored scores of the open cases into a priority per case (higher first) with a reason the
queue shows:

* ``weighted``: the weighted sum of normalised scores (``active_learning.weights``: attention, uncertainty,
  diversity);
* ``foreground_random``: nnActive's improved random baseline as an order: a weighted random permutation by body
  volume (Efraimidis-Spirakis keys ``u ** (1 / w)``, with ``u`` fixed per case id so the order does not reshuffle at
  every pass and a new case takes its place among the others);
* ``clasp``: the ClaSP-style selection (:mod:`strategies.clasp`) run over every open case, its pick order as the
  priority;
* ``expected_failures`` (the default): the number of organs the quality estimator (:mod:`strategies.quality`)
  expects to fail, so juniors and seniors look first where the pre-label is probably wrong; the reason names those
  organs and why. Without an estimator (none published, or it does not load) the ``weighted`` order serves, with a
  warning in the log.
"""

from __future__ import annotations

import zlib
import logging
from typing import Callable, Collection, Dict, Mapping, Optional, Tuple

from amoslabel.config import ActiveLearningSettings
from amoslabel.organs import ORGAN_BY_ID
from review.store import ReviewStore
from review.workflow import Workflow
from strategies.clasp import ClaspSelector, Selection
from strategies.scoring import combined, final_cases, open_cases, scores

log = logging.getLogger(__name__)
Ranked = Dict[str, Tuple[float, str]]  # case -> (priority, reason)
QueueOrder = Callable[[ReviewStore, ActiveLearningSettings, Mapping[int, int]], Ranked]


def stable_uniform(case_id: str, salt: str = "foreground_random") -> float:
    """A number in (0, 1) fixed by the case id: the case's draw, the same at every pass and on every server."""
    return (zlib.crc32(f"{salt}:{case_id}".encode()) + 0.5) / 2**32


def weighted_order(store: ReviewStore, settings: ActiveLearningSettings, organ_cases: Mapping[int, int]) -> Ranked:
    return combined(store, dict(settings.weights))


def foreground_random_order(
    store: ReviewStore, settings: ActiveLearningSettings, organ_cases: Mapping[int, int]
) -> Ranked:
    table = scores(store)
    candidates = [c for c in open_cases(store) if c in table]
    if not candidates:
        return {}
    largest = max(table[c].foreground_ml for c in candidates) or 1.0
    out = {}
    for case in candidates:
        weight = max(table[case].foreground_ml, 1e-6) / largest  # (0, 1]: keys stay well apart in float64
        key = stable_uniform(case) ** (1.0 / weight)
        out[case] = (key, f"foreground-aware random (body {table[case].foreground_ml:.0f} mL)")
    return out


def clasp_selection(
    store: ReviewStore,
    candidates: Collection[str],
    organ_cases: Mapping[int, int],
    k: int,
    selector: Optional[ClaspSelector] = None,
) -> Optional[Selection]:
    """The ClaSP-style selection of ``k`` among the scored ``candidates``, as the server makes it: the labelled
    share is finals over finals and open cases, the organs' turn continues from the number of finals, and that
    number seeds the noise (the same state gives the same selection). None when no candidate is scored."""
    table = scores(store)
    entropies = {
        case: {int(organ): float(v) for organ, v in table[case].components.get("class_entropy", {}).items()}
        for case in candidates
        if case in table
    }
    if not entropies:
        return None
    finals, still_open = len(final_cases(store)), len(open_cases(store))
    return (selector or ClaspSelector()).select(
        entropies,
        k,
        finals / max(finals + still_open, 1),
        organ_cases,
        offset=finals,
        seed=zlib.crc32(f"clasp:{finals}".encode()),
    )


def pick_reason(selection: Selection, rank: int) -> str:
    """Why the pick at ``rank`` was made: its organ, entropy and noise (what the queue and Next Sample show)."""
    pick = selection.picks[rank]
    organ = ORGAN_BY_ID[pick.organ].name if pick.organ in ORGAN_BY_ID else "none in play"
    return (
        f"clasp #{rank + 1}: {organ} entropy {pick.entropy:.3f}, noise {pick.noise:+.3f} "
        f"(scale {selection.noise_scale:.2f})"
    )


def clasp_order(store: ReviewStore, settings: ActiveLearningSettings, organ_cases: Mapping[int, int]) -> Ranked:
    candidates = open_cases(store)
    selection = clasp_selection(store, candidates, organ_cases, len(candidates))
    if selection is None:
        return {}
    n = len(selection.picks)
    return {pick.case: ((n - rank) / n, pick_reason(selection, rank)) for rank, pick in enumerate(selection.picks)}


def failure_reason(expected: float, quality: Mapping[str, dict], top: int = 3) -> str:
    """The queue's words for a case: its expected failures, then the organs most likely wrong and why."""
    worst = sorted(quality.values(), key=lambda q: -q["p_fail"])[:top]
    organs = ", ".join(
        f"{q['name']} {q['p_fail']:.0%}" + (f" ({q['reasons'][0]})" if q["reasons"] else "")
        for q in worst
        if q["p_fail"] >= 0.1
    )
    return f"expected failures {expected:.1f}" + (f": {organs}" if organs else "")


def expected_failures_order(
    store: ReviewStore, settings: ActiveLearningSettings, organ_cases: Mapping[int, int]
) -> Ranked:
    table = scores(store)
    candidates = [c for c in open_cases(store) if c in table]
    predicted = [c for c in candidates if "expected_failures" in table[c].components]
    fallback = weighted_order(store, settings, organ_cases) if len(predicted) < len(candidates) else {}
    if not predicted and candidates:
        log.warning("queue order: no quality estimate yet (no estimator serves); ordering by the weighted scores")
    out = {}
    for case in candidates:
        components = table[case].components
        if case in predicted:
            expected = float(components["expected_failures"])
            out[case] = (expected, failure_reason(expected, components.get("quality", {})))
        elif case in fallback:
            out[case] = fallback[case]
    return out


QUEUE_ORDERS: Dict[str, QueueOrder] = {
    "expected_failures": expected_failures_order,
    "weighted": weighted_order,
    "foreground_random": foreground_random_order,
    "clasp": clasp_order,
}


def apply_priorities(
    workflow: Workflow, settings: ActiveLearningSettings, organ_cases: Mapping[int, int] | None = None
) -> int:
    """Set every scored open case's queue priority by ``settings.queue_order``; returns how many were set."""
    ranked = QUEUE_ORDERS[settings.queue_order](workflow.store, settings, organ_cases or {})
    for case_id, (priority, reason) in ranked.items():
        workflow.set_priority(case_id, priority, reason)
    return len(ranked)
