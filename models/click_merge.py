"""Where a click model may change a label: one organ, in a box around the clicks (or the box the user drew).

A click refines one organ. Whatever the network predicts, the answer may only move that organ's voxels, only near
the clicks, and never touch another organ's voxels: a junior who fixes the pancreas must not find the duodenum
changed. :func:`click_box` bounds the region (which also bounds the inference, so a click stays interactive on a
large scan); :func:`merge_organ` writes an organ's new mask into the label under those rules, and
:func:`refine_organ` decides that mask from the network's answer and the clicks.

A click does what the junior asked and no more (:func:`refine_organ`): a foreground click only adds to the organ (the
region around it that the network thinks may be the organ), a background click only takes away (a false blob it
lands on, whole, or the part of the organ around it that the network doubts). The clicked voxel itself always obeys
the click.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

Box = Tuple[slice, slice, slice]  # (z, y, x)
Voxel = Tuple[int, int, int]  # (z, y, x)


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


#: A click tips the network's doubt its way: a foreground click takes voxels the network gives the organ at least
#: this probability (it may have put another class first), a background click takes away those it gives the organ
#: less than ``1 - CLICK_TIPS``.
CLICK_TIPS = 0.2


def refine_organ(
    label: np.ndarray,
    organ: int,
    network_probability: np.ndarray,
    positives: Sequence[Sequence[int]],
    negatives: Sequence[Sequence[int]],
    box: Box,
) -> np.ndarray:
    """The label after the clicks on ``organ``, changed inside ``box`` only (:func:`merge_organ`'s rules).

    * A foreground click adds the connected region, holding the click, of voxels (background or the organ, inside the
      box) to which the network gives the organ at least :data:`CLICK_TIPS`; and the clicked voxel itself.
    * A background click on a false blob of the organ (a connected part inside the box, smaller than the rest of the
      organ) removes it whole. On the organ itself it removes the connected region, holding the click, of the
      organ's voxels to which the network gives less than ``1 - CLICK_TIPS``; and the clicked voxel itself. So a
      click never wipes a small organ that lies whole inside the box.

    Args:
        label: the current label map (z, y, x).
        network_probability: the network's probability of the organ (a bool mask counts as 0 or 1), of the label's
            shape or of the box's.
        positives, negatives: clicked voxels (z, y, x) inside the box.
    """
    region = label[box]
    prob = network_probability[box] if network_probability.shape == label.shape else network_probability
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != region.shape:
        raise ValueError(f"the network's probability is {prob.shape}, the box {region.shape}")
    local = [[tuple(int(v) - b.start for v, b in zip(p, box)) for p in points] for points in (positives, negatives)]
    for point in local[0] + local[1]:
        if not all(0 <= v < n for v, n in zip(point, region.shape)):
            raise ValueError("a click lies outside the box")
    organ_now = region == organ
    free = (region == 0) | organ_now
    mask = organ_now.copy()
    # Each click acts on the region it lands in; the regions are found once, however many clicks (a scribble's or a
    # lasso's voxels are clicks too), and every click's rule reads the label as it was, so their order is no matter.
    grow, count = ndimage.label((prob >= CLICK_TIPS) & free)
    grown = {int(grow[p]) for p in local[0]} - {0} if count else set()
    if grown:
        mask |= np.isin(grow, sorted(grown))
    for point in local[0]:
        if free[point]:
            mask[point] = True
    parts, _ = ndimage.label(organ_now)
    inner_faces = _inner_faces(box, label.shape)
    # counted over the whole label only when a background click needs it: a foreground click stays cheap
    total = int((label == organ).sum()) if local[1] else 0
    by_part: dict = {}
    for point in local[1]:
        if parts[point]:
            by_part.setdefault(int(parts[point]), []).append(point)
    for part_id, points in by_part.items():
        part = parts == part_id
        if not _touches(part, inner_faces) and part.sum() < total - part.sum():
            mask &= ~part  # a false blob: an island, smaller than the rest of the organ
        else:
            doubt, _ = ndimage.label(part & (prob < 1 - CLICK_TIPS))
            doubted = {int(doubt[p]) for p in points} - {0}
            if doubted:
                mask &= ~np.isin(doubt, sorted(doubted))
    for point in local[1]:
        mask[point] = False
    return merge_organ(label, organ, mask, box)


#: Inside a box, the organ is where the network gives it at least this probability (its most likely class, for one
#: organ against the rest); where it gives no voxel that much, the click's own threshold (:data:`CLICK_TIPS`).
BOX_ORGAN = 0.5


def refine_in_box(label: np.ndarray, organ: int, network_probability: np.ndarray, box: Box) -> np.ndarray:
    """The label after a box drawn around ``organ``: inside the box the organ becomes the network's connected regions
    of it (:data:`BOX_ORGAN`) that are the largest, hold the box's centre or hold some of the organ now, replacing
    what the organ had there; outside the box nothing changes, and no voxel of another organ changes anywhere
    (:func:`merge_organ`'s rules). Where the network finds none of the organ in the box, the label stays as it was.

    Args:
        label: the current label map (z, y, x).
        network_probability: the network's probability of the organ, of the label's shape or of the box's.
        box: the user's box (z, y, x slices).
    """
    region = label[box]
    prob = network_probability[box] if network_probability.shape == label.shape else network_probability
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != region.shape:
        raise ValueError(f"the network's probability is {prob.shape}, the box {region.shape}")
    free = (region == 0) | (region == organ)
    centre = tuple((n - 1) // 2 for n in region.shape)
    for threshold in (BOX_ORGAN, CLICK_TIPS):
        parts, count = ndimage.label((prob >= threshold) & free)
        if count:
            sizes = ndimage.sum_labels(np.ones_like(parts), parts, index=np.arange(1, count + 1))
            # the largest region, the one at the box's centre, and every one that holds some of the organ now (an
            # organ in parts, the bowel's or the pancreas's, keeps its parts the network confirms)
            keep = {int(np.argmax(sizes)) + 1, int(parts[centre])} | set(np.unique(parts[region == organ]).tolist())
            return merge_organ(label, organ, np.isin(parts, sorted(keep - {0})), box)
    return label.copy()


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
