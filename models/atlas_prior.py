"""Probabilistic atlas prior: the cold-start pre-labeller, before any network has a trained version.

The course report's per-pixel class-frequency prior, made 3D and useful:

* **Build.** Every available label map (final labels, and label-only maps such as the real AMOS labels) is placed in
  one organ-normalised frame by a per-axis scale and shift fitted to its organ centroids (organs cut by the field of
  view are left out of the fit). One-hot counts are accumulated with the field of view each map covers, smoothed,
  and divided: ``P[organ](atlas voxel)``.
* **Apply.** A new scan has no organs to fit, so the atlas is placed by search: the per-axis scale and shift that
  put the atlas's organ mass on tissue that can be an organ (CT: soft-tissue Hounsfield units inside the body; MRI:
  signal inside the body), and off air, lung, fat and bone. Each voxel then takes its most probable organ, weighted
  by whether its intensity is plausible for an organ, when that probability passes a threshold.

Everything a prediction depends on (atlas fingerprint, fitted placement, threshold) is recorded with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from amoslabel.organs import MAX_LABEL_ID, NUM_CLASSES

log = logging.getLogger(__name__)

ORIENTATION = "LPS"
_OUTSIDE = 255  # label value for "outside this map's field of view"
UNPLACEABLE = "no organ lies wholly inside its field of view (each is cut by its first or last slice)"


@dataclass(frozen=True)
class AxisAffine:
    """``atlas = scale * physical + shift`` per axis (x, y, z); maps stay axis-aligned in LPS."""

    scale: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def apply(self, points_xyz: np.ndarray) -> np.ndarray:
        return points_xyz * np.asarray(self.scale) + np.asarray(self.shift)

    def apply_axes(self, axes_xyz: Sequence[np.ndarray]) -> Tuple[np.ndarray, ...]:
        """The map of a grid's x, y and z coordinates: an axis-aligned grid stays one."""
        return tuple(np.asarray(axis) * scale + shift for axis, scale, shift in zip(axes_xyz, self.scale, self.shift))

    def to_json(self) -> Dict[str, List[float]]:
        return {"scale": [round(v, 5) for v in self.scale], "shift": [round(v, 3) for v in self.shift]}


def oriented(image: sitk.Image) -> sitk.Image:
    """The image with identity direction (LPS), so index and physical axes coincide."""
    return sitk.DICOMOrient(image, ORIENTATION)


