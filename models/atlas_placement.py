"""Placing the atlas prior on a new scan and labelling it (see :mod:`models.atlas_prior`).

The scan has no organs to register to, so placement is a search over a per-axis scale and shift that maximises
how well the atlas's organ mass lands on tissue that can be an organ. The labelling then weights each organ's prior
probability by whether the voxel's intensity is plausible for an organ. All of it is deterministic and recorded.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from amoslabel.organs import NUM_CLASSES
from models.atlas_prior import Atlas, AxisAffine, oriented

log = logging.getLogger(__name__)

# Hounsfield ranges. Abdominal organs, vessels and fluid-filled organs lie in [-30, 250] HU on plain or contrast CT;
# fat is below, lung and gas far below, bone above.
CT_ORGAN_HU = (-30.0, 250.0)
CT_AIR_HU = -300.0
CT_BONE_HU = 350.0


@dataclass(frozen=True)
class PriorSettings:
    """How the prior labels a scan.

    Attributes:
        threshold: least weighted probability for an organ to be labelled.
        search_spacing_mm: grid on which the placement is searched.
        label_spacing_mm: grid on which labels are computed before going back to the input's grid.
        off_tissue_weight: how much an organ keeps of its probability on a voxel whose intensity cannot be an organ.
    """

    threshold: float = 0.3
    search_spacing_mm: float = 8.0
    label_spacing_mm: float = 3.0
    off_tissue_weight: float = 0.05


def _resampled(image: sitk.Image, spacing: float) -> sitk.Image:
    size = [max(int(round(n * s / spacing)), 1) for n, s in zip(image.GetSize(), image.GetSpacing())]
    origin = np.asarray(image.GetOrigin()) + (spacing - np.asarray(image.GetSpacing())) / 2.0
    low = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [spacing] * 3,
        image.GetDirection(),
        low,
        sitk.sitkFloat32,
    )


def grid_axes(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x, y and z of an LPS-oriented image's voxel columns, rows and slices: its voxels are their grid."""
    return tuple(o + np.arange(n) * s for o, n, s in zip(image.GetOrigin(), image.GetSize(), image.GetSpacing()))


