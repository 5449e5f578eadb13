"""Reading, checking and writing 3D volumes, so that bad files fail early with a message a person can act on.

Everything that reads an image or a label map from a user goes through :func:`read_image` or :func:`read_label`:
the header is checked before any voxel is allocated (dimensionality, size, spacing), then the voxels (finite
intensities; label ids within 0-15). Writes are atomic: a temporary file, fsync, then a rename.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from amoslabel.errors import InputError, TooLarge, Unprocessable
from amoslabel.files import atomic_destination, check_complete, full_disk_refused
from amoslabel.organs import MAX_LABEL_ID

NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
DEFAULT_MAX_VOXELS = 512 * 512 * 1200  # storage.max_image_voxels of apps.yaml; the config passes its own
MIN_EDGE_VOXELS = 2
# The byte budget of a volume: max_voxels voxels of this many bytes (an int16 CT). A wider voxel type gets fewer voxels
# (a float64 volume a quarter of them): what a reader allocates, and what processing copies, grows with the bytes.
BUDGET_BYTES_PER_VOXEL = 2
# bytes per voxel of what SimpleITK reads, for files whose header is not NIfTI's
_ITK_BYTES = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkUInt64: 8,
    sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}

# Geometry is compared with these tolerances: label maps written by other tools round spacing and origin.
_SPACING_RTOL = 1e-3
_ORIGIN_ATOL_MM = 1e-2
_DIRECTION_ATOL = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels are in physical space (ITK/LPS convention), with axes in x, y, z order."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def mismatch(self, other: "Geometry") -> Optional[str]:
        """Why ``other`` is not on this grid, or None when it is."""
        if self.size != other.size:
            return f"size {list(other.size)} differs from the image's {list(self.size)}"
        if not np.allclose(self.spacing, other.spacing, rtol=_SPACING_RTOL, atol=0):
            return f"spacing {_fmt(other.spacing)} differs from the image's {_fmt(self.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=_ORIGIN_ATOL_MM):
            return f"origin {_fmt(other.origin)} differs from the image's {_fmt(self.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=_DIRECTION_ATOL):
            return "direction cosines differ from the image's"
        return None

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> "Geometry":
        """The geometry in a volume file's header (the pixels are not read)."""
        reader = read_header(path)
        return cls(
            tuple(int(s) for s in reader.GetSize()),
            tuple(float(s) for s in reader.GetSpacing()),
            tuple(float(o) for o in reader.GetOrigin()),
            tuple(float(d) for d in reader.GetDirection()),
        )

    def index_of(self, point_mm) -> Optional[Tuple[int, int, int]]:
        """The (x, y, z) voxel holding a physical point (mm, LPS), rounded as ITK rounds; None outside the volume."""
        probe = self.apply_to(sitk.Image([1, 1, 1], sitk.sitkUInt8))  # ITK's transform, without the pixels
        index = tuple(probe.TransformPhysicalPointToIndex([float(v) for v in point_mm]))
        return index if all(0 <= i < n for i, n in zip(index, self.size)) else None  # type: ignore[return-value]

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry's spacing, origin and direction on ``image`` (same size)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_json(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def read_image(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> sitk.Image:
    """Read a 3D scan and check it; float32 or the file's integer type.

    Raises:
        InputError: unreadable, corrupt or truncated (400); TooLarge (413); Unprocessable (422) for not 3D,
            bad spacing, or NaN/Inf intensities.
    """
    name = name or Path(path).name
    image = _read_checked(path, max_voxels, name)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # non-NIfTI formats keep NaN; checked here
        bad = int((~np.isfinite(array)).sum())
        raise Unprocessable(f"{name}: {bad} voxel(s) are NaN or infinite; a scan must have finite intensities")
    return image


