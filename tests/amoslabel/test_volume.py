"""Bad files fail early with a clear message and a 4xx status; good ones read with their geometry intact."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.errors import InputError
from amoslabel.volume import Geometry, copy_atomic, read_image, read_label, write_atomic
from tests.badfiles import BAD_IMAGES, CT, CT_LABEL, label_wrong_shape

EXPECTED_IMAGE = {
    "corrupt": (400, "not a readable"),
    "truncated": (400, "truncated"),
    "2d": (422, "3D volume is required"),
    "4d": (422, "not a series"),
    "nan": (422, "NaN or infinite"),
    "huge-header": (413, "1,000,000,000,000 voxels"),
    "zero-spacing": (422, "spacing"),
    "negative-spacing": (422, "must be positive"),
    "one-voxel": (422, "at least 2 voxels"),
    "one-slice": (422, "at least 2 voxels"),
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_image_is_refused_with_reason(kind, tmp_path):
    path = BAD_IMAGES[kind](tmp_path / f"{kind}.nii.gz")
    status, words = EXPECTED_IMAGE[kind]
    with pytest.raises(InputError) as err:
        read_image(path)
    assert err.value.status == status and err.value.status_code == status
    assert words in str(err.value) and path.name in str(err.value)


def test_huge_header_is_refused_before_reading_voxels(tmp_path):
    path = BAD_IMAGES["huge-header"](tmp_path / "huge.nii.gz")
    assert path.stat().st_size < 10_000  # the refusal cannot come from reading 2 TB
    with pytest.raises(InputError, match="more than the limit"):
        read_image(path)


def test_label_ids_out_of_range_and_float_labels(tmp_path):
    from tests.badfiles import label_with_id

    with pytest.raises(InputError, match=r"label ids \[99\]"):
        read_label(label_with_id(tmp_path / "l99.nii.gz", 99))
    with pytest.raises(InputError, match=r"label ids \[16\]"):
        read_label(label_with_id(tmp_path / "l16.nii.gz", 16))
    label = sitk.Cast(sitk.ReadImage(str(CT_LABEL)), sitk.sitkFloat32)
    sitk.WriteImage(label, str(tmp_path / "float_ok.nii.gz"))
    assert read_label(tmp_path / "float_ok.nii.gz").GetPixelID() == sitk.sitkUInt8
    label = sitk.ReadImage(str(CT_LABEL), sitk.sitkFloat32) + 0.5
    sitk.WriteImage(label, str(tmp_path / "float_bad.nii.gz"))
    with pytest.raises(InputError, match="whole numbers"):
        read_label(tmp_path / "float_bad.nii.gz")


def test_real_scan_reads_with_its_geometry():
    image = read_image(CT)
    geometry = Geometry.of(image)
    assert geometry.size == (122, 101, 30) and geometry.spacing == (3.0, 3.0, 3.0)
    assert geometry.mismatch(Geometry.of(read_label(CT_LABEL))) is None


def test_geometry_mismatch_names_what_differs(tmp_path):
    image = Geometry.of(read_image(CT))
    assert "size" in image.mismatch(Geometry.of(read_label(label_wrong_shape(tmp_path / "s.nii.gz"))))
    moved = read_label(CT_LABEL)
    moved.SetOrigin((0.0, 0.0, 0.0))
    assert "origin" in image.mismatch(Geometry.of(moved))


def test_oblique_direction_is_accepted(tmp_path):
    image = read_image(CT)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple((rot @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    sitk.WriteImage(image, str(tmp_path / "oblique.nii.gz"))
    back = read_image(tmp_path / "oblique.nii.gz")
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    image = read_image(CT)
    dest = write_atomic(image, tmp_path / "out" / "a.nii.gz", scratch_dir=tmp_path / "scratch")
    copy_atomic(dest, tmp_path / "out" / "b.nii.gz", scratch_dir=tmp_path / "scratch")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert list((tmp_path / "scratch").iterdir()) == []
    assert Geometry.of(read_image(tmp_path / "out" / "b.nii.gz")) == Geometry.of(image)
