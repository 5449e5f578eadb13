"""Bad inputs, made on the fly from the real scans: corrupt, truncated, wrong dimensionality, bad ids, bad grids.

Also the good input that looks odd: :func:`oblique` (a rotated scan) must be accepted everywhere. Ids and tags that
must be refused are :data:`BAD_IDS`; DICOM series that must be refused are made by :func:`dicom_without_positions`
and :func:`dicom_truncated_file`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Dict

import nibabel as nib
import numpy as np
import SimpleITK as sitk

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CT = SHARED / "ct" / "ts_abdomen_ct_small.nii.gz"
CT_LABEL = SHARED / "ct" / "ts_abdomen_ct_small_label.nii.gz"


def corrupt(dest: Path) -> Path:
    dest.write_bytes(gzip.compress(os.urandom(4096)))
    return dest


def truncated(dest: Path) -> Path:
    data = CT.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def image_2d(dest: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.int16)), str(dest))
    return dest


def image_4d(dest: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 3), np.int16), np.eye(4)), str(dest))
    return dest


def nan_image(dest: Path) -> Path:
    image = sitk.ReadImage(str(CT), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[5, 10, 10] = np.nan
    array[6, 10, 10] = np.inf
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dest))
    return dest


def huge_header(dest: Path) -> Path:
    """A NIfTI header claiming 10^12 voxels over a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((10000, 10000, 10000))
    header["pixdim"][1:4] = 1.0
    with open(dest.with_suffix(""), "wb") as fh:  # write .nii, then gzip it
        fh.write(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    dest.write_bytes(gzip.compress(dest.with_suffix("").read_bytes()))
    dest.with_suffix("").unlink()
    return dest


def zero_spacing(dest: Path) -> Path:
    """A NIfTI whose header says the x spacing is 0 (nibabel and ITK would both 'repair' it to 1 on writing)."""
    raw = gzip.decompress(CT.read_bytes())
    pixdim = bytearray(raw)
    struct.pack_into("<f", pixdim, 76 + 4, 0.0)  # pixdim[1]; sform/qform left as they are
    dest.write_bytes(gzip.compress(bytes(pixdim)))
    return dest


def one_voxel(dest: Path) -> Path:
    nib.save(nib.Nifti1Image(np.full((1, 1, 1), 40, np.int16), np.eye(4)), str(dest))
    return dest


def one_slice(dest: Path) -> Path:
    """A 'volume' of a single axial slice: a 2D image in a 3D header."""
    image = sitk.ReadImage(str(CT))
    sitk.WriteImage(image[:, :, 5:6], str(dest))
    return dest


def negative_spacing(dest: Path) -> Path:
    """pixdim[3] = -2.5 in the header (qform/sform untouched), as some converters write it."""
    raw = bytearray(gzip.decompress(CT.read_bytes()))
    struct.pack_into("<f", raw, 76 + 12, -2.5)
    dest.write_bytes(gzip.compress(bytes(raw)))
    return dest


def _rotation(z_deg: float, x_deg: float = 0.0) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _rotated(source: Path, dest: Path, z_deg: float, x_deg: float = 0.0) -> Path:
    image = sitk.ReadImage(str(source))
    image.SetDirection(tuple((_rotation(z_deg, x_deg) @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    sitk.WriteImage(image, str(dest))
    return dest


def oblique(dest: Path) -> Path:
    """The real CT, its axes rotated 20 degrees about z and 10 about x: a valid scan that must be accepted."""
    return _rotated(CT, dest, 20, 10)


def _label_edit(dest: Path, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    """The real label map with its voxels changed by ``edit``, on its own grid."""
    label = sitk.ReadImage(str(CT_LABEL))
    out = sitk.GetImageFromArray(edit(sitk.GetArrayFromImage(label)))
    out.CopyInformation(label)
    sitk.WriteImage(out, str(dest))
    return dest


def _with_voxel(array: np.ndarray, value, dtype) -> np.ndarray:
    array = array.astype(dtype)
    array[0, 0, 0] = value
    return array


def label_with_id(dest: Path, organ_id: int = 99) -> Path:
    return _label_edit(dest, lambda a: _with_voxel(a, organ_id, np.uint8))


def label_negative_id(dest: Path) -> Path:
    return _label_edit(dest, lambda a: _with_voxel(a, -1, np.int16))


def label_fractional(dest: Path) -> Path:
    """A probability map saved where a label map belongs (values like 0.5)."""
    return _label_edit(dest, lambda a: a.astype(np.float32) * 0.5)


def label_oblique(dest: Path) -> Path:
    """The right label on a rotated grid: same size and spacing, another direction."""
    return _rotated(CT_LABEL, dest, 15)


def label_wrong_shape(dest: Path) -> Path:
    label = sitk.ReadImage(str(CT_LABEL))
    sitk.WriteImage(label[:, :, :20], str(dest))
    return dest


def label_wrong_spacing(dest: Path) -> Path:
    label = sitk.ReadImage(str(CT_LABEL))
    label.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(label, str(dest))
    return dest


BAD_IMAGES: Dict[str, Callable[[Path], Path]] = {
    "corrupt": corrupt,
    "truncated": truncated,
    "2d": image_2d,
    "4d": image_4d,
    "nan": nan_image,
    "huge-header": huge_header,
    "zero-spacing": zero_spacing,
    "negative-spacing": negative_spacing,
    "one-voxel": one_voxel,
    "one-slice": one_slice,
}

BAD_LABELS: Dict[str, Callable[[Path], Path]] = {
    "corrupt": corrupt,
    "truncated": truncated,
    "id-99": label_with_id,
    "id-minus-1": label_negative_id,
    "fractional": label_fractional,
    "wrong-shape": label_wrong_shape,
    "wrong-direction": label_oblique,
    "wrong-spacing": label_wrong_spacing,
    "2d": image_2d,
    "4d": image_4d,
}


# path traversal, separators, control and bidi characters, unicode look-alikes, a Windows drive, too long
BAD_IDS = {
    "traversal": "../../etc/passwd",
    "dot-dot": "..",
    "slash": "a/b",
    "backslash": "a\\b",
    "absolute": "/etc/passwd",
    "windows-drive": "C:\\x",
    "null-byte": "ct\x00small",
    "newline": "ct\nsmall",
    "rtl-override": "ct\u202esmall",
    "unicode": "肝臓",
    "accented": "gallé",
    "fullwidth-dots": "\uff0e\uff0e",
    "hidden": ".amoslabel",
    "too-long": "a" * 300,
    "empty": "",
}


def dicom_without_positions(series: Path, dest: Path) -> Path:
    """A copy of a real series whose middle slice has no ImagePositionPatient."""
    import pydicom

    shutil.copytree(series, dest)
    files = sorted(dest.iterdir())
    ds = pydicom.dcmread(files[len(files) // 2])
    del ds.ImagePositionPatient
    ds.save_as(files[len(files) // 2])
    return dest


def dicom_truncated_file(series: Path, dest: Path) -> Path:
    """A copy of a real series with one file cut to a third (a transfer that stopped)."""
    shutil.copytree(series, dest)
    victim = sorted(dest.iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    return dest
