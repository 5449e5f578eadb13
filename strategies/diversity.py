"""Diversity: k-center greedy over case descriptors, so that a batch does not pick ten look-alike scans.

A descriptor is what can be read from every scan cheaply and means the same for CT and MRI: modality, voxel
spacing, field of view, and intensity statistics inside the body. Features are standardised over the pool before
distances are taken, so no unit dominates.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

DESCRIPTOR = ("is_mri", "spacing_x", "spacing_y", "spacing_z", "fov_x", "fov_y", "fov_z", "p5", "p50", "p95", "std")


def describe(scan: sitk.Image, modality: str) -> Dict[str, float]:
    """The descriptor of one scan (intensities from a subsample of the voxels above the air threshold)."""
    array = sitk.GetArrayViewFromImage(scan)[::2, ::4, ::4].astype(np.float32)
    air = -500.0 if modality.lower() == "ct" else float(np.percentile(array, 50)) * 0.3
    body = array[array > air]
    body = body if body.size else array.ravel()
    spacing, size = scan.GetSpacing(), scan.GetSize()
    p5, p50, p95 = (float(v) for v in np.percentile(body, (5, 50, 95)))
    return {
        "is_mri": float(modality.lower() in ("mri", "mr")),
        **{f"spacing_{a}": float(s) for a, s in zip("xyz", spacing)},
        **{f"fov_{a}": float(s * n) for a, s, n in zip("xyz", spacing, size)},
        "p5": p5,
        "p50": p50,
        "p95": p95,
        "std": float(body.std()),
    }


def k_center_greedy(
    pool: Mapping[str, Sequence[float]], labelled: Sequence[str], k: int, first: Optional[str] = None
) -> List[str]:
    """``k`` ids of ``pool`` (id -> feature vector), each the farthest from everything chosen or labelled so far.

    With nothing labelled, ``first`` (or the pool's first id) starts the set.
    """
    ids = list(pool)
    if not ids or k <= 0:
        return []
    features = _standardise(pool, ids)
    index = {i: n for n, i in enumerate(ids)}
    centres = [index[i] for i in labelled if i in index]
    chosen: List[str] = []
    if not centres:
        start = index[first] if first in index else 0
        centres, chosen = [start], [ids[start]]
    nearest = np.min(np.linalg.norm(features[:, None, :] - features[None, centres, :], axis=2), axis=1)
    while len(chosen) < min(k, len(ids) - len(set(labelled) & set(ids))):
        nearest[[index[i] for i in chosen]] = -1
        nearest[[index[i] for i in labelled if i in index]] = -1
        pick = int(np.argmax(nearest))
        if nearest[pick] < 0:
            break
        chosen.append(ids[pick])
        nearest = np.minimum(nearest, np.linalg.norm(features - features[pick], axis=1))
    return chosen


def diversity_scores(pool: Mapping[str, Sequence[float]], labelled: Sequence[str]) -> Dict[str, float]:
    """Each unlabelled case's standardised distance to its nearest labelled case (larger: less like them)."""
    ids = list(pool)
    if not ids:
        return {}
    features = _standardise(pool, ids)
    known = [n for n, i in enumerate(ids) if i in set(labelled)]
    if not known:
        return {i: 1.0 for i in ids}
    distance = np.min(np.linalg.norm(features[:, None, :] - features[None, known, :], axis=2), axis=1)
    return {i: float(d) for i, d in zip(ids, distance) if i not in set(labelled)}


def _standardise(pool: Mapping[str, Sequence[float]], ids: List[str]) -> np.ndarray:
    features = np.array([list(pool[i]) for i in ids], np.float64)
    scale = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