def _index_to_physical(image: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    return np.asarray(image.GetOrigin()) + index_zyx[..., ::-1] * np.asarray(image.GetSpacing())


def organ_centroids(label: sitk.Image) -> Dict[int, np.ndarray]:
    """Physical centroid (x, y, z) of each organ that the field of view does not cut in z."""
    array = sitk.GetArrayViewFromImage(label)
    counts = _label_histograms(np.asarray(array))  # per axis (z, y, x): (length, organ) voxel counts
    totals = counts[0].sum(axis=0)
    out = {}
    for organ in range(1, MAX_LABEL_ID + 1):
        z = counts[0][:, organ]
        if totals[organ] == 0 or z[0] or z[-1]:
            continue  # absent, or truncated by the first/last slice: its centroid would be biased
        centre = [np.dot(np.arange(len(c)), c[:, organ]) / totals[organ] for c in counts]
        out[organ] = _index_to_physical(label, np.asarray(centre, dtype=float))
    return out


def _label_histograms(array: np.ndarray) -> List[np.ndarray]:
    """For each axis of a (z, y, x) label array, the voxel count of each id (0-15) at each position along it:
    ``[(Z, 16), (Y, 16), (X, 16)]``, one slice at a time (no array of the volume's size beyond the labels)."""
    n = MAX_LABEL_ID + 1
    ids = np.asarray(array, dtype=np.uint8)
    if ids.size and ids.max() > MAX_LABEL_ID:
        ids = np.where(ids > MAX_LABEL_ID, 0, ids)  # not an organ id: counted as background
    _, ny, nx = ids.shape
    along = [np.zeros((len(ids), n), np.int64), np.zeros((ny, n), np.int64), np.zeros((nx, n), np.int64)]
    row_key = np.arange(ny, dtype=np.int64)[:, None] * n  # (position along the axis, id) as one bin number
    col_key = np.arange(nx, dtype=np.int64)[None, :] * n
    for z, plane in enumerate(ids):
        along[0][z] = np.bincount(plane.ravel(), minlength=n)[:n]
        along[1] += np.bincount((row_key + plane).ravel(), minlength=ny * n).reshape(ny, n)
        along[2] += np.bincount((col_key + plane).ravel(), minlength=nx * n).reshape(nx, n)
    return along


def fit_axis_affine(source: Dict[int, np.ndarray], target: Dict[int, np.ndarray]) -> AxisAffine:
    """Least-squares per-axis scale and shift taking ``source`` centroids onto ``target`` ones.

    With fewer than 3 shared organs, or an implausible scale, only the shift is fitted.
    """
    common = sorted(set(source) & set(target))
    if not common:
        return AxisAffine()
    src = np.stack([source[k] for k in common])
    dst = np.stack([target[k] for k in common])
    scale, shift = np.ones(3), dst.mean(0) - src.mean(0)
    if len(common) >= 3:
        for axis in range(3):
            s, t = np.polyfit(src[:, axis], dst[:, axis], 1)
            if 0.75 <= s <= 1.33:
                scale[axis], shift[axis] = s, t
    return AxisAffine(tuple(float(v) for v in scale), tuple(float(v) for v in shift))


@dataclass
class Atlas:
    """Per-organ probabilities on an axis-aligned grid in the organ-normalised frame.

    Attributes:
        probabilities: ``(16, Z, Y, X)`` uint8, probability x 255 (channel 0 is background).
        origin: atlas coordinate (x, y, z) of voxel 0.
        spacing: voxel size (x, y, z), in atlas units (mm of the reference anatomy).
        sources: names of the label maps it was built from.
        skipped: label maps it was given but could not use, each with why (e.g. every organ cut by its field of view).
    """

    probabilities: np.ndarray
    origin: Tuple[float, float, float]
    spacing: Tuple[float, float, float]
    sources: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.probabilities.tobytes())
        digest.update(json.dumps([self.origin, self.spacing]).encode())
        return digest.hexdigest()[:16]

    def sample_grid(self, axes_xyz: Sequence[np.ndarray], channels: Sequence[int]) -> np.ndarray:
        """Probabilities (len(channels), Z * Y * X) on the grid of atlas coordinates ``axes_xyz`` (its x, y and z),
        flattened in array order (z, y, x); linear, 0 outside the atlas (background 1).

        An axis-aligned grid makes trilinear interpolation separable: three small matrix products per channel
        instead of interpolating every point (the placement search scores hundreds of placements per scan).
        """
        weights, inside = [], []
        for axis, origin, spacing, n in zip(axes_xyz, self.origin, self.spacing, self.probabilities.shape[:0:-1]):
            matrix, valid = _axis_weights((np.asarray(axis) - origin) / spacing, n)
            weights.append(matrix)
            inside.append(valid)
        wx, wy, wz = weights
        out = np.empty((len(channels), len(wz), len(wy), len(wx)), np.float32)
        outside = ~(inside[2][:, None, None] & inside[1][None, :, None] & inside[0][None, None, :])
        for i, c in enumerate(channels):
            volume = self.probabilities[c]
            along_z = (wz @ volume.reshape(len(volume), -1)).reshape(len(wz), *volume.shape[1:])  # (K, Y, X)
            out[i] = (wy @ along_z) @ wx.T  # (K, J, X), then (K, J, I)
            out[i][outside] = 255.0 if c == 0 else 0.0
        return out.reshape(len(channels), -1) / 255.0

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            probabilities=self.probabilities,
            origin=np.asarray(self.origin),
            spacing=np.asarray(self.spacing),
            sources=np.asarray(json.dumps(self.sources)),
            skipped=np.asarray(json.dumps(self.skipped)),
        )
        # a name of this writer's own: two servers of a team may save the same atlas at once
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Atlas":
        with np.load(path) as z:
            return cls(
                z["probabilities"],
                tuple(float(v) for v in z["origin"]),
                tuple(float(v) for v in z["spacing"]),
                json.loads(str(z["sources"])),
                json.loads(str(z["skipped"])) if "skipped" in z.files else {},
            )


