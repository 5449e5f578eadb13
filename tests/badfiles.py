"""Bad inputs, made on the fly from the real scans: corrupt, truncated, wrong dimensionality, bad ids, bad grids."""

from __future__ import annotations

import gzip
import os
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


def label_with_id(dest: Path, organ_id: int = 99) -> Path:
    label = sitk.ReadImage(str(CT_LABEL))
    array = sitk.GetArrayFromImage(label).astype(np.uint8)
    array[0, 0, 0] = organ_id
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label)
    sitk.WriteImage(out, str(dest))
    return dest


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
}

BAD_LABELS: Dict[str, Callable[[Path], Path]] = {
    "corrupt": corrupt,
    "truncated": truncated,
    "id-99": label_with_id,
    "wrong-shape": label_wrong_shape,
    "wrong-spacing": label_wrong_spacing,
    "2d": image_2d,
    "4d": image_4d,
}
