"""Where a click model may change a label: one organ, in a box around the clicks.

A click refines one organ. Whatever the network predicts, the answer may only move that organ's voxels, only near
the clicks, and never touch another organ's voxels: a junior who fixes the pancreas must not find the duodenum
changed. :func:`click_box` bounds the region (which also bounds the inference, so a click stays interactive on a
large scan); :func:`merge_organ` writes the organ's new mask into the label under those rules.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

Box = Tuple[slice, slice, slice]


def click_box(voxels: Sequence[Sequence[int]], shape: Sequence[int], margin_mm: float, spacing: Sequence[float]) -> Box:
    """The box (z, y, x slices) around the clicked voxels, widened by ``margin_mm`` on each side and clipped to the
    volume.

    Raises:
        ValueError: no clicks, or a click outside the volume.
    """
    points = np.asarray(voxels, dtype=int)
    if points.size == 0:
        raise ValueError("no clicks")
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError("a click is three voxel indices")
    if (points < 0).any() or (points >= np.asarray(shape)).any():
        raise ValueError(f"a click lies outside the volume of {list(shape)} voxels")
    margin = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int)
    low = np.maximum(points.min(axis=0) - margin, 0)
    high = np.minimum(points.max(axis=0) + margin + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def merge_organ(label: np.ndarray, organ: int, organ_mask: np.ndarray, box: Box) -> np.ndarray:
    """The label with ``organ`` set to ``organ_mask`` inside ``box`` and nothing else changed.

    Inside the box, a voxel of the organ that the mask drops becomes background, and a background voxel the mask
    takes becomes the organ; a voxel of another organ stays that organ whatever the mask says. Outside the box every
    voxel stays.

    Args:
        label: the current label map (z, y, x).
        organ_mask: the organ's new mask, of the label's shape or of the box's.
    """
    out = label.copy()
    region = out[box]
    mask = organ_mask[box] if organ_mask.shape == label.shape else organ_mask
    if mask.shape != region.shape:
        raise ValueError(f"the organ's mask is {mask.shape}, the box {region.shape}")
    free = (region == 0) | (region == organ)  # what this organ may take or give back
    region[free & ~mask.astype(bool)] = 0
    region[free & mask.astype(bool)] = organ
    return out
