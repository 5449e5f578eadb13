"""Synthetic CT-like cases made from real label maps, for benchmarks and simulations that need many volumes.

They are not real scans: the anatomy is a real human label map (deformed), the intensities are drawn per organ
around typical contrast-CT Hounsfield units, with fat, a spine and noise. Every benchmark that uses them says so.

As in TorchIO, a random draw (:func:`draw_params`) records its parameters, and a deterministic function
(:func:`synthesise`) makes the case from them, so each case can be made again from its recorded parameters.

    python -m amoslabel synth --out DIR [--train 8 --test 3]
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from amoslabel.organs import ORGANS

log = logging.getLogger(__name__)

# Typical portal-venous-phase CT values (HU) per organ id; each case shifts them by its own random offsets.
ORGAN_HU: Dict[int, float] = {
    1: 110,
    2: 150,
    3: 150,
    4: 10,
    5: 45,
    6: 100,
    7: 35,
    8: 170,
    9: 130,
    10: 90,
    11: 50,
    12: 50,
    13: 45,
    14: 12,
    15: 45,
}
FAT_HU, AIR_HU, BONE_HU = -95.0, -1000.0, 450.0


@dataclass(frozen=True)
class SyntheticParams:
    """Everything a synthetic case depends on (besides its source label map)."""

    seed: int
    scale: Tuple[float, float, float]
    rotation_deg: float
    elastic_mm: float
    organ_hu_offsets: Tuple[float, ...]
    noise_hu: float
    spacing_mm: float


def draw_params(seed: int, spacing_mm: float = 3.0) -> SyntheticParams:
    """Draw a case's parameters (the only random step)."""
    rng = np.random.default_rng(seed)
    return SyntheticParams(
        seed=seed,
        scale=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)),
        rotation_deg=float(rng.uniform(-8, 8)),
        elastic_mm=float(rng.uniform(2, 8)),
        organ_hu_offsets=tuple(float(v) for v in rng.normal(0, 12, len(ORGANS))),
        noise_hu=float(rng.uniform(8, 20)),
        spacing_mm=spacing_mm,
    )


def synthesise(label: sitk.Image, params: SyntheticParams) -> Tuple[sitk.Image, sitk.Image]:
    """Make ``(image, label)`` from a real label map: deformed anatomy, CT-like intensities (deterministic)."""
    rng = np.random.default_rng(params.seed + 1)
    source = sitk.DICOMOrient(label, "LPS")
    size = [max(int(n * s / params.spacing_mm), 8) for n, s in zip(source.GetSize(), source.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([params.spacing_mm] * 3)
    grid.SetOrigin(source.GetOrigin())
    centre = np.asarray(source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()]))

    affine = sitk.AffineTransform(3)
    angle = np.deg2rad(params.rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine.SetMatrix((rotation @ np.diag(params.scale)).ravel().tolist())
    affine.SetCenter(centre.tolist())
    # smooth random displacement, params.elastic_mm at its largest, on a coarse grid
    coarse = [max(n // 8, 2) for n in size]
    field = rng.normal(size=coarse[::-1] + [3])
    field = ndimage.gaussian_filter(field, sigma=(1, 1, 1, 0))
    field *= params.elastic_mm / max(np.abs(field).max(), 1e-6)
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.SetSpacing([params.spacing_mm * n / c for n, c in zip(size, coarse)])
    displacement.SetOrigin(source.GetOrigin())
    dense = sitk.Resample(displacement, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(dense)])
    out_label = sitk.Resample(source, grid, composite, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    labels = sitk.GetArrayFromImage(out_label)
    image = _intensities(labels, params, rng)
    out_image = sitk.GetImageFromArray(image.astype(np.int16))
    out_image.CopyInformation(out_label)
    return out_image, out_label


def _intensities(labels: np.ndarray, params: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
    voxel = params.spacing_mm
    organs = labels > 0
    # body: a cylinder whose cross-section is the convex hull of every slice's organs, widened by ~40 mm
    from skimage.morphology import convex_hull_image

    footprint = ndimage.binary_dilation(organs.any(axis=0), iterations=max(int(40 / voxel), 1))
    body = np.broadcast_to(convex_hull_image(footprint), labels.shape)
    texture = ndimage.gaussian_filter(rng.normal(size=labels.shape), 3) * 60
    image = np.where(body, FAT_HU + texture, AIR_HU)
    for organ in ORGANS:
        image[labels == organ.id] = ORGAN_HU[organ.id] + params.organ_hu_offsets[organ.id - 1]
    _add_spine(image, labels, voxel)
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(scale=params.noise_hu, size=labels.shape)
    return np.clip(image, -1024, 3000)


def _add_spine(image: np.ndarray, labels: np.ndarray, voxel: float) -> None:
    aorta = np.argwhere(labels == 8)
    if len(aorta) == 0:
        return
    z_lo, z_hi = aorta[:, 0].min(), aorta[:, 0].max() + 1
    _, y, x = aorta.mean(0)
    yy, xx = np.mgrid[: labels.shape[1], : labels.shape[2]]
    # a vertebral body ~ 35 mm across, just behind (posterior, +y in LPS) the aorta
    disc = (yy - (y + 30 / voxel)) ** 2 + (xx - x) ** 2 <= (17 / voxel) ** 2
    image[z_lo:z_hi][:, disc & (labels[z_lo] == 0)] = BONE_HU


def write_split(
    sources: Dict[str, Path],
    out: Path,
    train: Sequence[str],
    test: Sequence[str],
    per_source: Dict[str, int],
    spacing_mm: float = 3.0,
    seed: int = 0,
) -> Dict[str, List[str]]:
    """Write an AMOS-layout dataset (imagesTr/labelsTr, imagesVa/labelsVa, dataset.json) of synthetic cases.

    Args:
        sources: real label maps by name.
        train / test: which sources feed the training and the evaluation split (keep them apart).
        per_source: how many cases to make from each source.
    """
    entries: Dict[str, List[Dict[str, object]]] = {"training": [], "validation": []}
    jobs = [(name, "Tr", i) for name in train for i in range(per_source[name])]
    jobs += [(name, "Va", i) for name in test for i in range(per_source[name])]
    for n, (name, split, _) in enumerate(tqdm(jobs, desc="synthesise", unit="case")):
        params = draw_params(seed * 1000 + n, spacing_mm)
        image, label = synthesise(sitk.ReadImage(str(sources[name])), params)
        case = f"synth_{n:04d}"
        for kind, volume in (("images", image), ("labels", label)):
            folder = out / f"{kind}{split}"
            folder.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(volume, str(folder / f"{case}.nii.gz"), useCompression=True)
        entries["training" if split == "Tr" else "validation"].append(
            {
                "image": f"./images{split}/{case}.nii.gz",
                "label": f"./labels{split}/{case}.nii.gz",
                "source_label_map": name,
                "params": asdict(params),
            }
        )
    spec = {
        "name": "AMOS Label synthetic split",
        "description": "SYNTHETIC: real AMOS/TotalSegmentator label maps, deformed, with CT-like intensities drawn "
        "per organ. Not real scans.",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(o.id): o.name for o in ORGANS}},
        "numTraining": len(entries["training"]),
        **entries,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    return {k: [Path(str(e["image"])).name for e in v] for k, v in entries.items()}
