"""Metrics against reference implementations (DeepMind's surface-distance and MONAI) on a real AMOS label pair."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import surface_distance  # DeepMind's reference implementation (requirements-test.txt)
import torch
from monai.metrics import compute_dice, compute_surface_dice
from monai.metrics.utils import _get_neighbour_code_to_normals_table

from amoslabel.errors import Unprocessable
from amoslabel.organs import ORGANS
from evaluation import metrics
from tests.conftest import SHARED as SHARED_DATA

LABEL = SHARED_DATA / "labels" / "amos_0013_label.nii.gz"
PREDICTION = SHARED_DATA / "labels" / "amos_0013_pred_perturbed.nii.gz"


@pytest.fixture(scope="module")
def amos_pair():
    reference = nib.load(str(LABEL))
    prediction = nib.load(str(PREDICTION))
    spacing = [float(s) for s in reference.header.get_zooms()]
    assert spacing[2] > 4 * spacing[0], "the pair must be anisotropic for the spacing checks to mean anything"
    ref, pred = np.asarray(reference.dataobj), np.asarray(prediction.dataobj)
    return pred, ref, spacing, metrics.evaluate_case(pred, ref, spacing)


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(mask.astype(np.float32))
    return torch.stack([1 - m, m])[None]


def test_dice_and_nsd_agree_with_deepmind_and_monai(amos_pair):
    pred, ref, spacing, ours = amos_pair
    checked = 0
    for organ in ORGANS:
        p, r = pred == organ.id, ref == organ.id
        if not (p.any() and r.any()):
            continue
        # crop both to the organ's joint box (plus a margin) so the references run in seconds; cropping cannot
        # change surface distances because every surface voxel stays inside
        box = tuple(
            slice(max(s.start - 2, 0), s.stop + 2)
            for s in metrics._union_box(*[metrics.ndimage.find_objects(m.astype(np.uint8))[0] for m in (p, r)])
        )
        p, r = p[box], r[box]
        deepmind = surface_distance.compute_surface_distances(r, p, spacing)
        dm_nsd = surface_distance.compute_surface_dice_at_tolerance(deepmind, organ.nsd_tolerance_mm)
        dm_dice = surface_distance.compute_dice_coefficient(r, p)
        dm_hd95 = surface_distance.compute_robust_hausdorff(deepmind, 95)
        monai_nsd = compute_surface_dice(
            _one_hot(p), _one_hot(r), [organ.nsd_tolerance_mm], spacing=spacing, use_subvoxels=True
        ).item()
        monai_dice = compute_dice(_one_hot(p), _one_hot(r), include_background=False).item()
        name = organ.name
        assert ours.per_organ["dice"][name] == pytest.approx(dm_dice, abs=1e-3), name
        assert ours.per_organ["dice"][name] == pytest.approx(monai_dice, abs=1e-3), name
        assert ours.per_organ["nsd"][name] == pytest.approx(dm_nsd, abs=1e-3), name
        assert ours.per_organ["nsd"][name] == pytest.approx(monai_nsd, abs=1e-3), name
        assert ours.per_organ["hd95"][name] == pytest.approx(dm_hd95, abs=1e-3), name
        checked += 1
    assert checked >= 13, "the perturbed prediction should overlap most organs"
    # the pair is imperfect: a metric that always said 1 would fail here
    assert 0.3 < ours.mean("dice") < 0.95 and 0.3 < ours.mean("nsd") < 0.95


def test_monai_default_edge_voxels_give_other_numbers(amos_pair):
    """Why the definition matters: MONAI's default counts edge voxels and disagrees with the surface elements."""
    pred, ref, spacing, ours = amos_pair
    liver = next(o for o in ORGANS if o.name == "liver")
    p, r = pred == liver.id, ref == liver.id
    edge_voxels = compute_surface_dice(_one_hot(p), _one_hot(r), [liver.nsd_tolerance_mm], spacing=spacing).item()
    assert abs(edge_voxels - ours.per_organ["nsd"]["liver"]) > 1e-3


