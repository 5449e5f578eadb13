"""Reading a DICOM series folder into one checked 3D volume.

GDCM (inside SimpleITK) sorts slices and decodes JPEG 2000; we add the checks it leaves out, each with a message
that names the problem: several series in one folder, slices without position or orientation tags, and missing
slices (uneven gaps along the slice normal), and uncompressed pixel data shorter than the image it claims to be (GDCM
reads such a file without a word and pads the missing pixels).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pydicom
import SimpleITK as sitk

from amoslabel.errors import InputError, Unprocessable

logger = logging.getLogger(__name__)

_GAP_RTOL = 0.1  # a slice gap more than 10% off the typical one means slices are missing or duplicated


def is_dicom_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM file (by its 'DICM' preamble)."""
    p = Path(path)
    if not p.is_dir():
        return False
    for f in sorted(p.iterdir())[:20]:
        if f.is_file() and _has_dicm_preamble(f):
            return True
    return False


def _has_dicom_suffix_or_preamble(f: Path) -> bool:
    return f.suffix.lower() == ".dcm" or _has_dicm_preamble(f)


def _has_dicm_preamble(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def series_headers(folder: str | Path) -> Dict[str, List[pydicom.Dataset]]:
    """Headers (no pixel data) of the DICOM files in ``folder``, grouped by SeriesInstanceUID."""
    groups: Dict[str, List[pydicom.Dataset]] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or not _has_dicom_suffix_or_preamble(f):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for a damaged file
            raise InputError(f"{f.name}: not a readable DICOM file ({e})") from None
        ds.filename = str(f)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    return groups


def read_series(folder: str | Path, series_uid: Optional[str] = None) -> sitk.Image:
    """Read one DICOM series as a 3D volume; its Modality is kept in the ``0008|0060`` metadata entry.

    Raises:
        InputError: no DICOM files (400), several series without ``series_uid`` (422), missing position tags
            (422), missing slices (422), or pixel data that cannot be decoded (400).
    """
    folder = Path(folder)
    name = folder.name
    groups = series_headers(folder)
    if not groups:
        raise InputError(f"{name}: no DICOM files in this folder")
    if series_uid is None:
        if len(groups) > 1:
            raise Unprocessable(
                f"{name}: the folder mixes {len(groups)} series ({', '.join(sorted(groups))}); "
                "import one series per folder"
            )
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise InputError(f"{name}: no series {series_uid}", status=404)
    headers = groups[series_uid]
    files = sorted_slices(headers, name)
    _check_pixel_lengths(headers, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{name}: cannot decode the pixel data ({str(e).strip().splitlines()[-1][:200]})") from None
    modality = str(headers[0].get("Modality", "")).strip()
    if modality:
        image.SetMetaData("0008|0060", modality)
    image.SetMetaData("0020|000e", series_uid)
    return image


def sorted_slices(headers: List[pydicom.Dataset], name: str) -> List[str]:
    """The files of one series in slice order along its normal, once every slice has a position and the gaps are
    even (a missing or duplicated slice is refused with 422)."""
    missing = [
        Path(h.filename).name for h in headers if "ImagePositionPatient" not in h or "ImageOrientationPatient" not in h
    ]
    if missing:
        raise Unprocessable(
            f"{name}: {len(missing)} slice(s) lack ImagePositionPatient or ImageOrientationPatient "
            f"(e.g. {missing[0]}); their position in the volume is unknown"
        )
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([float(np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float))) for h in headers])
    order = np.argsort(positions)
    if len(headers) > 2:
        gaps = np.diff(positions[order])
        typical = float(np.median(gaps))
        if typical <= 0:
            raise Unprocessable(f"{name}: several slices share one position; the series is not a single volume")
        uneven = np.abs(gaps - typical) > _GAP_RTOL * typical
        if uneven.any():
            i = int(np.argmax(uneven))
            raise Unprocessable(
                f"{name}: uneven slice spacing ({gaps[i]:.3g} mm after slice at {positions[order][i]:.1f} mm, "
                f"typically {typical:.3g} mm): slices are missing or duplicated"
            )
    return [headers[i].filename for i in order]


def _check_pixel_lengths(headers: List[pydicom.Dataset], name: str) -> None:
    """Refuse a file whose native (uncompressed) pixel data is shorter than Rows x Columns x samples x frames."""
    for header in headers:
        ds = pydicom.dcmread(header.filename, defer_size=256)  # the pixel element's length, not its bytes
        element = ds.get_item("PixelData")
        if element is None:
            raise InputError(f"{name}: {Path(header.filename).name} has no pixel data")
        length = element.length if hasattr(element, "length") else len(element.value)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if length == 0xFFFFFFFF or (syntax is not None and syntax.is_compressed):
            continue  # encapsulated (compressed): decoding checks it
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        expected *= int(ds.get("NumberOfFrames", 1) or 1) * (int(ds.BitsAllocated) // 8)
        if length < expected:
            raise InputError(
                f"{name}: {Path(header.filename).name} has {length} bytes of pixel data where its "
                f"{ds.Rows}x{ds.Columns} image needs {expected}: the file is corrupt"
            )
