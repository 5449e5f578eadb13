"""Deterministic preprocessing shared by inference and training, and the restoration of a prediction.

The pipeline, per the AMOS paper: read and check the volume, decide its modality, normalise intensities per
modality (CT: clip to [-991, 362] HU, minus 50, over 141; MRI: z-score over non-zero voxels), reorient to a canonical
axis order and resample to the plan's spacing. Geometry is handled by SimpleITK in physical coordinates, so the
prediction goes back to the input's exact grid (size, spacing, origin, direction) by resampling in physical space.

Arrays are kept in SimpleITK's ``z, y, x`` order; configuration speaks ``x, y, z`` and is reversed in one place
(:func:`zyx`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from amoslabel.config import ModalityPlan, Normalisation
from amoslabel.dicom.series import read_series, is_dicom_dir
from amoslabel.errors import InputError
from amoslabel.modality import ModalityEvidence, resolve_modality
from amoslabel.volume import Geometry, read_image, read_label

logger = logging.getLogger(__name__)

CANONICAL_ORIENTATION = "LPS"  # identity direction in ITK's physical space


def zyx(xyz: Sequence[float]) -> Tuple:
    """Configuration order (x, y, z) -> array order (z, y, x)."""
    return tuple(reversed(tuple(xyz)))


class LoadVolumed:
    """Read ``data['image']`` (a file or a DICOM series folder) and, if present, ``data['label']``, with checks.

    Adds ``image_geometry`` (the input's grid, used to restore the prediction) and keeps the SimpleITK images.
    """

    def __init__(self, max_voxels: int, with_label: bool = False):
        self.max_voxels = max_voxels
        self.with_label = with_label

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        path = d["image"]
        if not isinstance(path, str):
            raise InputError("image must be a path to a volume file or a DICOM series folder")
        image = read_series(path) if is_dicom_dir(path) else read_image(path, self.max_voxels)
        d["image_path"] = path
        d["image"] = image
        d["image_geometry"] = Geometry.of(image)
        if self.with_label:
            label = read_label(d["label"], self.max_voxels)
            reason = d["image_geometry"].mismatch(Geometry.of(label))
            if reason:
                raise InputError(f"label {d['label']}: {reason}", status=422)
            d["label_path"] = d["label"]
            d["label"] = label
        return d


class ResolveModalityd:
    """Set ``modality`` (ct|mri) and ``modality_source`` from the request, the case record, header, id or pixels."""

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        evidence = ModalityEvidence(
            case_id=str(d.get("case_id") or ""),
            path=str(d.get("image_path") or ""),
            requested=d.get("modality"),
            case_record=d.get("case_record") or {},
            image=d["image"],
        )
        d["modality"], d["modality_source"] = resolve_modality(evidence)
        return d


def normalise(array: np.ndarray, spec: Normalisation) -> Tuple[np.ndarray, Dict[str, float]]:
    """Apply one modality's normalisation; return float32 voxels and the parameters used (for replay)."""
    x = array.astype(np.float32, copy=True)
    if spec.kind == "ct_window":
        lo, hi = spec.window
        np.clip(x, lo, hi, out=x)
        x -= spec.mean
        x /= spec.std
        return x, {"kind": spec.kind, "low": lo, "high": hi, "mean": spec.mean, "std": spec.std}
    if spec.kind == "zscore_nonzero":
        mask = x != 0
        if not mask.any():
            return x, {"kind": spec.kind, "mean": 0.0, "std": 1.0}
        values = x[mask]
        mean, std = float(values.mean()), float(values.std())
        std = std if std > 1e-8 else 1.0
        x[mask] = (values - mean) / std
        return x, {"kind": spec.kind, "mean": mean, "std": std}
    raise ValueError(f"unknown normalisation {spec.kind!r}")


class NormaliseIntensityd:
    """Normalise ``image`` by its modality's rule; records the parameters in ``normalisation``."""

    def __init__(self, specs: Mapping[str, Normalisation]):
        self.specs = dict(specs)

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        image: sitk.Image = d["image"]
        values, params = normalise(sitk.GetArrayViewFromImage(image), self.specs[d["modality"]])
        out = sitk.GetImageFromArray(values)
        out.CopyInformation(image)
        d["image"] = out
        d["normalisation"] = params
        return d


def target_grid(geometry: Geometry, spacing_xyz: Sequence[float]) -> Geometry:
    """The grid at ``spacing_xyz`` covering the same field of view as ``geometry`` (same direction)."""
    old_sp = np.asarray(geometry.spacing)
    new_sp = np.asarray(spacing_xyz, dtype=float)
    size = np.maximum(np.round(np.asarray(geometry.size) * old_sp / new_sp), 1).astype(int)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    # Keep the outer edges of the field of view: voxel centres move by half the change in voxel size.
    origin = np.asarray(geometry.origin) + direction @ ((new_sp - old_sp) / 2.0)
    return Geometry(
        tuple(int(s) for s in size),
        tuple(float(s) for s in new_sp),
        tuple(float(o) for o in origin),
        geometry.direction,
    )


def resample(
    image: sitk.Image, grid: Geometry, interpolator: int, default: float = 0.0, pixel_type: int = sitk.sitkUnknown
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` in physical space."""
    return sitk.Resample(
        image, grid.size, sitk.Transform(), interpolator, grid.origin, grid.spacing, grid.direction, default, pixel_type
    )


class ResampleToPland:
    """Reorient to the canonical axis order and resample to the modality's plan spacing.

    Outputs channel-first arrays in ``z, y, x`` order: ``image`` float32 ``(1, Z, Y, X)``, ``label`` uint8, and
    ``grid``: the geometry of that array, which restoration needs.
    """

    def __init__(self, plans: Mapping[str, ModalityPlan]):
        self.plans = dict(plans)

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        plan = self.plans[d["modality"]]
        image = sitk.DICOMOrient(d["image"], CANONICAL_ORIENTATION)
        grid = target_grid(Geometry.of(image), plan.spacing)
        background = float(sitk.GetArrayViewFromImage(image).min())
        image = resample(image, grid, sitk.sitkLinear, background, sitk.sitkFloat32)
        d["image"] = sitk.GetArrayFromImage(image)[None]
        if isinstance(d.get("label"), sitk.Image):
            label = sitk.DICOMOrient(d["label"], CANONICAL_ORIENTATION)
            d["label"] = sitk.GetArrayFromImage(resample(label, grid, sitk.sitkNearestNeighbor))[None]
        d["grid"] = grid
        d["spacing"] = list(plan.spacing)
        return d


def restore_label(probabilities: torch.Tensor, grid: Geometry, original: Geometry, margin: int = 2) -> sitk.Image:
    """Map class probabilities on the network grid back to the input's exact grid and take the argmax.

    Probabilities are resampled linearly in physical space (as nnU-Net does), one organ at a time and only over the
    region where that organ wins on the network grid (its bounding box, widened by ``margin`` voxels): an organ
    cannot win outside it. Background needs no resampling: softmax probabilities sum to one, and linear
    interpolation keeps that, so background wins wherever one minus the organs' sum beats the best organ. This
    makes restoring onto a 512x512x300 grid cost a fraction of resampling all 16 channels over the whole volume.

    Args:
        probabilities: ``(C, Z, Y, X)`` softmax output on ``grid``.
        grid: the geometry of the network grid.
        original: the input image's geometry; the result has exactly this size, spacing, origin and direction.
        margin: network-grid voxels added around each organ's winning region.
    """
    probs = probabilities.detach().float().cpu().numpy()
    winner = probs.argmax(axis=0)
    shape = tuple(reversed(original.size))
    best = np.zeros(shape, dtype=np.float32)
    organ_sum = np.zeros(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for c in np.unique(winner):
        if c == 0:
            continue
        box = _network_box(winner == c, margin)
        out_box = _box_on_output(box, grid, original)
        if out_box is None:
            continue
        up = _resample_region(probs[c], box, grid, out_box, original)
        region = tuple(slice(lo, hi) for lo, hi in out_box)
        organ_sum[region] += up
        better = up > best[region]
        best[region][better] = up[better]
        label[region][better] = c
    label[(1.0 - organ_sum) >= best] = 0
    out = sitk.GetImageFromArray(label)
    original.apply_to(out)
    return out


def _network_box(mask: np.ndarray, margin: int) -> Tuple[Tuple[int, int], ...]:
    """(lo, hi) per array axis (z, y, x) of ``mask``'s bounding box, widened by ``margin`` and clipped."""
    box = []
    for axis, size in enumerate(mask.shape):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, size)))
    return tuple(box)


def _index_to_world(geometry: Geometry, index_zyx: np.ndarray) -> np.ndarray:
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + (index_zyx[:, ::-1] * np.asarray(geometry.spacing)) @ direction.T


def _world_to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    direction = np.asarray(geometry.direction).reshape(3, 3)
    xyz = ((points - np.asarray(geometry.origin)) @ direction) / np.asarray(geometry.spacing)
    return xyz[:, ::-1]


def _box_on_output(box, grid: Geometry, original: Geometry):
    """The output-grid box (z, y, x; hi exclusive) covering a network-grid box, or None when they do not meet."""
    corners = np.array(
        [
            [z, y, x]
            for z in (box[0][0] - 0.5, box[0][1] - 0.5)
            for y in (box[1][0] - 0.5, box[1][1] - 0.5)
            for x in (box[2][0] - 0.5, box[2][1] - 0.5)
        ],
        dtype=float,
    )
    on_output = _world_to_index(original, _index_to_world(grid, corners))
    size = np.asarray(tuple(reversed(original.size)))
    lo = np.clip(np.floor(on_output.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(on_output.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return None
    return tuple(zip(lo.tolist(), hi.tolist()))


def _resample_region(channel: np.ndarray, box, grid: Geometry, out_box, original: Geometry) -> np.ndarray:
    """Linearly resample the ``box`` part of one channel onto the ``out_box`` part of the output grid."""
    crop = sitk.GetImageFromArray(np.ascontiguousarray(channel[tuple(slice(lo, hi) for lo, hi in box)]))
    crop.SetSpacing(grid.spacing)
    crop.SetDirection(grid.direction)
    crop.SetOrigin(tuple(_index_to_world(grid, np.array([[lo for lo, _ in box]], dtype=float))[0]))
    start = np.array([[lo for lo, _ in out_box]], dtype=float)
    origin = tuple(_index_to_world(original, start)[0])
    size = [hi - lo for lo, hi in reversed(out_box)]
    up = sitk.Resample(
        crop,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        original.spacing,
        original.direction,
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(up)


class RestoreGeometryd:
    """Post-transform: ``pred`` (probabilities on the network grid) -> a label image on the input's grid."""

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        d["pred"] = restore_label(d["pred"], d["grid"], d["image_geometry"])
        return d


def preprocessing_summary(data: Mapping[str, Any]) -> Dict[str, Any]:
    """What was done to the input, recorded with the pre-label so that it can be replayed."""
    grid: Optional[Geometry] = data.get("grid")
    return {
        "modality": data.get("modality"),
        "modality_source": data.get("modality_source"),
        "normalisation": data.get("normalisation"),
        "orientation": CANONICAL_ORIENTATION,
        "spacing": data.get("spacing"),
        "network_grid_xyz": list(grid.size) if grid else None,
        "input_geometry": data["image_geometry"].to_json() if data.get("image_geometry") else None,
    }
