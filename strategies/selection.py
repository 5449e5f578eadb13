"""The Next Sample strategies the app serves (MONAI Label strategies), most of them reading the stored scores."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from review.schema import CaseScore
from review.service import ReviewQueueStrategy, ReviewService
from review.store import ReviewStore
from strategies.baselines import ForegroundRandom
from strategies.clasp import ClaspSelector
from strategies.queue_order import clasp_selection, pick_reason
from strategies.scoring import best_unlabelled, combined


class StoredScoreStrategy(Strategy):
    """The unlabelled image with the highest stored score (images not scored yet are skipped)."""

    def __init__(self, store: ReviewStore, key: Callable[[CaseScore], float], description: str):
        super().__init__(description)
        self.store, self.key = store, key

    def __call__(self, request: Dict[str, Any], datastore) -> Optional[Dict[str, Any]]:
        best = best_unlabelled(self.store, self.key, datastore.get_unlabeled_images())
        return {"id": best} if best else None


class WeightedStrategy(Strategy):
    """The unlabelled image with the highest weighted, normalised combination of scores (e.g. attention + diversity)."""

    def __init__(self, store: ReviewStore, weights: Dict[str, float], description: str):
        super().__init__(description)
        self.store, self.weights = store, dict(weights)

    def __call__(self, request: Dict[str, Any], datastore) -> Optional[Dict[str, Any]]:
        unlabelled = set(datastore.get_unlabeled_images())
        ranked = {c: v for c, v in combined(self.store, self.weights).items() if c in unlabelled}
        if not ranked:
            return None
        best = max(ranked, key=lambda c: ranked[c][0])
        return {"id": best, "priority": ranked[best][0], "reason": ranked[best][1]}


class ClaspStrategy(Strategy):
    """ClaSP-style: the organs take turns (those in the fewest final labels first), each turn taking the unlabelled
    case most uncertain about that organ, with power noise that fades as the cohort gets labelled
    (:mod:`strategies.clasp`). The noise's seed is the number of finals, so the same state gives the same pick."""

    def __init__(
        self,
        store: ReviewStore,
        organ_cases: Callable[[], Mapping[int, int]] = dict,
        selector: Optional[ClaspSelector] = None,
    ):
        super().__init__("Class-stratified predictive entropy with scheduled power noise (ClaSP-style)")
        self.store, self.organ_cases, self.selector = store, organ_cases, selector

    def __call__(self, request: Dict[str, Any], datastore) -> Optional[Dict[str, Any]]:
        unlabelled = set(datastore.get_unlabeled_images())
        selection = clasp_selection(self.store, unlabelled, self.organ_cases(), 1, self.selector)
        if selection is None:
            return None
        return {"id": selection.picks[0].case, "reason": pick_reason(selection, 0), "selection": selection.as_json()}


def score_strategies(store: ReviewStore, organ_cases: Callable[[], Mapping[int, int]] = dict) -> Dict[str, Strategy]:
    return {
        "uncertainty": StoredScoreStrategy(
            store, lambda r: r.uncertainty, "Highest predictive entropy (flip TTA, all members) over the foreground"
        ),
        "attention": StoredScoreStrategy(
            store, lambda r: r.attention_ml, "Most attention: model disagreement, entropy, overlap, anatomy"
        ),
        "attention_diversity": WeightedStrategy(
            store, {"attention": 1.0, "diversity": 1.0}, "Attention plus distance from the final-labelled cases"
        ),
        "clasp": ClaspStrategy(store, organ_cases),
    }


def next_sample_strategies(
    review: ReviewService, organ_cases: Callable[[], Mapping[int, int]] = dict
) -> Dict[str, Strategy]:
    """Every strategy by name: the review queue, MONAI Label's random and first, foreground-aware random, and the
    score-based ones. ``organ_cases`` says how many final labels have each organ (ClaSP's turn order)."""
    return {
        ReviewQueueStrategy.NAME: ReviewQueueStrategy(review),
        "random": Random(),
        "first": First(),
        "foreground_random": ForegroundRandom(),
        **score_strategies(review.store, organ_cases),
    }
