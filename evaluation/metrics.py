"""Per-organ segmentation metrics: Dice, IoU, pixel accuracy, normalised surface Dice (NSD) and HD95.

Surfaces follow DeepMind's ``surface-distance`` (and MONAI's ``use_subvoxels=True``): each 2x2x2 neighbourhood on
the boundary is a surface element whose area comes from the marching-cubes table at the real voxel spacing, and NSD
and HD95 weight distances by those areas. MONAI's default instead counts edge voxels, which gives other numbers.

Empty-organ policy (used for every mean in the project):
- an organ absent from both prediction and reference is left out: its scores are NaN and means skip it;
- an organ absent from exactly one of them scores 0 for Dice, IoU and NSD, and HD95 is the image diagonal in mm
  (the largest error possible on that grid), so a missed organ never looks better than a poor one.
Pixel accuracy is well defined either way and is always computed.

Speed: confusion counts come from one ``bincount`` over the volume; surfaces are computed on each organ's bounding
box; distances between surface points come from a k-d tree instead of a distance transform of the whole box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from amoslabel.errors import Unprocessable
from amoslabel.organs import MAX_LABEL_ID, ORGANS, Organ

METRICS: Tuple[str, ...] = ("dice", "nsd", "hd95", "iou", "accuracy")
_N = MAX_LABEL_ID + 1


@dataclass
class CaseScores:
    """Scores of one case: ``per_organ[metric][organ name]`` (NaN where the organ is absent from both)."""

    per_organ: Dict[str, Dict[str, float]] = field(default_factory=dict)
    overall_accuracy: float = math.nan

    def mean(self, metric: str) -> float:
        """Mean of ``metric`` over the organs where it is defined (AMOS's mDice for ``dice``)."""
        return nan_mean(self.per_organ[metric].values())


def nan_mean(values) -> float:
    """Mean of the non-NaN values, NaN when there are none."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def dice_of(prediction: np.ndarray, reference: np.ndarray, organ: int) -> float:
    """Dice of one organ (1.0 when it is absent from both)."""
    p, t = prediction == organ, reference == organ
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def confusion(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """16x16 confusion counts, ``[reference, prediction]``.

    Raises:
        Unprocessable: the maps differ in shape or hold ids outside 0-15.
    """
    if prediction.shape != reference.shape:
        raise Unprocessable(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    for name, array in (("prediction", prediction), ("reference", reference)):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > MAX_LABEL_ID:
            raise Unprocessable(f"{name} holds label ids {low}..{high}; AMOS ids are 0-{MAX_LABEL_ID}")
    # ids fit in 4 bits, so the pair fits in one byte and bincount never sees an int64 copy of the volume twice.
    pair = reference.astype(np.uint8, copy=False) * np.uint8(_N) + prediction.astype(np.uint8, copy=False)
    # order="K": label maps read from NIfTI are Fortran-ordered, and a C-order ravel would copy the volume
    return np.bincount(pair.ravel(order="K"), minlength=_N * _N).reshape(_N, _N).astype(np.int64)


# Marching-cubes triangle normals per 2x2x2 neighbourhood code (256 x 4 triangles x 3), copied from MONAI's
# ``_get_neighbour_code_to_normals_table`` (itself DeepMind's table; Apache-2.0) so that scoring does not pay
# MONAI's 6 s import. tests/evaluation checks it still equals MONAI's.
_NORMALS_FILE = Path(__file__).with_name("surface_normals.npy")


@lru_cache(maxsize=1)
def _normals() -> np.ndarray:
    return np.load(_NORMALS_FILE).astype(np.float64)


@lru_cache(maxsize=32)
def _surface_area_table(spacing: Tuple[float, float, float]) -> np.ndarray:
    """Surface area (mm^2) of the surface element of each neighbourhood code at ``spacing``."""
    sx, sy, sz = spacing
    scale = np.array([sy * sz, sx * sz, sx * sy])
    return np.linalg.norm(_normals() * scale, axis=-1).sum(-1)


def _surface(mask: np.ndarray, area_table: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Surface elements of a padded boolean mask: their cube positions (N, 3) and areas (N,).

    The code of the 2x2x2 cube at ``c`` weights corner ``c + (a, b, d)`` by ``128 >> (4a + 2b + d)``, the bit order
    of DeepMind's ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``.
    """
    m = mask.astype(np.uint8)
    code = np.zeros(tuple(s - 1 for s in m.shape), np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for d in (0, 1):
                corner = m[a : a + code.shape[0], b : b + code.shape[1], d : d + code.shape[2]]
                code |= corner << np.uint8(7 - (4 * a + 2 * b + d))
    border = (code != 0) & (code != 255)
    return np.argwhere(border), area_table[code[border]]


def _directed(points_from: np.ndarray, points_to: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    if len(points_to) == 0:
        return np.full(len(points_from), np.inf)
    distances, _ = cKDTree(points_to * spacing).query(points_from * spacing, k=1, workers=-1)
    return distances


def _area_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if len(distances) == 0:
        return math.inf
    order = np.argsort(distances)
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(distances) - 1)
    return float(distances[order][index])


def _joint_box(a: np.ndarray, b: np.ndarray) -> Tuple[slice, ...]:
    """The smallest box holding every true voxel of ``a`` and ``b`` (the whole array when both are empty)."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        along = np.flatnonzero(union.any(axis=tuple(other for other in range(union.ndim) if other != axis)))
        if len(along) == 0:
            return tuple(slice(None) for _ in union.shape)
        box.append(slice(int(along[0]), int(along[-1]) + 1))
    return tuple(box)


def surface_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> Tuple[float, float]:
    """NSD at ``tolerance_mm`` and area-weighted HD95 of two boolean masks (both non-empty).

    Cropping the masks to their joint bounding box first changes nothing and saves time.
    """
    # the joint bounding box, with one voxel of padding on each side so every boundary cube is seen (DeepMind crops
    # with the same padding)
    box = _joint_box(prediction, reference)
    pred = np.pad(prediction[box], 1)
    ref = np.pad(reference[box], 1)
    if np.array_equal(pred, ref):  # every surface point lies on the other surface (a final that no one edited)
        return 1.0, 0.0
    table = _surface_area_table(tuple(float(s) for s in spacing))
    step = np.asarray(spacing, dtype=np.float64)
    ref_points, ref_areas = _surface(ref, table)
    pred_points, pred_areas = _surface(pred, table)
    ref_to_pred = _directed(ref_points, pred_points, step)
    pred_to_ref = _directed(pred_points, ref_points, step)
    total = ref_areas.sum() + pred_areas.sum()
    within = ref_areas[ref_to_pred <= tolerance_mm].sum() + pred_areas[pred_to_ref <= tolerance_mm].sum()
    nsd = float(within / total) if total > 0 else math.nan
    hd95 = max(_area_percentile(ref_to_pred, ref_areas, 95), _area_percentile(pred_to_ref, pred_areas, 95))
    return nsd, hd95


def evaluate_case(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    organs: Sequence[Organ] = ORGANS,
    surface: bool = True,
) -> CaseScores:
    """All metrics for one case.

    Args:
        prediction: integer label map.
        reference: integer label map on the same grid.
        spacing: voxel spacing in mm along the array axes.
        organs: which organs to score.
        surface: False skips NSD and HD95 (NaN), for quick Dice-only validation.
    """
    counts = confusion(prediction, reference)
    total = counts.sum()
    scores = CaseScores(per_organ={m: {} for m in METRICS})
    scores.overall_accuracy = float(np.trace(counts) / total) if total else math.nan
    if surface:
        diagonal = float(np.linalg.norm(np.asarray(prediction.shape) * np.asarray(spacing, dtype=np.float64)))
        pred_boxes, ref_boxes = _organ_boxes(prediction), _organ_boxes(reference)
    for organ in organs:
        k = organ.id
        true_pos = counts[k, k]
        ref_n, pred_n = counts[k, :].sum(), counts[:, k].sum()
        union = ref_n + pred_n - true_pos
        out = scores.per_organ
        out["accuracy"][organ.name] = float((total - union + true_pos) / total) if total else math.nan
        if ref_n == 0 and pred_n == 0:
            for metric in ("dice", "nsd", "hd95", "iou"):
                out[metric][organ.name] = math.nan
            continue
        out["dice"][organ.name] = float(2 * true_pos / (ref_n + pred_n))
        out["iou"][organ.name] = float(true_pos / union)
        if not surface:
            out["nsd"][organ.name] = out["hd95"][organ.name] = math.nan
        elif ref_n == 0 or pred_n == 0:
            out["nsd"][organ.name], out["hd95"][organ.name] = 0.0, diagonal
        else:
            box = _union_box(pred_boxes[k - 1], ref_boxes[k - 1])
            nsd, hd95 = surface_scores(prediction[box] == k, reference[box] == k, spacing, organ.nsd_tolerance_mm)
            out["nsd"][organ.name], out["hd95"][organ.name] = nsd, hd95
    return scores


def _organ_boxes(labels: np.ndarray) -> List[Tuple[slice, ...] | None]:
    # find_objects walks memory in C order; NIfTI maps are Fortran-ordered, so walk the transposed view (3x faster)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        return [None if b is None else b[::-1] for b in ndimage.find_objects(labels.T, max_label=MAX_LABEL_ID)]
    return ndimage.find_objects(labels, max_label=MAX_LABEL_ID)


def _union_box(a: Tuple[slice, ...] | None, b: Tuple[slice, ...] | None) -> Tuple[slice, ...]:
    boxes = [x for x in (a, b) if x is not None]
    return tuple(slice(min(s[i].start for s in boxes), max(s[i].stop for s in boxes)) for i in range(3))


def mean_per_organ(cases: Sequence[CaseScores], metric: str) -> Dict[str, float]:
    """Each organ's mean of ``metric`` over the cases where it is defined."""
    names: List[str] = [o.name for o in ORGANS]
    return {name: nan_mean(c.per_organ[metric].get(name, math.nan) for c in cases) for name in names}


def mean_of(scores: Mapping[str, float]) -> float:
    """Mean over the organs whose score is defined."""
    return nan_mean(scores.values())
