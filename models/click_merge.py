"""Where a click model may change a label: one organ, in a box around the clicks.

A click refines one organ. Whatever the network predicts, the answer may only move that organ's voxels, only near
the clicks, and never touch another organ's voxels: a junior who fixes the pancreas must not find the duodenum
changed. :func:`click_box` bounds the region (which also bounds the inference, so a click stays interactive on a
large scan); :func:`merge_organ` writes an organ's new mask into the label under those rules, and
:func:`refine_organ` decides that mask from the network's answer and the clicks.

A click does what the junior asked and no more (:func:`refine_organ`): a foreground click only adds to the organ (the
network's region that holds the click), a background click only takes away (a false blob it lands on, whole, or the
part of the organ around it that the network rejects). Where the network disagrees with the click, the click still
acts: on the region of like intensity around it (SimpleITK's confidence-connected region growing, as Slicer's
seed-growing tools do), so no click is lost on a network that has not learned clicks yet. The clicked voxel itself
always obeys the click.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

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


def refine_organ(
    label: np.ndarray,
    organ: int,
    network_mask: np.ndarray,
    positives: Sequence[Sequence[int]],
    negatives: Sequence[Sequence[int]],
    box: Box,
    image: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The label after the clicks on ``organ``, changed inside ``box`` only (:func:`merge_organ`'s rules).

    * A foreground click adds the connected region of ``network_mask`` (inside the box, on voxels that are background
      or the organ) that holds the click, and the clicked voxel itself; when the network does not hold a click on
      background, the background region of like intensity around it (with ``image``).
    * A background click on the organ removes the organ's connected part that holds it when that part lies inside
      the box (a false blob, whole); when the part reaches past the box (the organ itself), it removes the voxels of
      that part, inside the box, that ``network_mask`` rejects, or when the network keeps the clicked voxel, the
      region of like intensity around it (with ``image``). The clicked voxel is never the organ.

    Args:
        label: the current label map (z, y, x).
        network_mask: where the network puts the organ, of the label's shape or of the box's.
        positives, negatives: clicked voxels (z, y, x) inside the box.
        image: the scan's intensities in the box (the box's shape), for clicks the network disagrees with.
    """
    region = label[box]
    net = (network_mask[box] if network_mask.shape == label.shape else network_mask).astype(bool)
    if net.shape != region.shape:
        raise ValueError(f"the network's mask is {net.shape}, the box {region.shape}")
    local = [[tuple(int(v) - b.start for v, b in zip(p, box)) for p in points] for points in (positives, negatives)]
    for point in local[0] + local[1]:
        if not all(0 <= v < n for v, n in zip(point, region.shape)):
            raise ValueError("a click lies outside the box")
    organ_now = region == organ
    free = (region == 0) | organ_now
    mask = organ_now.copy()
    grow, count = ndimage.label(net & free)
    for point in local[0]:
        if count and grow[point]:
            mask |= grow == grow[point]
        elif image is not None and region[point] == 0:  # a missed part: grow over background only
            mask |= like_intensity(image, point, region == 0)
        if free[point]:
            mask[point] = True
    parts, _ = ndimage.label(organ_now)
    inner_faces = _inner_faces(box, label.shape)
    for point in local[1]:
        if parts[point]:
            part = parts == parts[point]
            if not _touches(part, inner_faces):
                mask &= ~part
            elif net[point] and image is not None:
                mask &= ~like_intensity(image, point, part)
            else:
                mask &= ~(part & ~net)
        mask[point] = False
    return merge_organ(label, organ, mask, box)


def like_intensity(image: np.ndarray, seed: Tuple[int, ...], allowed: np.ndarray) -> np.ndarray:
    """The connected region of ``allowed`` voxels around ``seed`` whose intensity is like the seed's neighbourhood
    (SimpleITK ``ConfidenceConnected``: mean +/- 2.5 standard deviations, re-estimated twice; holes filled)."""
    volume = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    grown = sitk.ConfidenceConnected(
        volume,
        seedList=[tuple(int(v) for v in reversed(seed))],
        numberOfIterations=2,
        multiplier=2.5,
        initialNeighborhoodRadius=1,
        replaceValue=1,
    )
    # noise leaves single voxels out of a region of like intensity: its holes are filled
    region = ndimage.binary_fill_holes(sitk.GetArrayFromImage(grown).astype(bool)) & allowed
    parts, _ = ndimage.label(region)
    return parts == parts[seed] if parts[seed] else np.zeros_like(region)


def _inner_faces(box: Box, shape: Sequence[int]) -> list:
    """The box's faces that lie inside the volume (a face on the volume's edge bounds nothing)."""
    faces = []
    for axis, (s, n) in enumerate(zip(box, shape)):
        if s.start > 0:
            faces.append((axis, 0))
        if s.stop < n:
            faces.append((axis, -1))
    return faces


def _touches(part: np.ndarray, faces: list) -> bool:
    return any(np.take(part, index, axis=axis).any() for axis, index in faces)
