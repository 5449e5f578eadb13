"""Axial, coronal and sagittal PNG previews of a scan with its current label (and, when asked, the attention map)
overlaid, in the organ table's colours (:data:`amoslabel.organs.ORGANS`).

Volumes are reoriented to LPS, so every preview reads the radiological way (patient right on the left of an axial
slice, head up on coronal and sagittal ones), and scaled to their physical aspect. The last few volumes stay in
memory: a case page asks for three views at once, and again for each comment a reader clicks.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from matplotlib import colormaps
from PIL import Image, ImageDraw

from amoslabel.organs import ORGANS

VIEWS = ("axial", "coronal", "sagittal")
_ORGAN_RGB = np.zeros((256, 3), np.uint8)  # label value -> colour: the organ table's, as the viewer and SEGs use
for _organ in ORGANS:
    _ORGAN_RGB[_organ.id] = _organ.rgb
_HEAT = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
PREVIEW_PX = 384


@dataclass
class OrientedVolume:
    """A volume in LPS voxel order (z, y, x) with its spacing and the image that maps points to voxels."""

    array: np.ndarray
    spacing: Tuple[float, float, float]  # x, y, z (mm)
    image: sitk.Image
    source: sitk.Image  # one voxel with the file's own origin, spacing and direction

    def world_of_source_voxel(self, voxel: Sequence[float]) -> Tuple[float, float, float]:
        """The physical point (mm) of an (i, j, k) voxel index of the file as stored (what a viewer reports)."""
        return self.source.TransformContinuousIndexToPhysicalPoint([float(v) for v in voxel])

    def voxel_of(self, point_world: Sequence[float]) -> Tuple[int, int, int]:
        """The (x, y, z) voxel of a physical point (mm), clipped into the volume."""
        index = self.image.TransformPhysicalPointToContinuousIndex([float(v) for v in point_world])
        size = self.image.GetSize()
        return tuple(int(np.clip(round(i), 0, n - 1)) for i, n in zip(index, size))  # type: ignore[return-value]


class VolumeCache:
    """The last ``size`` volumes read, keyed by path and modification time."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: "OrderedDict[tuple, OrientedVolume]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> OrientedVolume:
        key = (str(path), Path(path).stat().st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        stored = sitk.ReadImage(str(path))
        source = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        source.CopyInformation(stored[:1, :1, :1])
        image = sitk.DICOMOrient(stored, "LPS")
        volume = OrientedVolume(sitk.GetArrayFromImage(image), image.GetSpacing(), image, source)
        with self._lock:
            self._items[key] = volume
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return volume


def window(array: np.ndarray, modality: str) -> np.ndarray:
    """Grey values 0-255: an abdominal CT window (W 400, L 40), or the 1st-99th percentile for MRI."""
    if modality == "CT":
        low, high = -160.0, 240.0
    else:
        low, high = (float(v) for v in np.percentile(array, (1, 99)))
    return (np.clip((array.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def default_centre(label: Optional[OrientedVolume], scan: OrientedVolume) -> Tuple[int, int, int]:
    """The (x, y, z) voxel at the centre of the labelled organs, or of the scan when nothing is labelled."""
    if label is not None and label.array.shape == scan.array.shape and label.array.any():
        z, y, x = (int(np.median(a)) for a in np.nonzero(label.array[::2, ::2, ::2]))
        return x * 2, y * 2, z * 2
    z, y, x = (n // 2 for n in scan.array.shape)
    return x, y, z


def render(
    scan: OrientedVolume,
    view: str,
    at: Tuple[int, int, int],
    modality: str,
    label: Optional[OrientedVolume] = None,
    attention: Optional[OrientedVolume] = None,
    mark: bool = False,
) -> bytes:
    """One view through voxel ``at`` (x, y, z) as PNG bytes; ``mark`` draws a cross at that voxel."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}")
    x, y, z = at
    sx, sy, sz = scan.spacing

    def cut(array: np.ndarray) -> np.ndarray:
        if view == "axial":
            return array[z]
        if view == "coronal":
            return array[::-1, y, :]
        return array[::-1, :, x]

    rgb = np.repeat(window(cut(scan.array), modality)[..., None], 3, axis=2).astype(np.float32)
    if label is not None and label.array.shape == scan.array.shape:
        ids = np.clip(cut(label.array), 0, 255).astype(np.uint8)
        inside = ids > 0
        rgb[inside] = 0.55 * rgb[inside] + 0.45 * _ORGAN_RGB[ids[inside]]
    if attention is not None and attention.array.shape == scan.array.shape:
        heat = cut(attention.array).astype(np.float32)
        peak = float(heat.max()) if heat.size else 0.0
        if peak > 0:
            level = heat / peak
            hot = level > 0.05
            colour = _HEAT[(level * 255).astype(np.uint8)]
            alpha = (0.25 + 0.5 * level[hot])[:, None]
            rgb[hot] = (1 - alpha) * rgb[hot] + alpha * colour[hot]
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    # physical aspect: columns and rows of each view in mm
    col_mm, row_mm = {"axial": (sx, sy), "coronal": (sx, sz), "sagittal": (sy, sz)}[view]
    width_mm, height_mm = picture.width * col_mm, picture.height * row_mm
    scale = PREVIEW_PX / max(width_mm, height_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    picture = picture.resize(size, Image.BILINEAR)
    if mark:
        top = scan.array.shape[0] - 1 - z
        column, row = {"axial": (x, y), "coronal": (x, top), "sagittal": (y, top)}[view]
        cx, cy = (column + 0.5) * col_mm * scale, (row + 0.5) * row_mm * scale
        draw = ImageDraw.Draw(picture)
        for dx, dy in ((1, 0), (0, 1)):
            draw.line([(cx - 12 * dx, cy - 12 * dy), (cx - 4 * dx, cy - 4 * dy)], fill=(0, 255, 255), width=2)
            draw.line([(cx + 4 * dx, cy + 4 * dy), (cx + 12 * dx, cy + 12 * dy)], fill=(0, 255, 255), width=2)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
