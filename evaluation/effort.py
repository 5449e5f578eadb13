"""Estimated manual-correction time: how long a junior would take to turn a pre-label into the reference label.

Per organ, the geometry of the correction is counted (voxels to change, axial slices to edit, wrong contour length,
missed and false 3D pieces, slices only looked at) and turned into minutes by :class:`EffortModel`. The counts do
not depend on the model, so :meth:`EffortModel.minutes` can re-price them under :meth:`EffortModel.variants`.

Arrays are (z, y, x) label maps (SimpleITK's ``GetArrayFromImage`` order) with ``spacing_zyx`` in mm; axis 0 is the
axial slice the junior scrolls through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from amoslabel.organs import ORGANS, Organ

_CROSS = np.zeros((3, 3, 3), bool)  # 2D 4-neighbour erosion applied slice by slice (nothing along z)
_CROSS[1] = ndimage.generate_binary_structure(2, 1)
_FULL_3D = np.ones((3, 3, 3), bool)  # 26-connectivity for pieces


@dataclass(frozen=True)
class EffortModel:
    """Seconds per correction action. These are assumptions, not measurements.

    They were chosen so that drawing a large organ such as the liver from nothing on an AMOS CT lands near the
    30-60 minutes per organ per CT that AbdomenAtlas reports for annotation by hand (Qu et al., AbdomenAtlas-8K,
    NeurIPS 2023); on amos_0013 (0.78 mm x 5 mm) the liver from empty comes to 24 minutes, a little under. The model
    assumes every slice of an organ is drawn (no interpolation between slices), which favours neither a start from a
    pre-label nor a start from empty. A contour counts as wrong where it is farther from the other contour than the
    organ's NSD tolerance (``Organ.nsd_tolerance_mm``, amoslabel/organs.py; at least one in-plane voxel), as in
    Nikolov et al. 2021, who proposed the surface Dice as a proxy of the contour a person must correct; a slice that
    is mostly wrong is wiped and drawn anew, so correcting a slice never costs more contour than drawing it.

    Attributes:
        t_slice_s: 4 s per slice that needs an edit (go to the slice, look, pick the tool).
        draw_speed_mm_s: 10 mm/s of wrong contour traced or erased with a brush or contour tool (``inf``: free).
        t_piece_s: 10 s per 3D piece to delete (a false blob) or to start (a missed piece).
        t_check_s: 1 s per slice of the organ that is right (scrolled past and looked at).
    """

    t_slice_s: float = 4.0
    draw_speed_mm_s: float = 10.0
    t_piece_s: float = 10.0
    t_check_s: float = 1.0

    def minutes(self, effort: "OrganEffort") -> float:
        """The minutes this model gives to the counts of ``effort`` (its own ``minutes`` is ignored)."""
        seconds = (
            self.t_slice_s * effort.slices
            + effort.contour_mm / self.draw_speed_mm_s
            + self.t_piece_s * (effort.pieces_add + effort.pieces_remove)
            + self.t_check_s * effort.checked_slices
        )
        return seconds / 60

    @classmethod
    def variants(cls) -> Dict[str, "EffortModel"]:
        """The stated model and two extremes, to show how much a comparison depends on the constants:
        "slices only" (contour costs nothing) and "contour only" (only the contour length costs)."""
        stated = cls()
        return {
            "stated": stated,
            "slices only": replace(stated, draw_speed_mm_s=math.inf),
            "contour only": replace(stated, t_slice_s=0.0, t_piece_s=0.0, t_check_s=0.0),
        }


@dataclass
class OrganEffort:
    """The correction of one organ (or a sum of several, see :func:`total`).

    Attributes:
        voxels: voxels whose membership in the organ changes, count((pred == o) XOR (ref == o)).
        slices: axial slices with a contour wrong beyond the tolerance.
        checked_slices: slices where the organ is in the prediction or the reference and that need no edit.
        contour_mm: wrong contour length (to draw plus to erase) over the slices, in mm.
        pieces_add: 26-connected pieces of the reference that the prediction does not touch.
        pieces_remove: 26-connected pieces of the prediction that do not touch the reference.
        minutes: the estimated time under the model used.
    """

    voxels: int = 0
    slices: int = 0
    checked_slices: int = 0
    contour_mm: float = 0.0
    pieces_add: int = 0
    pieces_remove: int = 0
    minutes: float = 0.0

    def __add__(self, other: "OrganEffort") -> "OrganEffort":
        return OrganEffort(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def total(efforts: Iterable[OrganEffort]) -> OrganEffort:
    """The sum of several organs' (or cases') efforts."""
    return sum(efforts, OrganEffort())


def _box(a: Optional[Tuple[slice, ...]], b: Optional[Tuple[slice, ...]]) -> Tuple[slice, ...]:
    if a is None or b is None:
        return a or b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _far(points: np.ndarray, targets: np.ndarray, tolerance: float, sampling: Tuple[float, float]) -> int:
    """How many ``points`` pixels lie farther than ``tolerance`` mm from every ``targets`` pixel (one slice)."""
    if not points.any():
        return 0
    if not targets.any():
        return int(points.sum())
    distance = ndimage.distance_transform_edt(~targets, sampling=sampling)
    return int((distance[points] > tolerance).sum())


def _pieces_off(mask: np.ndarray, other: np.ndarray) -> int:
    """26-connected components of ``mask`` that share no voxel with ``other``."""
    labels, n = ndimage.label(mask, structure=_FULL_3D)
    if n == 0:
        return 0
    return n - int(np.count_nonzero(np.unique(labels[other & mask])))


def _organ_effort(pred: np.ndarray, ref: np.ndarray, sampling: Tuple[float, float], tolerance: float) -> OrganEffort:
    """The counts for one organ's boolean masks, already cropped to their joint box."""
    effort = OrganEffort(voxels=int(np.count_nonzero(pred ^ ref)))
    effort.pieces_add = _pieces_off(ref, pred)
    effort.pieces_remove = _pieces_off(pred, ref)
    edge_pred = pred & ~ndimage.binary_erosion(pred, _CROSS)  # border_value 0: a pixel on the crop edge is a
    edge_ref = ref & ~ndimage.binary_erosion(ref, _CROSS)  # boundary pixel, as it is in the full map
    wrong_pixels = 0
    for z in np.flatnonzero(pred.any(axis=(1, 2)) | ref.any(axis=(1, 2))):
        if np.array_equal(pred[z], ref[z]):
            wrong = 0
        else:
            wrong = _far(edge_ref[z], edge_pred[z], tolerance, sampling)  # to draw
            wrong += _far(edge_pred[z], edge_ref[z], tolerance, sampling)  # to erase
        if wrong:
            effort.slices += 1
            # a slice that is mostly wrong is wiped and drawn anew, never dearer than that; a slice where the organ
            # should not be at all is wiped in one action (the slice's own t_slice), whatever the blob's size
            wrong_pixels += min(wrong, int(np.count_nonzero(edge_ref[z])))
        else:
            effort.checked_slices += 1
    effort.contour_mm = wrong_pixels * float(np.mean(sampling))
    return effort