def body_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """The patient's body: the largest connected bright region, with holes (lungs, bowel gas) filled per slice."""
    if modality == "ct":
        candidate = array > CT_AIR_HU
    else:
        positive = array[array > 0]
        cut = float(np.percentile(positive, 30)) * 0.5 if positive.size else 0.0
        candidate = array > cut
    labels, n = ndimage.label(candidate)
    if n == 0:
        return candidate
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def tissue_weights(array: np.ndarray, modality: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per voxel: a placement weight (+1 organ-like, -1 air/lung/bone/outside, -0.5 fat) and organ plausibility."""
    body = body_mask(array, modality)
    if modality == "ct":
        organ_like = body & (array >= CT_ORGAN_HU[0]) & (array <= CT_ORGAN_HU[1])
        hostile = ~body | (array < CT_AIR_HU) | (array > CT_BONE_HU)
    else:
        inside = array[body]
        bright = float(np.percentile(inside, 99)) if inside.size else 1.0
        organ_like = body & (array > 0.12 * bright)
        hostile = ~body | (array <= 0.06 * bright)
    weights = np.where(organ_like, 1.0, np.where(hostile, -1.0, -0.5)).astype(np.float32)
    return weights, organ_like


class AtlasPlacer:
    """Finds the :class:`AxisAffine` that puts the atlas's organ mass on organ-like tissue of a scan."""

    def __init__(self, atlas: Atlas, image: sitk.Image, modality: str, spacing_mm: float):
        coarse = _resampled(oriented(image), spacing_mm)
        array = sitk.GetArrayFromImage(coarse)
        self.weights, _ = tissue_weights(array, modality)
        body = body_mask(array, modality)
        self.axes = grid_axes(coarse)
        self.voxel_litres = float(np.prod(coarse.GetSpacing())) / 1e6
        self.atlas = atlas
        self.evaluations = 0
        # the body's bounding box (x, y, z), or the whole grid's where no body was found
        extent = [np.flatnonzero(body.any(axis=other)) for other in ((0, 1), (0, 2), (1, 2))]  # x, y, z indices
        extent = [found if body.any() else np.arange(len(axis)) for found, axis in zip(extent, self.axes)]
        self.body_lo = np.array([axis[found[0]] for axis, found in zip(self.axes, extent)])
        self.body_hi = np.array([axis[found[-1]] for axis, found in zip(self.axes, extent)])

    def score(self, fit: AxisAffine) -> float:
        """Tissue weight summed under the atlas's organ mass, per litre of expected organ volume (higher is better).

        A sum, not a mean: a mean is best when the atlas shrinks into the liver; a sum rewards covering all the
        organ-like tissue and pays for every voxel of air, fat or bone the organs land on.
        """
        self.evaluations += 1
        mass = 1.0 - self.atlas.sample_grid(fit.apply_axes(self.axes), [0])[0]
        return float((mass * self.weights.ravel()).sum()) * self.voxel_litres

    def search(self) -> Tuple[AxisAffine, float]:
        """Coarse scan of the head-foot position, then coordinate descent on shifts and scales."""
        centre = (self.body_lo + self.body_hi) / 2.0
        best, best_score = AxisAffine(), -np.inf
        # atlas frame 0 is the mean organ centroid: try putting it at every height inside the body, mid left-right
        # and mid front-back
        for z in np.arange(self.body_lo[2], self.body_hi[2] + 1e-6, 10.0):
            fit = AxisAffine((1.0, 1.0, 1.0), (-centre[0], -centre[1], -z))
            s = self.score(fit)
            if s > best_score:
                best, best_score = fit, s
        for step_mm, step_scale in ((16.0, 0.1), (8.0, 0.05), (4.0, 0.025)):
            improved = True
            while improved:
                improved = False
                for axis, sign in itertools.product(range(6), (-1, 1)):
                    candidate = _nudge(best, axis, sign, step_mm, step_scale)
                    if candidate is None:
                        continue
                    s = self.score(candidate)
                    if s > best_score + 1e-5:
                        best, best_score, improved = candidate, s, True
        return best, best_score


def _nudge(fit: AxisAffine, axis: int, sign: int, step_mm: float, step_scale: float) -> AxisAffine | None:
    scale, shift = list(fit.scale), list(fit.shift)
    if axis < 3:
        shift[axis] += sign * step_mm
    else:
        a = axis - 3
        new = scale[a] + sign * step_scale
        if not 0.8 <= new <= 1.25:
            return None
        # scale about the current centre so that a scale step does not also move the atlas
        shift[a] += (scale[a] - new) * (-shift[a] / scale[a])
        scale[a] = new
    return AxisAffine(tuple(scale), tuple(shift))


def label_with_prior(
    atlas: Atlas, image: sitk.Image, modality: str, settings: PriorSettings = PriorSettings()
) -> Tuple[sitk.Image, Dict[str, Any]]:
    """Label ``image`` with the atlas; returns the label on the input's exact grid and what was done."""
    placer = AtlasPlacer(atlas, image, modality, settings.search_spacing_mm)
    fit, score = placer.search()
    work = _resampled(oriented(image), settings.label_spacing_mm)
    array = sitk.GetArrayFromImage(work)
    _, organ_like = tissue_weights(array, modality)
    probabilities = atlas.sample_grid(fit.apply_axes(grid_axes(work)), list(range(NUM_CLASSES)))
    plausible = np.where(organ_like.ravel(), 1.0, settings.off_tissue_weight).astype(np.float32)
    organs = probabilities[1:] * plausible
    best = organs.argmax(0)
    labels = np.where(organs.max(0) >= settings.threshold, best + 1, 0).astype(np.uint8)
    label = sitk.GetImageFromArray(labels.reshape(array.shape))
    label.CopyInformation(work)
    restored = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    record = {
        "method": "atlas prior",
        "atlas": atlas.fingerprint,
        "atlas_sources": atlas.sources,  # the label maps the atlas was built from (label-only maps, final labels)
        "atlas_skipped": atlas.skipped,  # those it was given and could not use, each with why
        "placement": fit.to_json(),
        "placement_score": round(score, 4),
        "placement_evaluations": placer.evaluations,
        "modality": modality,
        "settings": settings.__dict__,
    }
    return restored, record
