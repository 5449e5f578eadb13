"""Which organs of a pre-label probably fail: a calibrated estimate per organ, with the reasons behind it.

An organ *fails* when its Dice against the final label is below 0.8 (``evaluation.error_detection.FAILURE_DICE``).
For each organ of a pre-label, :func:`organ_features` reduces what the scorer already has to a few numbers:

* the networks' doubt: per-organ entropy (ClaSP's), mean doubt (1 - top probability), and the members' agreement
  (the smallest Dice between two networks' masks of the organ);
* plausibility against what the atlas prior and the final labels know (:mod:`strategies.anatomy`): the volume
  against the organ's learned range, the centroid's distance from its usual place, extra connected pieces, a
  left/right swap, and the overlap with the atlas prior's mask;
* its outline (boundary errors, which the rest do not see): one minus the soft Dice between the pre-label's mask and
  the networks' mean probability of the organ (the Dice the networks expect), the doubt band's volume (probability
  between 0.2 and 0.8) against the organ's, how weakly the image's edges support its surface, how far the pre-label's
  mask is from the nearest network's, and its size (a thin error costs a small organ more of its Dice);
* the organ itself (some organs fail more often than others).

:class:`QualityEstimator` is a logistic regression on a spline of each feature and the organ one-hots, calibrated with
Platt's sigmoid (scikit-learn); it is additive, so its reasons are the features that push an organ's probability up
the most. It learns first from
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
from scipy.ndimage import binary_erosion

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
    # boundary errors: an organ found in the right place whose outline is wrong (a liver at Dice 0.75)
    "soft_miss": "the networks' probabilities follow its outline poorly",
    "doubt_band": "a wide band around its outline is in doubt",
    "edge_miss": "its outline does not follow the image's edges",
    "prelabel_apart": "the pre-label's outline differs from a network's",
    "small": "it is small, so a thin error at its outline costs much of its Dice",
}
# the boundary-error features (the bench measures the estimator without them too)
OUTLINE = ("soft_miss", "doubt_band", "edge_miss", "prelabel_apart", "small")
ORGAN_FEATURES = [f"organ_{o.id}" for o in ORGANS]
ALL_FEATURES = list(FEATURES) + ORGAN_FEATURES
IN_PLAY = 0.1  # a voxel is in an organ's region where the networks give it at least this probability
BAND = (0.2, 0.8)  # an organ's probability in this range puts a voxel in the doubt band around its outline


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
    edges = _edge_strength(scan) if scan is not None else None
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
        if mean is not None:
            row.update(_outline_features(mask, mean[organ.id]))
        if edges is not None and mask.any():
            row["edge_miss"] = _edge_miss(mask, edges)
        if masks:
            row["prelabel_apart"] = 1.0 - min(dice_of(prelabel, other, organ.id) for other in masks)
        row["small"] = -math.log10(m.volume_ml + 0.1) if m is not None else 1.0  # 0.1 mL floor: an absent organ
        out[organ.id] = row
    return out


def _outline_features(mask: np.ndarray, p: np.ndarray) -> Dict[str, float]:
    """How well the networks' mean probability ``p`` of an organ agrees with the pre-label's ``mask`` of it: one minus
    their soft Dice (1 for an organ the pre-label lacks), and the doubt band's volume against the organ's (at most
    5)."""
    size = float(mask.sum())
    counted = p[mask | (p > IN_PLAY)]  # the faint tail over the whole scan would swamp a small organ's sum
    soft = 2.0 * float(p[mask].sum()) / max(size + float(counted.sum()), 1e-6)
    band = float(((p > BAND[0]) & (p < BAND[1])).sum())
    return {"soft_miss": 1.0 - soft, "doubt_band": min(band / max(size, 1.0), 5.0)}


def _edge_strength(scan: sitk.Image) -> np.ndarray:
    """The scan's gradient magnitude (one-voxel Gaussian), scaled so that the strongest 1 % of edges are at 1."""
    magnitude = sitk.GetArrayFromImage(
        sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(scan, sitk.sitkFloat32), float(min(scan.GetSpacing())))
    )
    top = float(np.percentile(magnitude, 99))
    return np.clip(magnitude / top, 0.0, 1.0) if top > 0 else np.zeros_like(magnitude)