def read_label(
    path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None, max_id: int = MAX_LABEL_ID
) -> sitk.Image:
    """Read a label map and check its ids are AMOS ids (0-15; 0-``max_id`` for another numbering, at most 255);
    returned as uint8.

    Raises:
        InputError: as :func:`read_image`, and Unprocessable (422) for ids outside 0-15 or non-integer values.
    """
    if not 0 < max_id <= 255:
        raise ValueError(f"max_id {max_id}: label maps are read as uint8, ids 0-255")
    name = name or Path(path).name
    image = _read_checked(path, max_voxels, name)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise Unprocessable(f"{name}: a label map must hold whole numbers (organ ids 0-{max_id})")
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > max_id:
        outside = np.unique(array[(array < 0) | (array > max_id)])[:10]
        which = f"the AMOS ids 0-{max_id}" if max_id == MAX_LABEL_ID else f"0-{max_id}"
        raise Unprocessable(f"{name}: label ids {[int(v) for v in outside]} are outside {which}")
    if image.GetPixelID() != sitk.sitkUInt8:
        image = sitk.Cast(image, sitk.sitkUInt8)
    return image


def read_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """Read only the header of a volume file; the pixels are not loaded."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


class OffGrid(Unprocessable):
    """422: a label map that is not on its image's grid. ``reason`` says which part of the geometry differs."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}; a label must be on its image's grid")
        self.reason = reason


def check_on_grid(grid: Geometry | str | os.PathLike, label: sitk.Image, name: str) -> sitk.Image:
    """``label`` stamped with ``grid``'s exact geometry, once it is on that grid within tolerance.

    Args:
        grid: the image's geometry, or the path of the image (only its header is read).
        label: a label map read with :func:`read_label`.
        name: how the label is named in the message, e.g. ``label for amos_0001``.

    Raises:
        OffGrid: the label's size, spacing, origin or direction differs from the grid's.
    """
    if not isinstance(grid, Geometry):
        grid = Geometry.of(read_header(grid))
    reason = grid.mismatch(Geometry.of(label))
    if reason:
        raise OffGrid(name, reason)
    return grid.apply_to(label)


def read_label_on_grid(
    grid: Geometry | str | os.PathLike, path: str | os.PathLike, max_voxels: int, name: str, max_id: int = MAX_LABEL_ID
) -> sitk.Image:
    """A label map for an image, on the image's exact grid: its header's grid is checked against the image's before a
    voxel is read (a label off the grid costs no memory), then :func:`read_label` and :func:`check_on_grid`.

    Raises:
        OffGrid: the header's size, spacing, origin or direction differs from the grid's; and as :func:`read_label`.
    """
    if not isinstance(grid, Geometry):
        grid = Geometry.of(read_header(grid))
    try:
        header = read_header(path)
    except RuntimeError:
        header = None  # not readable as an image: read_label says why
    if header is not None and header.GetDimension() == 3:
        reason = grid.mismatch(Geometry.of(header))
        if reason:
            raise OffGrid(name, reason)
    return check_on_grid(grid, read_label(path, max_voxels, name, max_id), name)


def onto_grid(
    grid: Geometry, label: sitk.Image, name: str, tolerance_mm: float = 1.0
) -> Tuple[sitk.Image, Optional[str]]:
    """Like :func:`check_on_grid`, but a label on another grid over the same physical region (corners within
    ``tolerance_mm``, e.g. an axis stored flipped) is resampled onto ``grid`` by physical coordinates.

    Returns:
        The label on ``grid``, and a note of the resampling (None when none was needed).
    """
    try:
        return check_on_grid(grid, label, name), None
    except OffGrid as off:
        if not np.allclose(_corners(grid), _corners(Geometry.of(label)), atol=tolerance_mm):
            raise Unprocessable(f"{name}: {off.reason}, and it does not cover the same physical region") from None
        reference = grid.apply_to(sitk.Image(list(grid.size), sitk.sitkUInt8))
        moved = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return moved, f"resampled onto the image grid by physical coordinates ({off.reason})"


