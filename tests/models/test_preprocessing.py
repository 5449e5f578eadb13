"""Per-modality normalisation (AMOS), resampling in physical space, and restoring a prediction's exact geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from amoslabel.config import ModalityPlan, Normalisation, load_config
from amoslabel.volume import Geometry
from models.preprocessing import (
    LoadVolumed,
    NormaliseIntensityd,
    ResampleToPland,
    ResolveModalityd,
    normalise,
    restore_label,
    target_grid,
)
from models.validation import dice_per_organ

CONFIG = load_config()
SPECS = {m: s.normalisation for m, s in CONFIG.modalities.items()}


def test_ct_normalisation_is_the_amos_formula(shared):
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct.nii.gz")))
    out, params = normalise(hu, SPECS["ct"])
    expected = (np.clip(hu.astype(np.float64), -991, 362) - 50) / 141
    assert np.allclose(out, expected, atol=1e-5)
    assert out.min() == pytest.approx((-991 - 50) / 141, abs=1e-5) and out.max() <= (362 - 50) / 141 + 1e-5
    assert params == {"kind": "ct_window", "low": -991, "high": 362, "mean": 50, "std": 141}


def test_mri_normalisation_is_zscore_over_nonzero_voxels(shared):
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(shared / "mr" / "ts_abdomen_mr_small.nii.gz"))).astype(np.float64)
    out, params = normalise(raw, SPECS["mri"])
    nonzero = raw != 0
    assert (out[~nonzero] == 0).all()
    assert out[nonzero].mean() == pytest.approx(0.0, abs=1e-4) and out[nonzero].std() == pytest.approx(1.0, abs=1e-4)
    assert params["mean"] == pytest.approx(raw[nonzero].mean(), rel=1e-5)


def test_constant_zero_mri_does_not_divide_by_zero():
    out, params = normalise(np.zeros((4, 4, 4)), Normalisation(kind="zscore_nonzero"))
    assert (out == 0).all() and params["std"] == 1.0


def _pipeline(path, modality=None, spacing=(1.5, 1.5, 1.5)):
    plan = ModalityPlan(spacing=spacing, patch_size=(64, 64, 64))
    data = {"image": str(path), "modality": modality}
    for t in (
        LoadVolumed(CONFIG.storage.max_image_voxels),
        ResolveModalityd(),
        NormaliseIntensityd(SPECS),
        ResampleToPland({"ct": plan, "mri": plan}),
    ):
        data = t(data)
    return data


def test_mri_sample_is_recognised_and_normalised_as_mri(shared):
    data = _pipeline(shared / "mr" / "ts_abdomen_mr_small.nii.gz")
    assert data["modality"] == "mri" and data["normalisation"]["kind"] == "zscore_nonzero"
    forced = _pipeline(shared / "mr" / "ts_abdomen_mr_small.nii.gz", modality="ct")
    assert forced["modality"] == "ct" and forced["modality_source"] == "request"


def test_resampled_grid_keeps_the_field_of_view(shared):
    data = _pipeline(shared / "ct" / "ts_abdomen_ct.nii.gz")
    grid: Geometry = data["grid"]
    assert grid.size == (244, 202, 224) and grid.spacing == (1.5, 1.5, 1.5)
    assert data["image"].shape == (1, 224, 202, 244)  # channel, z, y, x
    original = data["image_geometry"]
    extent = np.asarray(original.size) * np.asarray(original.spacing)
    assert np.allclose(np.asarray(grid.size) * np.asarray(grid.spacing), extent, atol=1.5)


def _one_hot_on_grid(label: sitk.Image, grid: Geometry) -> torch.Tensor:
    oriented = sitk.DICOMOrient(label, "LPS")
    ref = sitk.Image(list(grid.size), sitk.sitkUInt8)
    grid.apply_to(ref)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(oriented, ref, sitk.Transform(), sitk.sitkNearestNeighbor))
    return torch.nn.functional.one_hot(torch.from_numpy(on_grid).long(), 16).permute(3, 0, 1, 2).float()


@pytest.mark.parametrize("direction", ["as-stored", "oblique-flipped"])
def test_restored_label_has_the_input_geometry_exactly(shared, direction):
    label = sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_label.nii.gz"))
    if direction == "oblique-flipped":
        a = np.deg2rad(15)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, -1, 0], [-np.sin(a), 0, np.cos(a)]])
        label.SetDirection(tuple((rot @ np.asarray(label.GetDirection()).reshape(3, 3)).ravel()))
    original = Geometry.of(label)
    grid = target_grid(Geometry.of(sitk.DICOMOrient(label, "LPS")), (1.5, 1.5, 1.5))
    restored = restore_label(_one_hot_on_grid(label, grid), grid, original)
    assert Geometry.of(restored) == original
    scores = dice_per_organ(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))
    assert min(scores[o] for o in ("liver", "spleen", "right kidney", "left kidney")) > 0.97


def test_restore_to_a_finer_grid_than_the_network_grid(shared):
    label = sitk.ReadImage(str(shared / "dicom" / "ts_ct_series_label.nii.gz"))  # 0.98 x 0.98 x 2 mm, y flipped
    original = Geometry.of(label)
    grid = target_grid(Geometry.of(sitk.DICOMOrient(label, "LPS")), (1.5, 1.5, 1.5))
    restored = restore_label(_one_hot_on_grid(label, grid), grid, original)
    assert Geometry.of(restored) == original
    assert dice_per_organ(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))["liver"] > 0.95


def _restore_every_channel(probabilities, grid, original):
    """Reference: resample every channel over the whole output grid and take the argmax (slow, simple)."""
    reference = sitk.Image(list(original.size), sitk.sitkUInt8)
    original.apply_to(reference)
    stack = []
    for channel in probabilities.numpy():
        image = sitk.GetImageFromArray(channel)
        grid.apply_to(image)
        stack.append(
            sitk.GetArrayFromImage(
                sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            )
        )
    return np.argmax(np.stack(stack), axis=0)


@pytest.mark.parametrize("path", ["ct/ts_abdomen_ct_label.nii.gz", "dicom/ts_ct_series_label.nii.gz"])
def test_region_restricted_restore_matches_resampling_every_channel(shared, path):
    label = sitk.ReadImage(str(shared / path))
    original = Geometry.of(label)
    grid = target_grid(Geometry.of(sitk.DICOMOrient(label, "LPS")), (1.5, 1.5, 1.5))
    soft = torch.nn.functional.avg_pool3d(_one_hot_on_grid(label, grid)[None], 5, stride=1, padding=2)[0]
    soft = soft / soft.sum(0, keepdim=True)  # soft, overlapping probabilities that still sum to one
    fast = sitk.GetArrayFromImage(restore_label(soft, grid, original))
    slow = _restore_every_channel(soft, grid, original)
    assert (fast == slow).mean() > 0.999
