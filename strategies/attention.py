"""AbdomenAtlas-style attention: where a pre-label is probably wrong, per organ, from several models' soft outputs.

Per organ, four criteria mark voxels (AbdomenAtlas's ``create_attention.py`` has the first three):

* **disagreement**: the standard deviation of the models' probabilities above ``std_threshold`` (0.1);
* **entropy**: the models' mean binary entropy (in bits, 0..1) above ``entropy_threshold`` (0.05);
* **overlap**: one model calls the voxel this organ while another calls it a different organ;
* **prior**: the organ breaks the anatomical prior learned from final labels (:mod:`strategies.anatomy`).

The heat of a voxel is how many criteria fire there for its most-flagged organ (0-4). Within a level, voxels are
told apart by the networks' **doubt** (1 - the largest class probability of their mean): with the count alone many
voxels tie, and the graded heat (count + doubt) ranks the pre-label's wrong voxels above its right ones far better
(``make bench-attention``: voxel AUROC). It is saved for the viewers as a label-like volume of levels 0-14 (values
within the label ids, so every viewer shows it as a segmentation, hotter = higher): ``3 * count + doubt band``, the
bands being sure (top probability above 0.95), unsure (0.7-0.95) and doubtful (below 0.7). The case score is the
total attention in mL, with its per-criterion and per-organ parts kept so that a user can see why a case ranks
where it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from amoslabel.organs import ORGAN_BY_ID, ORGANS
from strategies.anatomy import AnatomyPrior, Violation, violations

CRITERIA = ("disagreement", "entropy", "overlap", "prior")
DOUBT_BANDS = (0.05, 0.3)  # doubt = 1 - top probability: below 0.05 sure, up to 0.3 unsure, above doubtful


@dataclass
class AttentionSettings:
    std_threshold: float = 0.1
    entropy_threshold: float = 0.05


@dataclass
class Attention:
    """A case's attention map and why: ``heat`` is (z, y, x) uint8, the rest is what the score is made of."""

    heat: np.ndarray
    score_ml: float
    per_criterion_ml: Dict[str, float]
    per_organ_ml: Dict[str, float]
    violations: List[Violation] = field(default_factory=list)
    doubt: Optional[np.ndarray] = None  # (z, y, x) float32: 1 - the top class probability of the networks' mean

    def graded(self) -> np.ndarray:
        """The heat with the doubt as a fraction within each level (float, 0 to < 5): the ranking of voxels."""
        return self.heat.astype(np.float32) + (0 if self.doubt is None else np.minimum(self.doubt, 0.999))

    def levels(self) -> np.ndarray:
        """The graded heat in 15 label-like levels (uint8 0-14): ``3 * criteria + doubt band``, what is saved."""
        doubt = np.zeros(self.heat.shape, np.float32) if self.doubt is None else self.doubt
        return (3 * self.heat.astype(np.uint8) + np.digitize(doubt, DOUBT_BANDS).astype(np.uint8)).astype(np.uint8)

    def components(self) -> Dict[str, object]:
        """The score and its parts, JSON-ready (what the queue shows as the priority's reason)."""
        return {
            "score_ml": round(self.score_ml, 3),
            "per_criterion_ml": {k: round(v, 3) for k, v in self.per_criterion_ml.items()},
            "per_organ_ml": {k: round(v, 3) for k, v in sorted(self.per_organ_ml.items(), key=lambda kv: -kv[1])},
            "violations": [
                {"organ": ORGAN_BY_ID[v.organ].name, "check": v.check, "detail": v.detail} for v in self.violations
            ],
        }

    def reason(self, top: int = 3) -> str:
        """One line for the queue: the biggest criteria and organs."""
        ranked = sorted(self.per_criterion_ml.items(), key=lambda kv: -kv[1])
        criteria = ", ".join(f"{k} {v:.1f}" for k, v in ranked if v > 0)
        organs = ", ".join(list(self.components()["per_organ_ml"])[:top])
        return f"attention {self.score_ml:.1f} mL ({criteria or 'none'}); most on {organs or '-'}"


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli(p), elementwise (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def attention(
    probabilities: Sequence[np.ndarray],
    reference: sitk.Image,
    prior: Optional[AnatomyPrior] = None,
    scan: Optional[sitk.Image] = None,
    settings: AttentionSettings = AttentionSettings(),
    entropy_from: Optional[Sequence[int]] = None,
) -> Attention:
    """The attention of one case.

    Args:
        probabilities: one (C, z, y, x) softmax per model (C = 16: background and the 15 organs), on the grid of
            ``reference``; a single model gives entropy (and prior) only.
        reference: the grid (and the label the prior is checked on: the argmax of the mean probabilities).
        prior: anatomical priors learned from final labels, if any yet.
        scan: the scan, for the body frame of the prior's position check.
        entropy_from: which members' entropy counts (default all). A smoothed atlas is uncertain everywhere by
            construction, so the scorer counts the networks' entropy only.
    """
    stack = np.stack([np.asarray(p, np.float32) for p in probabilities])  # (M, C, z, y, x)
    if stack.ndim != 5 or stack.shape[1] != len(ORGANS) + 1:
        raise ValueError(f"probabilities must be (C={len(ORGANS) + 1}, z, y, x) per model; got {stack.shape[1:]}")
    mean = stack.mean(axis=0)
    sharp = stack if entropy_from is None else stack[list(entropy_from)]
    hard = stack.argmax(axis=1)  # (M, z, y, x): each model's label
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    label = sitk.GetImageFromArray(mean.argmax(axis=0).astype(np.uint8))
    label.CopyInformation(reference)
    found: List[Violation] = []
    prior_map = np.zeros(mean.shape[1:], np.uint8)
    if prior is not None and prior.organs and mean.argmax(axis=0).any():
        found, prior_map = violations(prior, label, scan)
    flagged_organs = {v.organ for v in found}
    heat = np.zeros(mean.shape[1:], np.uint8)
    per_criterion = dict.fromkeys(CRITERIA, 0.0)
    per_organ: Dict[str, float] = {}
    for organ in ORGANS:
        c = organ.id
        near = (mean[c] > 0.01) | (hard == c).any(axis=0)  # only where this organ is in play at all
        if not near.any():
            continue
        masks = {
            "disagreement": (stack[:, c].std(axis=0) > settings.std_threshold) & near if len(stack) > 1 else None,
            "entropy": (binary_entropy(sharp[:, c]).mean(axis=0) > settings.entropy_threshold) & near
            if len(sharp)
            else None,
            "overlap": ((hard == c).any(axis=0) & ((hard != c) & (hard != 0)).any(axis=0)) if len(stack) > 1 else None,
            "prior": (prior_map.astype(bool) & (mean.argmax(axis=0) == c)) if c in flagged_organs else None,
        }
        organ_ml = 0.0
        organ_heat = np.zeros_like(heat)
        for name, mask in masks.items():
            if mask is None or not mask.any():
                continue
            organ_heat += mask.astype(np.uint8)
            ml = float(mask.sum()) * voxel_ml
            per_criterion[name] += ml
            organ_ml += ml
        if organ_ml:
            per_organ[organ.name] = organ_ml
            np.maximum(heat, organ_heat, out=heat)
    doubt = (1.0 - sharp.mean(axis=0).max(axis=0)).astype(np.float32) if len(sharp) else None
    return Attention(heat, sum(per_criterion.values()), per_criterion, per_organ, found, doubt)


def heat_image(result: Attention, reference: sitk.Image) -> sitk.Image:
    """The graded heat's levels (0-14) as a label-like image on the reference grid (saved under the tag
    ``attention``)."""
    image = sitk.GetImageFromArray(result.levels())
    image.CopyInformation(reference)
    return image