def _corners(g: Geometry) -> np.ndarray:
    """The 8 corner voxel centres of a grid in mm, rounded and sorted (so two grids over one region compare equal)."""
    direction = np.asarray(g.direction).reshape(3, 3)
    size = np.asarray(g.size) - 1
    points = []
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                idx = np.array([i, j, k]) * size * np.asarray(g.spacing)
                points.append(np.asarray(g.origin) + direction @ idx)
    return np.array(sorted(map(tuple, np.round(points, 2))))


def _read_checked(path: str | os.PathLike, max_voxels: int, name: str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: no such file", status=404)
    if path.stat().st_size == 0:
        raise InputError(f"{name}: the file is empty")
    if path.name.endswith(NIFTI_SUFFIXES):
        size, spacing = _check_nifti(path, max_voxels, name)
    else:
        try:
            header = read_header(path)
        except RuntimeError as e:
            raise InputError(f"{name}: not a readable image file ({_without(path, _itk_reason(e))})") from None
        if header.GetNumberOfComponents() != 1:
            raise Unprocessable(f"{name}: {header.GetNumberOfComponents()} components per voxel; one is required")
        size, spacing = list(header.GetSize()), list(header.GetSpacing())
        _check_shape(size, spacing, max_voxels, name, _ITK_BYTES.get(header.GetPixelID(), 8))
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{name}: corrupt or truncated image data ({_without(path, _itk_reason(e))})") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return image


def _check_shape(size, spacing, max_voxels: int, name: str, bytes_per_voxel: int = 1) -> None:
    """Refuse, from the header alone, what is not a 3D volume or exceeds the voxel or byte budget."""
    size = list(size)
    while len(size) > 3 and size[-1] == 1:  # a 4D file with one time point is a 3D volume
        size.pop()
    if len(size) < 3 or min(size) < 1:
        raise Unprocessable(f"{name}: a {len(size)}D image of size {size}; a 3D volume is required")
    if len(size) > 3:
        raise Unprocessable(f"{name}: a {len(size)}D image of size {size}; a 3D volume is required, not a series")
    if min(size) < MIN_EDGE_VOXELS:  # one voxel, or one slice: nothing a 3D segmentation can be drawn on
        raise Unprocessable(f"{name}: size {size}; a 3D volume needs at least {MIN_EDGE_VOXELS} voxels along each axis")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > max_voxels:
        raise TooLarge(f"{name}: {voxels:,} voxels is more than the limit of {max_voxels:,}")
    budget = max_voxels * BUDGET_BYTES_PER_VOXEL
    if voxels * bytes_per_voxel > budget:
        raise TooLarge(
            f"{name}: {voxels:,} voxels of {bytes_per_voxel} bytes is {voxels * bytes_per_voxel / 2**20:,.0f} MB, more "
            f"than the limit of {budget / 2**20:,.0f} MB (store the scan as int16, a label map as uint8)"
        )
    if not all(np.isfinite(s) and s > 0 for s in list(spacing)[:3]):
        raise Unprocessable(f"{name}: spacing {[float(s) for s in list(spacing)[:3]]} must be positive and finite")


def _check_nifti(path: Path, max_voxels: int, name: str):
    """Checks ITK's NIfTI reader skips: it turns zero spacing into 1, NaN into 0, and reads truncated files."""
    try:
        nii = nib.load(str(path))
        header = nii.header
        shape = [int(s) for s in header.get_data_shape()]
    except Exception as e:  # nibabel raises several types for a damaged header
        raise InputError(f"{name}: not a readable NIfTI file: {_nifti_reason(path, e)}") from None
    spacing = [float(p) for p in _raw_pixdim(path)[1 : 1 + min(len(shape), 3)]]
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "uif":
        raise Unprocessable(f"{name}: voxel type {dtype} is not a scalar number")
    _check_shape(shape, spacing, max_voxels, name, dtype.itemsize)
    expected = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    _check_complete(path, expected, name)
    if dtype.kind == "f":
        data = np.asanyarray(nii.dataobj)
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise Unprocessable(f"{name}: {bad} voxel(s) are NaN or infinite; a scan must have finite intensities")
    return shape, spacing


def _raw_pixdim(path: Path) -> np.ndarray:
    """pixdim as stored: nibabel's loader silently replaces a zero spacing by 1."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        block = fh.read(540)
    for order in ("<", ">"):
        size = int(np.frombuffer(block[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return nib.Nifti1Header(block[:348], endianness=order, check=False)["pixdim"]
        if size == 540:
            return nib.Nifti2Header(block[:540], endianness=order, check=False)["pixdim"]
    raise InputError(f"{path.name}: not a NIfTI-1 or NIfTI-2 header")


def _check_complete(path: Path, expected_bytes: int, name: str) -> None:
    """Raise if the file (after gunzip) is shorter than its header says, or its gzip stream is damaged."""
    if not path.name.endswith(".gz"):
        if path.stat().st_size < expected_bytes:
            raise InputError(f"{name}: truncated: {path.stat().st_size:,} bytes, the header needs {expected_bytes:,}")
        return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(f"{name}: corrupt or truncated gzip data ({e})") from None
    if total < expected_bytes:
        raise InputError(f"{name}: truncated: {total:,} bytes of data, the header needs {expected_bytes:,}")


def _without(path: Path, message: str) -> str:
    """A reader's message without the file's path on this server (an upload's is a temporary file: the user's name
    for it, given separately, is what they recognise)."""
    for form in {str(path), str(Path(path).resolve())}:
        message = message.replace(form, "the file")
    return message


# What nibabel's messages mean to a person who saved a file from a viewer (its own words name internals)
_NIFTI_REASONS = (
    ("not a gzip file", "it is named .gz but is not gzip-compressed; save it again as .nii.gz"),
    ("Not a gzipped file", "it is named .gz but is not gzip-compressed; save it again as .nii.gz"),
    ("Cannot work out file type", "it is not a NIfTI image; save it again as .nii.gz"),
    ("Header size", "its header is not a NIfTI header; save it again as .nii.gz"),
    ("sizeof_hdr", "its header is not a NIfTI header; save it again as .nii.gz"),
)


def _nifti_reason(path: Path, error: Exception) -> str:
    """Why nibabel could not read ``path``, in plain words where the message is a known one, else its own."""
    message = _without(path, str(error))
    for known, plain in _NIFTI_REASONS:
        if known in message:
            return plain
    return message[:200]


def _itk_reason(error: RuntimeError) -> str:
    # ITK messages span many lines with source paths; keep the line that says what went wrong.
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if "Description:" in ln:
            return ln.split("Description:", 1)[1].strip()[:200]
    return (lines[-1] if lines else "unknown error")[:200]


def write_atomic(
    image: sitk.Image, dest: str | os.PathLike, scratch_dir: str | os.PathLike | None = None, compress: bool = True
) -> Path:
    """Write ``image`` to ``dest`` so that ``dest`` is either absent or complete, never half-written."""
    suffix = next((s for s in VOLUME_SUFFIXES if Path(dest).name.endswith(s)), Path(dest).suffix)
    with atomic_destination(dest, scratch_dir, suffix) as tmp:  # the suffix tells ITK the file format
        write_image(image, tmp, compress)
    return Path(dest)


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """``sitk.WriteImage``, then a check that the file is whole (ITK leaves a truncated file on a full disk without
    failing: :func:`amoslabel.files.check_complete`); a full disk raises :class:`~amoslabel.errors.StorageFull`."""
    with full_disk_refused():
        sitk.WriteImage(image, str(path), useCompression=compress)
        voxels = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
        check_complete(path, 0 if compress else voxels)  # compressed inside (NRRD): its size says nothing


def strip_volume_suffix(filename: str) -> str:
    """``case.nii.gz`` -> ``case``."""
    for s in VOLUME_SUFFIXES:
        if filename.endswith(s):
            return filename[: -len(s)]
    return filename
