"""Does a heat map point at the pre-label's errors? Voxel- and case-level detection metrics.

* **Voxel level**: the error map is where the pre-label differs from the reference label; inside the body, the
  heat (attention, entropy, any per-voxel score) is scored as a detector of it by the area under the ROC curve and
  the average precision (scikit-learn's, ties handled as theirs are).
* **Case level**: a case *fails* when some organ present in its reference has Dice below ``dice_threshold`` (0.8) in
  its pre-label. Cases are ranked by a score (attention mL, mean entropy); the share of failing cases among the top
  10 % or 20 % is the recall at that budget. Random ordering finds, in expectation, the budget's share itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from amoslabel.organs import ORGANS
from evaluation.metrics import dice_of

#: The organ Dice below which a pre-labelled organ counts as a failure.
FAILURE_DICE = 0.8


@dataclass(frozen=True)
class VoxelDetection:
    """How well a heat map separates wrong voxels from right ones inside the body."""

    auroc: float
    average_precision: float
    error_voxels: int
    body_voxels: int

    @property
    def error_rate(self) -> float:
        """The share of body voxels that are wrong: the average precision of a heat that knows nothing."""
        return self.error_voxels / self.body_voxels if self.body_voxels else float("nan")


def voxel_detection(heat: np.ndarray, error: np.ndarray, body: np.ndarray) -> VoxelDetection:
    """AUROC and average precision of ``heat`` against the boolean ``error`` map, over the ``body`` voxels.

    Both are undefined (nan) when the body holds only right or only wrong voxels.
    """
    heat, error, body = np.asarray(heat), np.asarray(error, bool), np.asarray(body, bool)
    if heat.shape != error.shape or error.shape != body.shape:
        raise ValueError(f"heat {heat.shape}, error {error.shape} and body {body.shape} must share a grid")
    scores, truth = heat[body].astype(np.float64).ravel(), error[body].ravel()
    positives = int(truth.sum())
    if positives == 0 or positives == truth.size:
        return VoxelDetection(float("nan"), float("nan"), positives, int(truth.size))
    return VoxelDetection(
        float(roc_auc_score(truth, scores)), float(average_precision_score(truth, scores)), positives, int(truth.size)
    )


def organ_dice(prediction: np.ndarray, reference: np.ndarray) -> Dict[int, float]:
    """Dice per organ present in the reference (an organ the pre-label misses entirely scores 0)."""
    return {o.id: dice_of(prediction, reference, o.id) for o in ORGANS if (reference == o.id).any()}


def failed_organs(prediction: np.ndarray, reference: np.ndarray, threshold: float = FAILURE_DICE) -> List[int]:
    """The organs present in the reference whose pre-label Dice is below ``threshold``."""
    return [organ for organ, dice in organ_dice(prediction, reference).items() if dice < threshold]


def top_fraction_recall(scores: Mapping[str, float], failing: Sequence[str], fraction: float) -> float:
    """Of the ``failing`` cases, the share among the top ``ceil(fraction * n)`` cases by score (ties: by name).

    nan when no case fails."""
    if not failing:
        return float("nan")
    budget = math.ceil(fraction * len(scores))
    top = sorted(scores, key=lambda case: (-scores[case], case))[:budget]
    return len(set(top) & set(failing)) / len(failing)


def random_recall(cases: int, fraction: float) -> float:
    """The expected recall of a random ordering at the same budget: the budget's share of the cases."""
    return math.ceil(fraction * cases) / cases if cases else float("nan")


def best_recall(cases: int, failing: int, fraction: float) -> float:
    """The most any ranking can find at the budget: all of the failing cases, or as many as the budget holds (half
    failing and a 20 % budget: at most 40 %)."""
    return min(1.0, math.ceil(fraction * cases) / failing) if failing else float("nan")


def recall_at_failing_share(
    scores: Mapping[str, float], failing: Sequence[str], fraction: float, share: float, draws: int = 200
) -> float:
    """:func:`top_fraction_recall` on sets where ``share`` of the cases fail, as a team's queue holds them.

    A bench set where half the cases fail caps any ranking (:func:`best_recall`). Each draw keeps every passing case
    and failing cases drawn without replacement to make ``share`` of the set; the recall is the mean over ``draws``
    (seeded: the same figures on every run). A set whose failing share is at most ``share`` is taken whole. A perfect
    ranking finds every failing case when ``share`` is at most ``fraction``.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the failing share is a fraction between 0 and 1, not {share}")
    failing = sorted(set(failing))
    passing = [case for case in scores if case not in set(failing)]
    if not failing or not passing:
        return top_fraction_recall(scores, failing, fraction)
    keep = max(1, round(share * len(passing) / (1.0 - share)))
    if keep >= len(failing):
        return top_fraction_recall(scores, failing, fraction)
    rng = np.random.default_rng(0)
    recalls = []
    for _ in range(draws):
        drawn = list(rng.choice(failing, size=keep, replace=False))
        subset = {case: scores[case] for case in passing + drawn}
        recalls.append(top_fraction_recall(subset, drawn, fraction))
    return float(np.mean(recalls))
