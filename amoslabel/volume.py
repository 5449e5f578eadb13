"""Reading, checking and writing 3D volumes, so that bad files fail early with a message a person can act on.

Everything that reads an image or a label map from a user goes through :func:`read_image` or :func:`read_label`:
the header is checked before any voxel is allocated (dimensionality, size, spacing), then the voxels (finite
intensities; label ids within 0-15). Writes are atomic: a temporary file, fsync, then a rename.
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from amoslabel.errors import InputError, TooLarge, Unprocessable
from amoslabel.organs import MAX_LABEL_ID

NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
DEFAULT_MAX_VOXELS = 1024**3
MIN_EDGE_VOXELS = 2

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


def read_label(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> sitk.Image:
    """Read a label map and check its ids are AMOS ids (0-15); returned as uint8.

    Raises:
        InputError: as :func:`read_image`, and Unprocessable (422) for ids outside 0-15 or non-integer values.
    """
    name = name or Path(path).name
    image = _read_checked(path, max_voxels, name)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise Unprocessable(f"{name}: a label map must hold whole numbers (organ ids 0-{MAX_LABEL_ID})")
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > MAX_LABEL_ID:
        outside = np.unique(array[(array < 0) | (array > MAX_LABEL_ID)])[:10]
        raise Unprocessable(f"{name}: label ids {[int(v) for v in outside]} are outside the AMOS ids 0-{MAX_LABEL_ID}")
    if image.GetPixelID() != sitk.sitkUInt8:
        image = sitk.Cast(image, sitk.sitkUInt8)
    return image


def read_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """Read only the header of a volume file; the pixels are not loaded."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


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
            raise InputError(f"{name}: not a readable image file ({_itk_reason(e)})") from None
        if header.GetNumberOfComponents() != 1:
            raise Unprocessable(f"{name}: {header.GetNumberOfComponents()} components per voxel; one is required")
        size, spacing = list(header.GetSize()), list(header.GetSpacing())
    _check_shape(size, spacing, max_voxels, name)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{name}: corrupt or truncated image data ({_itk_reason(e)})") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return image


def _check_shape(size, spacing, max_voxels: int, name: str) -> None:
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
    if not all(np.isfinite(s) and s > 0 for s in list(spacing)[:3]):
        raise Unprocessable(f"{name}: spacing {[float(s) for s in list(spacing)[:3]]} must be positive and finite")


def _check_nifti(path: Path, max_voxels: int, name: str):
    """Checks ITK's NIfTI reader skips: it turns zero spacing into 1, NaN into 0, and reads truncated files."""
    try:
        nii = nib.load(str(path))
        header = nii.header
        shape = [int(s) for s in header.get_data_shape()]
    except Exception as e:  # nibabel raises several types for a damaged header
        raise InputError(f"{name}: not a readable NIfTI file ({str(e)[:200]})") from None
    spacing = [float(p) for p in _raw_pixdim(path)[1 : 1 + min(len(shape), 3)]]
    _check_shape(shape, spacing, max_voxels, name)
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "uif":
        raise Unprocessable(f"{name}: voxel type {dtype} is not a scalar number")
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


def _itk_reason(error: RuntimeError) -> str:
    # ITK messages span many lines with source paths; keep the line that says what went wrong.
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if "Description:" in ln:
            return ln.split("Description:", 1)[1].strip()[:200]
    return (lines[-1] if lines else "unknown error")[:200]


@contextmanager
def _atomic_destination(
    dest: str | os.PathLike,
    scratch_dir: str | os.PathLike | None,
    suffix: str = "",
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``dest``, else removed.

    ``scratch_dir`` must be on the same filesystem as ``dest``; keep it outside folders that other processes scan
    for images (MONAI Label's datastore would pick up a half-written ``*.nii.gz``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(scratch_dir) if scratch_dir else dest.parent
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f".tmp-{uuid.uuid4().hex}{suffix}"
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(
    image: sitk.Image, dest: str | os.PathLike, scratch_dir: str | os.PathLike | None = None, compress: bool = True
) -> Path:
    """Write ``image`` to ``dest`` so that ``dest`` is either absent or complete, never half-written."""
    suffix = next((s for s in VOLUME_SUFFIXES if Path(dest).name.endswith(s)), Path(dest).suffix)
    with _atomic_destination(dest, scratch_dir, suffix) as tmp:  # the suffix tells ITK the file format
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return Path(dest)


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike, scratch_dir: str | os.PathLike | None = None) -> Path:
    """Copy a file so that ``dest`` is either absent or complete."""
    with _atomic_destination(dest, scratch_dir) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def write_text_atomic(text: str, dest: str | os.PathLike) -> Path:
    """Write a small text file (JSON metadata) atomically, its temporary file beside it."""
    with _atomic_destination(dest, None, ".tmp") as tmp:
        tmp.write_text(text)
    return Path(dest)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def strip_volume_suffix(filename: str) -> str:
    """``case.nii.gz`` -> ``case``."""
    for s in VOLUME_SUFFIXES:
        if filename.endswith(s):
            return filename[: -len(s)]
    return filename
