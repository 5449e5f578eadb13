"""Soft predictions of one case from each scoring member, on one shared grid.

Members are the served networks with a trained version (through their own infer task's preprocessing, so a version
gets the spacing and normalisation it was trained with) and the atlas prior. The shared grid is the first network's
plan grid (canonical orientation); without a trained network it is the scan resampled to ``fallback_mm``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from amoslabel.organs import NUM_CLASSES
from amoslabel.volume import Geometry
from models.atlas_placement import AtlasPlacer, PriorSettings, tissue_weights, grid_axes
from models.atlas_prior import Atlas, oriented
from models.infer_task import SegmentationInferTask
from models.preprocessing import CANONICAL_ORIENTATION, resample, target_grid

log = logging.getLogger(__name__)


@dataclass
class MemberOutput:
    name: str
    probabilities: np.ndarray  # (C, z, y, x) on the shared grid
    version: Optional[int] = None


def grid_image(grid: Geometry) -> sitk.Image:
    """An empty image with a grid's geometry (a resampling reference)."""
    return grid.apply_to(sitk.Image([int(v) for v in grid.size], sitk.sitkUInt8))


def onto(probabilities: np.ndarray, source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Resample (C, z, y, x) probabilities from the ``source`` grid onto the ``target`` grid, linearly."""
    if source.GetSize() == target.GetSize() and np.allclose(source.GetOrigin(), target.GetOrigin()):
        return probabilities
    out = []
    for channel in probabilities:
        image = sitk.GetImageFromArray(channel.astype(np.float32))
        image.CopyInformation(source)
        out.append(sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, 0.0)))
    return np.stack(out)


def prior_probabilities(atlas: Atlas, scan: sitk.Image, modality: str, target: sitk.Image) -> np.ndarray:
    """The atlas prior's class probabilities (background = what the organs leave) on the ``target`` grid."""
    settings = PriorSettings()
    fit, _ = AtlasPlacer(atlas, scan, modality, settings.search_spacing_mm).search()
    scan32 = sitk.Cast(oriented(scan), sitk.sitkFloat32)
    work = sitk.Resample(scan32, target, sitk.Transform(), sitk.sitkLinear, -1000.0)
    array = sitk.GetArrayFromImage(work)
    _, organ_like = tissue_weights(array, modality)
    organs = atlas.sample_grid(fit.apply_axes(grid_axes(work)), list(range(NUM_CLASSES)))[1:]
    organs = organs * np.where(organ_like.ravel(), 1.0, settings.off_tissue_weight)[None]
    organs = np.clip(organs, 0.0, 1.0)
    total = organs.sum(axis=0)
    organs = organs / np.maximum(total, 1.0)  # never more than certain in all
    background = 1.0 - organs.sum(axis=0)
    return np.concatenate([background[None], organs]).reshape((NUM_CLASSES,) + array.shape).astype(np.float32)


NetworkPrediction = Tuple[str, np.ndarray, Geometry, int]  # (model, probabilities on its grid, that grid, version)


def case_members(
    scan_path: str,
    modality: str,
    networks: Dict[str, SegmentationInferTask],
    atlas: Optional[Atlas],
    fallback_mm: float = 4.0,
) -> tuple:
    """Every member's probabilities on the shared grid; returns (outputs, grid image, scan on that grid)."""
    predictions = []
    for name, task in networks.items():
        if task.store.champion() is None:
            continue
        probabilities, grid, version = task.probabilities(scan_path, modality)
        predictions.append((name, probabilities, grid, version))
    return assemble_members(predictions, scan_path, modality, atlas, fallback_mm)


def assemble_members(
    predictions: Sequence[NetworkPrediction],
    scan_path: str,
    modality: str,
    atlas: Optional[Atlas],
    fallback_mm: float = 4.0,
) -> tuple:
    """The networks' predictions put on one grid (the first network's), with the atlas prior's beside them.

    Split from :func:`case_members` so that a cohort run predicts on its model workers and assembles on CPU workers.
    """
    outputs: List[MemberOutput] = []
    reference: Optional[sitk.Image] = None
    for name, probabilities, grid, version in predictions:
        source = grid_image(grid)
        if reference is None:
            reference = source
        outputs.append(MemberOutput(name, onto(probabilities, source, reference), version))
    scan = sitk.ReadImage(scan_path)
    if reference is None:
        oriented_scan = sitk.DICOMOrient(scan, CANONICAL_ORIENTATION)
        reference = grid_image(target_grid(Geometry.of(oriented_scan), [fallback_mm] * 3))
    if atlas is not None:
        outputs.append(MemberOutput("prior", prior_probabilities(atlas, scan, modality, reference)))
    canonical = sitk.DICOMOrient(scan, CANONICAL_ORIENTATION)
    scan_on_grid = resample(canonical, Geometry.of(reference), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    return outputs, reference, scan_on_grid