def test_real_spacing_is_used(amos_pair):
    pred, ref, spacing, ours = amos_pair
    isotropic = metrics.evaluate_case(pred, ref, [1.0, 1.0, 1.0])
    assert isotropic.per_organ["dice"] == ours.per_organ["dice"]
    assert isotropic.per_organ["nsd"]["liver"] != pytest.approx(ours.per_organ["nsd"]["liver"], abs=1e-3)


def test_iou_and_accuracy_follow_from_the_counts(amos_pair):
    pred, ref, _, ours = amos_pair
    spleen = 1
    tp = np.sum((pred == spleen) & (ref == spleen))
    union = np.sum((pred == spleen) | (ref == spleen))
    assert ours.per_organ["iou"]["spleen"] == pytest.approx(tp / union)
    assert ours.per_organ["accuracy"]["spleen"] == pytest.approx(1 - (union - tp) / ref.size)
    assert ours.overall_accuracy == pytest.approx(np.mean(pred == ref))


def test_surface_table_is_monais():
    assert np.allclose(metrics._normals(), _get_neighbour_code_to_normals_table().numpy())


def test_empty_organ_policy():
    ref = np.zeros((20, 20, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8, 2:6] = 1  # spleen in both
    pred[3:8, 2:8, 2:6] = 1
    ref[10:14, 10:14, 2:5] = 6  # liver missed by the prediction
    pred[15:18, 15:18, 6:9] = 7  # stomach predicted where there is none
    scores = metrics.evaluate_case(pred, ref, [2.0, 2.0, 3.0])
    dice = scores.per_organ["dice"]
    assert dice["liver"] == 0 and dice["stomach"] == 0
    assert scores.per_organ["nsd"]["liver"] == 0
    assert scores.per_organ["hd95"]["liver"] == pytest.approx(math.sqrt(40**2 + 40**2 + 30**2))
    assert math.isnan(dice["pancreas"]) and math.isnan(scores.per_organ["nsd"]["pancreas"])
    assert scores.mean("dice") == pytest.approx((dice["spleen"] + 0 + 0) / 3)
    assert scores.per_organ["accuracy"]["pancreas"] == 1.0


@pytest.mark.parametrize(
    "pred, ref, message",
    [
        (np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 5), np.int16), "shape"),
        (np.full((4, 4, 4), 16, np.int16), np.zeros((4, 4, 4), np.int16), "0-15"),
        (np.zeros((4, 4, 4), np.int16), np.full((4, 4, 4), -1, np.int16), "0-15"),
    ],
)
def test_bad_maps_are_refused(pred, ref, message):
    with pytest.raises(Unprocessable, match=message):
        metrics.evaluate_case(pred, ref, [1.0, 1.0, 1.0])


def test_a_label_against_itself_is_perfect_as_deepmind_computes_it(amos_pair):
    """The shortcut for identical masks (a final that no reviewer edited is scored against itself) gives what the
    reference implementation computes."""
    _, ref, spacing, _ = amos_pair
    same = metrics.evaluate_case(ref, ref.copy(), spacing)
    present = [o for o in ORGANS if (ref == o.id).any()]
    assert present
    for organ in present[:3]:  # DeepMind's reference on the full volume is slow: three organs show it
        mask = ref == organ.id
        deepmind = surface_distance.compute_surface_distances(mask, mask, spacing)
        assert surface_distance.compute_surface_dice_at_tolerance(deepmind, organ.nsd_tolerance_mm) == 1.0
        assert surface_distance.compute_robust_hausdorff(deepmind, 95) == 0.0
    for organ in present:
        assert same.per_organ["dice"][organ.name] == 1.0 and same.per_organ["nsd"][organ.name] == 1.0
        assert same.per_organ["hd95"][organ.name] == 0.0
