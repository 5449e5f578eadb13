"""The order of the junior's queue: which open case a team annotates next (``active_learning.queue_order``).

Each order turns the stored scores of the open cases into a priority per case (higher first) with a reason the
queue shows:

* ``weighted``: the weighted sum of normalised scores (``active_learning.weights``: attention, uncertainty,
  diversity);
* ``foreground_random``: nnActive's improved random baseline as an order: a weighted random permutation by body
  volume (Efraimidis-Spirakis keys ``u ** (1 / w)``, with ``u`` fixed per case id so the order does not reshuffle at
  every pass and a new case takes its place among the others);
* ``clasp``: the ClaSP-style selection (:mod:`strategies.clasp`) run over every open case, its pick order as the
  priority.
"""

from __future__ import annotations

import zlib
from typing import Callable, Collection, Dict, Mapping, Optional, Tuple

from amoslabel.config import ActiveLearningSettings
from amoslabel.organs import ORGAN_BY_ID
from review.store import ReviewStore
from review.workflow import Workflow
from strategies.clasp import ClaspSelector, Selection
from strategies.scoring import combined, final_cases, open_cases, scores

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


QUEUE_ORDERS: Dict[str, QueueOrder] = {
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