def _axis_weights(index: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Linear interpolation at fractional ``index`` along an axis of ``n`` samples, as a (len(index), n) matrix,
    and which indices lie in [0, n - 1] (the others take the constant outside value, as in ``map_coordinates``)."""
    inside = (index >= 0) & (index <= n - 1)
    low = np.clip(np.floor(index), 0, max(n - 2, 0)).astype(np.int64)
    fraction = index - low
    matrix = np.zeros((len(index), n), np.float32)
    rows = np.arange(len(index))
    matrix[rows, low] = 1.0 - fraction
    if n > 1:
        matrix[rows, low + 1] += fraction
    matrix[~inside] = 0.0
    return matrix, inside


def build_atlas(labels: Sequence[Tuple[str, sitk.Image]], spacing_mm: float = 4.0, smoothing_mm: float = 6.0) -> Atlas:
    """Build the atlas from named label maps (at least one, each with some organ uncut by its field of view).

    A map with no organ wholly inside its field of view (a thin slab: every organ cut by its first or last slice) has
    nothing to place it by: it is left out, named in the log and in :attr:`Atlas.skipped`.

    Raises:
        ValueError: no usable label map.
    """
    maps = [(name, oriented(image)) for name, image in labels]
    centroids = {name: organ_centroids(image) for name, image in maps}
    usable = [(n, im) for n, im in maps if len(centroids[n]) >= 1]
    skipped = {n: UNPLACEABLE for n, _ in maps if not centroids[n]}
    for name in skipped:
        log.warning("atlas: label map %s left out: %s", name, UNPLACEABLE)
    if not usable:
        raise ValueError(f"no label map has an organ inside its field of view ({', '.join(skipped)})")
    # reference: the map with the most organs; then one group-wise pass towards the mean placement
    reference = max(usable, key=lambda m: len(centroids[m[0]]))[0]
    fits = {n: fit_axis_affine(centroids[n], centroids[reference]) for n, _ in usable}
    mean_target = _mean_centroids({n: {k: fits[n].apply(p) for k, p in centroids[n].items()} for n, _ in usable})
    centre = np.mean(np.stack(list(mean_target.values())), axis=0)
    mean_target = {k: p - centre for k, p in mean_target.items()}
    fits = {n: fit_axis_affine(centroids[n], mean_target) for n, _ in usable}

    lo, hi = _atlas_bounds(usable, fits)
    fine = spacing_mm / 2.0
    size = np.ceil((hi - lo) / spacing_mm).astype(int) * 2
    counts = np.zeros((NUM_CLASSES,) + tuple(size[::-1] // 2), np.float32)
    coverage = np.zeros(counts.shape[1:], np.float32)
    for name, image in usable:
        fine_labels = _resample_to_atlas(image, fits[name], lo, fine, size)
        coverage += _block_sum(fine_labels != _OUTSIDE)
        present = np.flatnonzero(np.bincount(fine_labels.ravel(), minlength=256)[1:NUM_CLASSES]) + 1
        for organ, count in zip(present, _block_counts(fine_labels, present)):
            counts[organ] += count  # channel 0 (background) is not counted: it is what the organs leave
    sigma = smoothing_mm / spacing_mm
    coverage = ndimage.gaussian_filter(coverage, sigma)
    probabilities = np.zeros_like(counts)
    for organ in range(1, NUM_CLASSES):
        smoothed = ndimage.gaussian_filter(counts[organ], sigma)
        probabilities[organ] = np.divide(smoothed, coverage, out=np.zeros_like(smoothed), where=coverage > 1e-3)
    probabilities[0] = np.clip(1.0 - probabilities[1:].sum(0), 0.0, 1.0)
    left_out = f"; {len(skipped)} left out ({', '.join(skipped)})" if skipped else ""
    log.info(
        "atlas built from %d label maps (%s)%s, grid %s",
        len(usable), ", ".join(n for n, _ in usable), left_out, size // 2,
    )  # fmt: skip
    return Atlas(
        np.round(np.clip(probabilities, 0, 1) * 255).astype(np.uint8),
        tuple(float(v) for v in lo + spacing_mm / 2 - fine / 2),
        (spacing_mm,) * 3,
        [n for n, _ in usable],
        skipped,
    )


def _mean_centroids(placed: Dict[str, Dict[int, np.ndarray]]) -> Dict[int, np.ndarray]:
    organs = sorted({k for c in placed.values() for k in c})
    return {k: np.mean(np.stack([c[k] for c in placed.values() if k in c]), axis=0) for k in organs}


def _atlas_bounds(maps, fits) -> Tuple[np.ndarray, np.ndarray]:
    corners = []
    for name, image in maps:
        size = np.asarray(image.GetSize()) - 1
        for c in np.stack(np.meshgrid(*[[0, s] for s in size], indexing="ij"), -1).reshape(-1, 3):
            corners.append(fits[name].apply(_index_to_physical(image, c[::-1].astype(float))))
    corners = np.stack(corners)
    lo, hi = corners.min(0), corners.max(0)
    # a label map's field of view can be a whole-body scan; the abdomen needs no more than 600 mm per axis
    middle = (lo + hi) / 2
    return np.maximum(lo, middle - 300), np.minimum(hi, middle + 300)


def _resample_to_atlas(image, fit: AxisAffine, lo, spacing, size) -> np.ndarray:
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetOrigin([float(v) for v in lo])
    reference.SetSpacing([float(spacing)] * 3)
    # output (atlas) point a -> input point p = (a - shift) / scale
    transform = sitk.AffineTransform(3)
    scale = np.asarray(fit.scale)
    transform.SetMatrix([float(v) for v in np.diag(1.0 / scale).ravel()])
    transform.SetTranslation([float(v) for v in -np.asarray(fit.shift) / scale])
    out = sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, _OUTSIDE, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _block_sum(mask: np.ndarray) -> np.ndarray:
    """How many of each 2x2x2 block's voxels are set (a mask on the fine grid, summed onto the atlas grid)."""
    return _block_counts(mask.view(np.uint8), [1])[0]


def _block_counts(fine_labels: np.ndarray, values: Sequence[int]) -> List[np.ndarray]:
    """For each value, how many of each 2x2x2 block's voxels hold it (float32, on the atlas grid).

    The eight voxels of a block are eight strided views of the fine grid: a value's count is the sum of eight
    comparisons of those views, with no copy of the grid (one pass of ``reshape(...).sum`` per value was most of the
    build's time).
    """
    z, y, x = (s // 2 for s in fine_labels.shape)
    offsets = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
    corners = [fine_labels[dz : 2 * z : 2, dy : 2 * y : 2, dx : 2 * x : 2] for dz, dy, dx in offsets]
    out = []
    for value in values:
        count = np.zeros((z, y, x), np.uint8)
        for corner in corners:
            count += corner == value
        out.append(count.astype(np.float32))
    return out
