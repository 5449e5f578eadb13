"""Which organs of a pre-label probably fail: a calibrated estimate per organ, with the reasons behind it.

An organ *fails* when its Dice against the final label is below 0.8 (``evaluation.error_detection.FAILURE_DICE``).
For each organ of a pre-label, :func:`organ_features` reduces what the scorer already has to a few numbers:

* the networks' doubt: per-organ entropy (ClaSP's), mean doubt (1 - top probability), and the members' agreement
  (the smallest Dice between two networks' masks of the organ);
* plausibility against what the atlas prior and the final labels know (:mod:`strategies.anatomy`): the volume
  against the organ's learned range, the centroid's distance from its usual place, extra connected pieces, a
  left/right swap, and the overlap with the atlas prior's mask;
* the organ itself (some organs fail more often than others).

:class:`QualityEstimator` is a logistic regression on the standardised features, calibrated with Platt's sigmoid
(scikit-learn), so its reasons are the features that push an organ's probability up the most. It learns first from
simulated corrections (``bench.attention`` makes them), then from the team's own history (:mod:`strategies.
quality_history`); its versions are kept and promoted like the networks' (:class:`models.versions.ModelStore`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from amoslabel.organs import ORGAN_BY_ID, ORGANS
from evaluation.metrics import dice_of
from strategies.anatomy import SIDE_PAIRS, AnatomyPrior, measure

# The features, in the estimator's order; the organ one-hots follow them. Each says in plain words what a high value
# means, which is the reason shown to a reviewer.
FEATURES: Dict[str, str] = {
    "missing": "the pre-label has none of it, where the prior expects it",
    "volume_outside": "its volume is outside the range of the final labels",
    "position_sd": "it sits away from its usual place",
    "extra_pieces": "it is in more pieces than final labels have",
    "side_swapped": "left and right look swapped",
    "prior_miss": "it overlaps the atlas prior's organ little",
    "entropy": "the networks are unsure of its voxels",
    "doubt": "the networks' top probability is low over it",
    "disagreement": "the networks disagree on its outline",
    "attention": "the attention heat is high over it",
}
ORGAN_FEATURES = [f"organ_{o.id}" for o in ORGANS]
ALL_FEATURES = list(FEATURES) + ORGAN_FEATURES
IN_PLAY = 0.1  # a voxel is in an organ's region where the networks give it at least this probability


def organ_features(
    prelabel: np.ndarray,
    networks: Sequence[np.ndarray],
    grid: sitk.Image,
    anatomy: Optional[AnatomyPrior] = None,
    prior: Optional[np.ndarray] = None,
    scan: Optional[sitk.Image] = None,
    heat: Optional[np.ndarray] = None,
    judge: Sequence[int] = (),
) -> Dict[int, Dict[str, float]]:
    """The features of every organ of ``prelabel`` (z, y, x), by organ id: the organs it holds, and those it misses
    where the atlas prior or a network expects them (an organ outside the scan's field of view is not judged).

    Args:
        networks: the networks' class probabilities, each (C, z, y, x), on the pre-label's grid.
        grid: an image with the pre-label's geometry (spacing, origin, direction).
        anatomy: what the final labels taught (volumes, places, pieces); without it those features are 0.
        prior: the atlas prior's class probabilities (C, z, y, x), when there is one.
        scan: the scan on the grid (the body frame of the position check); the organs' box without it.
        heat: the graded attention heat (z, y, x), when computed.
        judge: organs to judge even where nothing expects them (a benchmark's reference organs).
    """
    mean = np.mean(networks, axis=0) if networks else None
    masks = [p.argmax(0) for p in networks]
    prior_mask = prior.argmax(0) if prior is not None else None
    label = sitk.GetImageFromArray(prelabel.astype(np.uint8))
    label.CopyInformation(grid)
    try:
        measured = measure(label, scan)
    except ValueError:  # an empty pre-label: every organ is missing
        measured = {}
    swapped = {
        organ
        for right, left in SIDE_PAIRS
        if right in measured and left in measured and measured[right].centroid_mm[0] > measured[left].centroid_mm[0]
        for organ in (right, left)
    }
    out: Dict[int, Dict[str, float]] = {}
    for organ in ORGANS:
        mask = prelabel == organ.id
        expected = (prior_mask is not None and (prior_mask == organ.id).any()) or (
            mean is not None and bool((mean[organ.id] > 0.5).any())
        )
        if not mask.any() and not expected and organ.id not in judge:
            continue  # neither the pre-label nor the prior or the networks put it in this scan: nothing to judge
        region = mask | (mean[organ.id] > IN_PLAY) if mean is not None else mask
        row = dict.fromkeys(FEATURES, 0.0)
        row["missing"] = float(not mask.any())
        learned = anatomy.organs.get(organ.id) if anatomy is not None else None
        m = measured.get(organ.id)
        if learned is not None:
            low, high = learned.volume_ml
            volume = m.volume_ml if m is not None else 0.0
            row["volume_outside"] = _outside_log_range(volume, low, high)
            if m is not None:
                z = np.abs(np.array(m.centroid_in_body) - learned.centroid) / np.array(learned.centroid_sd)
                row["position_sd"] = min(float(z.max()), 10.0)
                row["extra_pieces"] = float(max(0, m.pieces - learned.max_pieces))
        row["side_swapped"] = float(organ.id in swapped)
        if prior_mask is not None:
            row["prior_miss"] = 1.0 - dice_of(prelabel, prior_mask, organ.id)
        if mean is not None and region.any():
            p = np.clip(mean[:, region], 1e-8, 1.0)
            row["entropy"] = float((-(p * np.log2(p)).sum(0)).mean())
            row["doubt"] = float(1.0 - p.max(0).mean())
        if len(masks) > 1:
            pairs = [(a, b) for i, a in enumerate(masks) for b in masks[i + 1 :]]
            row["disagreement"] = 1.0 - min(dice_of(a, b, organ.id) for a, b in pairs)
        if heat is not None and region.any():
            row["attention"] = float(heat[region].mean())
        out[organ.id] = row
    return out


def _outside_log_range(volume: float, low: float, high: float) -> float:
    """How far ``volume`` lies outside [low, high], in natural-log units (0 inside; 5 for an absent organ)."""
    if volume <= 0:
        return 5.0
    if low > 0 and volume < low:
        return min(math.log(low / volume), 5.0)
    if high > 0 and volume > high:
        return min(math.log(volume / high), 5.0)
    return 0.0


def feature_vector(organ: int, features: Mapping[str, float]) -> List[float]:
    """One organ's row in :data:`ALL_FEATURES` order."""
    return [float(features.get(name, 0.0)) for name in FEATURES] + [float(organ == o.id) for o in ORGANS]


@dataclass
class OrganQuality:
    """The estimate for one organ: the probability that it fails, and why (the strongest features first)."""

    organ: int
    p_fail: float
    reasons: List[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "organ": self.organ,
            "name": ORGAN_BY_ID[self.organ].name,
            "p_fail": round(self.p_fail, 4),
            "reasons": self.reasons,
        }


class QualityEstimator:
    """A calibrated logistic regression on :data:`ALL_FEATURES`; its parameters are plain numbers (no pickle).

    Args:
        params: ``mean``, ``scale``, ``coef`` (one per feature), ``intercept``, and Platt's ``a`` and ``b`` (the
            calibrated probability is ``sigmoid(a * logit + b)``).
    """

    def __init__(self, params: Mapping[str, Sequence[float] | float]):
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.coef = np.asarray(params["coef"], dtype=np.float64)
        self.intercept = float(params["intercept"])
        self.a, self.b = float(params.get("a", 1.0)), float(params.get("b", 0.0))
        if not (len(self.mean) == len(self.scale) == len(self.coef) == len(ALL_FEATURES)):
            raise ValueError(f"an estimator needs {len(ALL_FEATURES)} parameters per kind, got {len(self.coef)}")

    @classmethod
    def fit(cls, rows: np.ndarray, failed: np.ndarray, c: float = 1.0) -> "QualityEstimator":
        """Fit on (n, features) rows and 0/1 outcomes; Platt scaling on 3-fold out-of-fold scores when each class
        has at least 3 examples (else the regression's own probabilities)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows, failed = np.asarray(rows, np.float64), np.asarray(failed, np.int64)
        if len(set(failed.tolist())) < 2:
            raise ValueError("the estimator needs both failing and passing organs to learn from")
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(rows, failed)
        scaler, regression = model[0], model[1]
        params = {
            "mean": scaler.mean_.tolist(),
            "scale": np.where(scaler.scale_ > 0, scaler.scale_, 1.0).tolist(),
            "coef": regression.coef_[0].tolist(),
            "intercept": float(regression.intercept_[0]),
        }
        if min(np.bincount(failed, minlength=2)) >= 3:
            folds = StratifiedKFold(3, shuffle=True, random_state=0)
            logits = cross_val_predict(model, rows, failed, cv=folds, method="decision_function")
            platt = LogisticRegression(C=1e6, max_iter=1000).fit(logits.reshape(-1, 1), failed)
            params["a"], params["b"] = float(platt.coef_[0][0]), float(platt.intercept_[0])
        return cls(params)

    def params(self) -> Dict[str, object]:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "a": self.a,
            "b": self.b,
        }

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The parameters as tensors, to publish as a model version (``models.versions``: weights-only loading)."""
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.params().items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "QualityEstimator":
        return cls({k: (v.tolist() if v.dim() else float(v)) for k, v in state.items()})

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """The calibrated probability of failing, per row."""
        logits = ((np.asarray(rows, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-(self.a * logits + self.b)))

    def contributions(self, row: Sequence[float]) -> np.ndarray:
        """Each feature's push on the logit, against an average organ."""
        return (np.asarray(row, np.float64) - self.mean) / self.scale * self.coef

    def predict(self, features: Mapping[int, Mapping[str, float]], top: int = 2) -> Dict[int, OrganQuality]:
        """Per organ: the probability that it fails and its ``top`` reasons (features that raise it, in words)."""
        organs = sorted(features)
        if not organs:
            return {}
        rows = np.array([feature_vector(o, features[o]) for o in organs])
        chances = self.probabilities(rows)
        out = {}
        for organ, row, p in zip(organs, rows, chances):
            push = self.contributions(row)[: len(FEATURES)]
            order = [i for i in np.argsort(-push) if push[i] > 0.25][:top]
            out[organ] = OrganQuality(organ, float(p), [FEATURES[list(FEATURES)[i]] for i in order])
        return out

    def largest(self, n: int = 5) -> List[Tuple[str, float]]:
        """The ``n`` features with the largest weights (per standard deviation), signed."""
        order = np.argsort(-np.abs(self.coef))[:n]
        return [(ALL_FEATURES[i], round(float(self.coef[i]), 3)) for i in order]


def expected_failures(predicted: Mapping[int, OrganQuality]) -> float:
    """How many organs of the case are expected to fail: the sum of their probabilities."""
    return float(sum(q.p_fail for q in predicted.values()))