def _edge_miss(mask: np.ndarray, edges: np.ndarray) -> float:
    """One minus the mean edge strength on the mask's surface (its voxels with a neighbour outside it)."""
    box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in np.nonzero(mask))  # the organ's, padded
    part = mask[box]
    surface = part & ~binary_erosion(part, border_value=0)
    return 1.0 - float(edges[box][surface].mean()) if surface.any() else 1.0


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


SPLINE_DEGREE = 2  # each feature's effect is a quadratic B-spline over its learned range: three knots, four terms
SPLINE_TERMS = 4


def spline_terms(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The B-spline basis (n, :data:`SPLINE_TERMS`) of one feature: knots at its learned ``low``, midpoint and
    ``high``, spaced evenly beyond them; a value outside [low, high] counts as the nearest end."""
    from scipy.interpolate import BSpline

    step = (high - low) / 2 if high > low else 0.5
    knots = low + step * np.arange(-SPLINE_DEGREE, 2 + SPLINE_DEGREE + 1)
    end = low + 2 * step
    x = np.clip(np.asarray(values, np.float64), low, end)
    return BSpline.design_matrix(x, knots, SPLINE_DEGREE).toarray()


def expand_terms(rows: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rows in :data:`ALL_FEATURES` order as the regression's terms: each feature's splines, then the organs."""
    rows = np.atleast_2d(np.asarray(rows, np.float64))
    n = len(FEATURES)
    return np.hstack([spline_terms(rows[:, j], low[j], high[j]) for j in range(n)] + [rows[:, n:]])


class QualityEstimator:
    """A calibrated logistic regression on a spline of each of :data:`FEATURES` and the organ one-hots: additive, so
    each feature's push on the logit is its own (the reasons), yet a feature may matter only past a point (a soft
    Dice that costs nothing above 0.9 and much below 0.7). Its parameters are plain numbers (no pickle).

    Args:
        params: ``low`` and ``high`` (each feature's learned range, where its knots sit), ``mean``, ``scale`` and
            ``coef`` (one per spline term and organ), ``intercept``, and Platt's ``a`` and ``b`` (the calibrated
            probability is ``sigmoid(a * logit + b)``).
    """

    def __init__(self, params: Mapping[str, Sequence[float] | float]):
        self.low = np.asarray(params.get("low", []), dtype=np.float64)
        self.high = np.asarray(params.get("high", []), dtype=np.float64)
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.coef = np.asarray(params["coef"], dtype=np.float64)
        self.intercept = float(params["intercept"])
        self.a, self.b = float(params.get("a", 1.0)), float(params.get("b", 0.0))
        width = len(FEATURES) * SPLINE_TERMS + len(ORGAN_FEATURES)
        if len(self.low) != len(FEATURES) or not (len(self.mean) == len(self.scale) == len(self.coef) == width):
            raise ValueError(
                f"this estimator was fitted on {len(self.coef)} terms and AMOS Label now computes {width} "
                f"({len(FEATURES)} features as splines, and the organs): the next retraining from the finals "
                "replaces it, or publish a new cold start (python -m bench.quality --publish STUDIES_DIR)"
            )

    @classmethod
    def fit(cls, rows: np.ndarray, failed: np.ndarray, c: float = 1.0) -> "QualityEstimator":
        """Fit on (n, features) rows and 0/1 outcomes; Platt scaling on 3-fold out-of-fold scores when each class
        has at least 3 examples (else the regression's own probabilities). ``c``: the inverse of the L2 penalty
        (1 was the best of 0.3, 1 and 3, with 3 or 5 knots, in 5-fold cross-validation on the bench's units)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows, failed = np.asarray(rows, np.float64), np.asarray(failed, np.int64)
        if len(set(failed.tolist())) < 2:
            raise ValueError("the estimator needs both failing and passing organs to learn from")
        n = len(FEATURES)
        low, high = rows[:, :n].min(0), rows[:, :n].max(0)
        terms = expand_terms(rows, low, high)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        model.fit(terms, failed)
        scaler, regression = model[0], model[1]
        params = {
            "low": low.tolist(),
            "high": high.tolist(),
            "mean": scaler.mean_.tolist(),
            "scale": np.where(scaler.scale_ > 0, scaler.scale_, 1.0).tolist(),
            "coef": regression.coef_[0].tolist(),
            "intercept": float(regression.intercept_[0]),
        }
        if min(np.bincount(failed, minlength=2)) >= 3:
            folds = StratifiedKFold(3, shuffle=True, random_state=0)
            logits = cross_val_predict(model, terms, failed, cv=folds, method="decision_function")
            platt = LogisticRegression(C=1e6, max_iter=1000).fit(logits.reshape(-1, 1), failed)
            params["a"], params["b"] = float(platt.coef_[0][0]), float(platt.intercept_[0])
        return cls(params)

    def params(self) -> Dict[str, object]:
        return {
            "low": self.low.tolist(),
            "high": self.high.tolist(),
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

    def _pushes(self, rows: np.ndarray) -> np.ndarray:
        """Each term's push on the logit, per row, against an average organ."""
        return (expand_terms(rows, self.low, self.high) - self.mean) / self.scale * self.coef

    def _chances(self, pushes: np.ndarray) -> np.ndarray:
        logits = pushes.sum(1) + self.intercept
        return 1.0 / (1.0 + np.exp(-(self.a * logits + self.b)))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """The calibrated probability of failing, per row."""
        return self._chances(self._pushes(rows)) if len(rows) else np.zeros(0)

    @staticmethod
    def _by_feature(pushes: np.ndarray) -> np.ndarray:
        """Terms' pushes (n, terms) summed per feature of :data:`FEATURES` (its spline terms together)."""
        return pushes[:, : len(FEATURES) * SPLINE_TERMS].reshape(len(pushes), len(FEATURES), SPLINE_TERMS).sum(2)

    def contributions(self, row: Sequence[float]) -> np.ndarray:
        """Each feature's push on the logit, against an average organ; one per :data:`FEATURES`."""
        return self._by_feature(self._pushes(np.asarray(row)[None]))[0]

    def predict(self, features: Mapping[int, Mapping[str, float]], top: int = 2) -> Dict[int, OrganQuality]:
        """Per organ: the probability that it fails and its ``top`` reasons (features that raise it, in words)."""
        organs = sorted(features)
        if not organs:
            return {}
        pushes = self._pushes(np.array([feature_vector(o, features[o]) for o in organs]))  # the splines once
        out = {}
        for organ, push, p in zip(organs, self._by_feature(pushes), self._chances(pushes)):
            order = [i for i in np.argsort(-push) if push[i] > 0.25][:top]
            out[organ] = OrganQuality(organ, float(p), [FEATURES[list(FEATURES)[i]] for i in order])
        return out

    def effects(self) -> Dict[str, float]:
        """How far each feature moves the logit from the low end of its learned range to the high end (signed), and
        each organ's weight (per standard deviation of its one-hot)."""
        n = len(FEATURES)
        out = {}
        for j, name in enumerate(FEATURES):
            terms = slice(j * SPLINE_TERMS, (j + 1) * SPLINE_TERMS)
            ends = spline_terms(np.array([self.low[j], self.high[j]]), self.low[j], self.high[j])
            low_end, high_end = ends / self.scale[terms] @ self.coef[terms]
            out[name] = float(high_end - low_end)
        for k, name in enumerate(ORGAN_FEATURES):
            out[name] = float(self.coef[n * SPLINE_TERMS + k])
        return out

    def largest(self, n: int = 5) -> List[Tuple[str, float]]:
        """The ``n`` features that move the logit the most over their learned range (signed), organs included."""
        effects = self.effects()
        order = sorted(effects, key=lambda name: -abs(effects[name]))[:n]
        return [(name, round(effects[name], 3)) for name in order]


def expected_failures(predicted: Mapping[int, OrganQuality]) -> float:
    """How many organs of the case are expected to fail: the sum of their probabilities."""
    return float(sum(q.p_fail for q in predicted.values()))
