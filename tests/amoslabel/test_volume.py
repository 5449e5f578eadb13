"""Bad files fail early with a clear message and a 4xx status; good ones read with their geometry intact."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.errors import InputError, Unprocessable
from amoslabel.files import check_complete, copy_atomic
from amoslabel.volume import OffGrid, Geometry, check_on_grid, onto_grid, read_image, read_label, write_atomic
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
    assert str(tmp_path) not in str(err.value)  # the server's own paths stay on the server


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


def test_the_one_grid_check_stamps_the_exact_grid_or_says_why_not(tmp_path):
    grid = Geometry.of(read_image(CT))
    label = read_label(CT_LABEL)
    label.SetOrigin(tuple(o + 0.001 for o in label.GetOrigin()))  # within tolerance: stamped exactly
    assert Geometry.of(check_on_grid(CT, label, "label for ct")) == grid  # the image's path: its header only
    moved = read_label(CT_LABEL)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(OffGrid, match="label for ct: origin .* a label must be on its image's grid") as off:
        check_on_grid(grid, moved, "label for ct")
    assert off.value.status == 422 and off.value.reason.startswith("origin")
    with pytest.raises(Unprocessable, match="does not cover the same physical region"):
        onto_grid(grid, moved, "label x")


def test_a_label_over_the_same_region_on_another_grid_is_resampled_with_a_note():
    grid = Geometry.of(read_image(CT))
    label = read_label(CT_LABEL)
    flipped = sitk.Flip(label, [False, True, False])  # the same voxels in space, the y axis stored the other way
    assert grid.mismatch(Geometry.of(flipped))
    back, note = onto_grid(grid, flipped, "label x")
    assert "resampled onto the image grid" in note and Geometry.of(back) == grid
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))
    same, none = onto_grid(grid, read_label(CT_LABEL), "label x")
    assert none is None and Geometry.of(same) == grid


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


def test_a_file_itk_cut_short_on_a_full_disk_is_refused_not_kept(tmp_path):
    """ITK leaves a truncated file without failing when the disk fills: both kinds are caught (the real full disk is
    tests/reliability/test_disk_full.py)."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 15, (32, 32, 32)).astype(np.uint8))
    for name, compress in (("a.nii.gz", True), ("a.nrrd", False), ("a.nii", False)):
        path = tmp_path / name
        sitk.WriteImage(image, str(path), useCompression=compress)
        data_bytes = 0 if compress else 32**3
        check_complete(path, data_bytes)  # whole: no error
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])  # what a full disk leaves
        with pytest.raises(OSError) as cut:
            check_complete(path, data_bytes)
        assert cut.value.errno == errno.ENOSPC, name
