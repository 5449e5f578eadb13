"""The Next Sample strategies the app serves (MONAI Label strategies), most of them reading the stored scores."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from review.schema import CaseScore
from review.service import ReviewQueueStrategy, ReviewService
from review.store import ReviewStore
from strategies.baselines import ForegroundRandom
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


def score_strategies(store: ReviewStore) -> Dict[str, Strategy]:
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
    }


def next_sample_strategies(review: ReviewService) -> Dict[str, Strategy]:
    """Every strategy by name: the review queue, MONAI Label's random and first, foreground-aware random, and the
    score-based ones."""
    return {
        ReviewQueueStrategy.NAME: ReviewQueueStrategy(review),
        "random": Random(),
        "first": First(),
        "foreground_random": ForegroundRandom(),
        **score_strategies(review.store),
    }