def correction_effort(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    model: EffortModel = EffortModel(),
    organs: Sequence[Organ] = ORGANS,
) -> Dict[int, OrganEffort]:
    """Per organ id, the effort to correct ``prediction`` into ``reference`` ((z, y, x) label maps).

    Organs absent from both maps are omitted (their effort is zero). A contour is wrong where it is farther from the
    other contour than the organ's tolerance, or than the in-plane voxel size if that is larger (nobody draws finer
    than a voxel). A slice's wrong contour counts at most its reference contour: a slice that is mostly wrong is
    wiped and drawn anew, never dearer than drawing it from empty; a slice where the organ should not be is wiped in
    one action (its ``t_slice``). The contour length is the number of wrong
    boundary pixels (mask minus its 4-neighbour erosion) times the mean in-plane spacing; for edges at an angle this
    undercounts the length (by about 10 % averaged over directions).

    Raises:
        ValueError: if the two maps differ in shape or are not 3D, or ``spacing_zyx`` is not three numbers.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if reference.ndim != 3 or len(spacing_zyx) != 3:
        raise ValueError(f"expected (z, y, x) maps and three spacings, got {reference.shape} and {spacing_zyx}")
    sampling = (float(spacing_zyx[1]), float(spacing_zyx[2]))
    n = max(int(prediction.max(initial=0)), int(reference.max(initial=0)), max((o.id for o in organs), default=0))
    boxes_pred = ndimage.find_objects(prediction.astype(np.int64, copy=False), n)
    boxes_ref = ndimage.find_objects(reference.astype(np.int64, copy=False), n)
    out: Dict[int, OrganEffort] = {}
    for organ in organs:
        box = _box(boxes_pred[organ.id - 1], boxes_ref[organ.id - 1])
        if box is None:
            continue
        # nobody draws finer than a voxel: on a coarse grid the tolerance is at least the in-plane voxel size
        tolerance = max(organ.nsd_tolerance_mm, max(sampling))
        effort = _organ_effort(prediction[box] == organ.id, reference[box] == organ.id, sampling, tolerance)
        effort.minutes = model.minutes(effort)
        out[organ.id] = effort
    return out


def empty_effort(
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    model: EffortModel = EffortModel(),
    organs: Sequence[Organ] = ORGANS,
) -> Dict[int, OrganEffort]:
    """The effort of drawing ``reference`` from an empty start (every slice of every organ drawn in full)."""
    return correction_effort(np.zeros_like(reference), reference, spacing_zyx, model, organs)
