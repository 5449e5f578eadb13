"""Anatomical priors learned from final labels, and the violations of them in a new label map.

Four checks per organ, each learned from the team's own consensus-final labels (so they work for CT and MRI alike):

* **volume**: outside the learned range, widened by ``volume_margin`` (few cases teach a narrow range);
* **components**: more connected pieces (of at least ``min_piece_ml``) than any final label had;
* **side**: right and left kidney, right and left adrenal gland (and spleen against liver) on the wrong sides;
* **position**: the centroid, in a frame of the body's bounding box, more than ``position_z`` standard deviations
  from where the organ usually is.

Coordinates are physical (LPS: x grows to the patient's left), so flips and oblique storage do not fool the side
check. The body is the scan's body mask when the scan is given, else the bounding box of all labelled organs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from amoslabel.organs import ORGANS

# (right-sided organ, left-sided organ): x of the first must be smaller (patient's right) in LPS
SIDE_PAIRS = ((2, 3), (11, 12), (6, 1))
CHECKS = ("volume", "components", "side", "position")


@dataclass
class OrganPrior:
    """What the final labels taught about one organ."""

    cases: int = 0
    volume_ml: Tuple[float, float] = (0.0, 0.0)  # smallest, largest seen
    max_pieces: int = 1
    centroid: Tuple[float, float, float] = (0.5, 0.5, 0.5)  # mean, in the body frame (0..1 per axis)
    centroid_sd: Tuple[float, float, float] = (0.1, 0.1, 0.1)


@dataclass
class AnatomyPrior:
    """Per-organ priors and the tolerances of the checks."""

    organs: Dict[int, OrganPrior] = field(default_factory=dict)
    volume_margin: float = 0.5  # accept [min * (1 - m), max * (1 + m)]
    min_piece_ml: float = 0.5
    position_z: float = 3.0
    min_sd: float = 0.05  # a body-frame sd floor: two cases cannot teach a tight spread

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        data["organs"] = {str(k): v for k, v in data["organs"].items()}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "AnatomyPrior":
        data = json.loads(Path(path).read_text())
        organs = {
            int(k): OrganPrior(
                cases=v["cases"],
                volume_ml=tuple(v["volume_ml"]),
                max_pieces=v["max_pieces"],
                centroid=tuple(v["centroid"]),
                centroid_sd=tuple(v["centroid_sd"]),
            )
            for k, v in data.pop("organs").items()
        }
        return cls(organs=organs, **data)


@dataclass
class OrganMeasure:
    volume_ml: float
    pieces: int
    centroid_mm: Tuple[float, float, float]
    centroid_in_body: Tuple[float, float, float]


def air_threshold(array: np.ndarray) -> float:
    """Intensity below which a voxel is outside the body: -500 HU when the scan has air in HU (CT), else a
    fraction of its typical tissue signal (MRI)."""
    return -500.0 if float(np.percentile(array, 1)) < -500 else float(np.percentile(array, 60)) * 0.3


def body_box(label: sitk.Image, scan: Optional[sitk.Image] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Physical (LPS) corners, low and high, of the body: the scan's body mask, or all labelled organs."""
    if scan is not None:
        array = sitk.GetArrayViewFromImage(scan)
        mask = sitk.GetImageFromArray((array > air_threshold(array)).astype(np.uint8))
        mask.CopyInformation(scan)
    else:
        mask = sitk.Cast(label > 0, sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        raise ValueError("the label map is empty: no body frame")
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    corners = [
        mask.TransformIndexToPhysicalPoint((x, y, z))
        for x in (x0, x0 + sx - 1)
        for y in (y0, y0 + sy - 1)
        for z in (z0, z0 + sz - 1)
    ]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def measure(label: sitk.Image, scan: Optional[sitk.Image] = None, min_piece_ml: float = 0.5) -> Dict[int, OrganMeasure]:
    """Volume, pieces and centroid (mm and body frame) of every organ present."""
    low, high = body_box(label, scan)
    span = np.maximum(high - low, 1e-3)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    label = sitk.Cast(label, sitk.sitkUInt8)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(label)
    out: Dict[int, OrganMeasure] = {}
    for organ in ORGANS:
        if not shapes.HasLabel(organ.id):
            continue
        centroid = np.array(shapes.GetCentroid(organ.id))
        pieces = sitk.ConnectedComponent(label == organ.id, True)
        sizes = sitk.LabelShapeStatisticsImageFilter()
        sizes.Execute(pieces)
        big = [n for n in sizes.GetLabels() if sizes.GetNumberOfPixels(n) * voxel_ml >= min_piece_ml]
        out[organ.id] = OrganMeasure(
            volume_ml=shapes.GetNumberOfPixels(organ.id) * voxel_ml,
            pieces=max(len(big), 1),
            centroid_mm=tuple(float(v) for v in centroid),
            centroid_in_body=tuple(float(v) for v in (centroid - low) / span),
        )
    return out


def learn(labels: Iterable[Tuple[sitk.Image, Optional[sitk.Image]]], **tolerances) -> AnatomyPrior:
    """An :class:`AnatomyPrior` from (final label, scan or None) pairs."""
    prior = AnatomyPrior(**tolerances)
    seen: Dict[int, List[OrganMeasure]] = {}
    for label, scan in labels:
        for organ_id, m in measure(label, scan, prior.min_piece_ml).items():
            seen.setdefault(organ_id, []).append(m)
    for organ_id, items in seen.items():
        centroids = np.array([m.centroid_in_body for m in items])
        sd = centroids.std(axis=0) if len(items) > 1 else np.zeros(3)
        prior.organs[organ_id] = OrganPrior(
            cases=len(items),
            volume_ml=(min(m.volume_ml for m in items), max(m.volume_ml for m in items)),
            max_pieces=max(m.pieces for m in items),
            centroid=tuple(float(v) for v in centroids.mean(axis=0)),
            centroid_sd=tuple(float(max(v, prior.min_sd)) for v in sd),
        )
    return prior


@dataclass
class Violation:
    organ: int
    check: str  # one of CHECKS
    detail: str


def violations(
    prior: AnatomyPrior, label: sitk.Image, scan: Optional[sitk.Image] = None
) -> Tuple[List[Violation], np.ndarray]:
    """What breaks the prior in ``label``, and a (z, y, x) uint8 map of the voxels concerned (1) for attention."""
    found = measure(label, scan, prior.min_piece_ml)
    array = sitk.GetArrayViewFromImage(label)
    flagged = np.zeros(array.shape, np.uint8)
    out: List[Violation] = []
    for organ_id, m in found.items():
        learned = prior.organs.get(organ_id)
        if learned is None:
            continue
        low, high = learned.volume_ml
        if not low * (1 - prior.volume_margin) <= m.volume_ml <= high * (1 + prior.volume_margin):
            out.append(Violation(organ_id, "volume", f"{m.volume_ml:.1f} mL; final labels had {low:.1f}-{high:.1f}"))
        if m.pieces > learned.max_pieces:
            out.append(Violation(organ_id, "components", f"{m.pieces} pieces; at most {learned.max_pieces} seen"))
        z = np.abs(np.array(m.centroid_in_body) - learned.centroid) / np.array(learned.centroid_sd)
        if float(z.max()) > prior.position_z:
            out.append(Violation(organ_id, "position", f"centroid {z.max():.1f} sd from its usual place"))
    for right, left in SIDE_PAIRS:
        if right in found and left in found and found[right].centroid_mm[0] > found[left].centroid_mm[0]:
            for organ_id in (right, left):
                out.append(Violation(organ_id, "side", "left and right swapped"))
    for v in out:
        flagged[array == v.organ] = 1
    return out, flagged
