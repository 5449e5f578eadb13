"""DICOM series read into volumes with correct geometry; malformed series fail with a clear reason."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from amoslabel.dicom.series import is_dicom_dir, read_series
from amoslabel.errors import InputError
from amoslabel.volume import Geometry


@pytest.fixture()
def series_copy(shared, tmp_path):
    dest = tmp_path / "series"
    shutil.copytree(shared / "dicom" / "ts_ct_series_uncompressed", dest)
    return dest


def test_jpeg2000_series_decodes_to_the_same_voxels_as_uncompressed(shared):
    j2k = read_series(shared / "dicom" / "ts_ct_series_j2k")
    raw = read_series(shared / "dicom" / "ts_ct_series_uncompressed")
    assert j2k.GetSize() == (512, 512, 20) and j2k.GetMetaData("0008|0060") == "CT"
    assert np.array_equal(sitk.GetArrayViewFromImage(j2k), sitk.GetArrayViewFromImage(raw))
    assert Geometry.of(j2k) == Geometry.of(raw)


def test_series_matches_its_nifti_label_in_physical_space(shared):
    image = read_series(shared / "dicom" / "ts_ct_series_uncompressed")
    label = sitk.ReadImage(str(shared / "dicom" / "ts_ct_series_label.nii.gz"))
    # the label stores y flipped: compare world coordinates of the grid corners, not array indices
    for index in [(0, 0, 0), (511, 511, 19), (100, 400, 7)]:
        world = image.TransformIndexToPhysicalPoint(index)
        back = label.TransformPhysicalPointToIndex(world)
        assert all(0 <= b < s for b, s in zip(back, label.GetSize()))
        assert np.allclose(label.TransformIndexToPhysicalPoint(back), world, atol=1e-3)
    # and the anatomy: liver voxels of the label sit on soft-tissue HU in the series
    moved = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    hu = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(moved) == 6]
    assert 30 < float(np.median(hu)) < 200


def test_chaos_series_reads_on_the_grid_of_its_label(shared):
    image = read_series(shared / "dicom" / "chaos_ct_series")
    label = sitk.ReadImage(str(shared / "dicom" / "chaos_ct_series_liver_label.nii.gz"))
    assert image.GetSize() == label.GetSize() == (512, 512, 78)
    assert np.allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-3)


def test_missing_slice_is_reported(series_copy):
    files = sorted(
        series_copy.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )
    files[10].unlink()
    with pytest.raises(InputError, match="slices are missing") as err:
        read_series(series_copy)
    assert err.value.status == 422


def test_mixed_series_are_reported(series_copy, shared):
    other = next((shared / "dicom" / "chaos_ct_series").iterdir())
    shutil.copy(other, series_copy / "intruder.dcm")
    with pytest.raises(InputError, match="mixes 2 series"):
        read_series(series_copy)


def test_missing_position_tags_are_reported(series_copy):
    victim = sorted(series_copy.iterdir())[3]
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    with pytest.raises(InputError, match="lack ImagePositionPatient"):
        read_series(series_copy)


def test_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_dicom_dir(tmp_path)
    with pytest.raises(InputError, match="no DICOM files"):
        read_series(tmp_path)
