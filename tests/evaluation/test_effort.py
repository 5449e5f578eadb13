"""The correction-effort model on hand-made label maps with known answers, and on a real AMOS label pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.organs import ORGAN_BY_ID
from evaluation.effort import EffortModel, OrganEffort, correction_effort, empty_effort, total
from tests.conftest import SHARED as SHARED_DATA

SPLEEN = 1  # tolerance 3 mm
LIVER = 6
MODEL = EffortModel()
ISOTROPIC = (1.0, 1.0, 1.0)


def _spleen() -> np.ndarray:
    """A 16 x 12 mm box on slices 2-5 of a 1 mm grid."""
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[2:6, 10:26, 10:22] = SPLEEN
    return labels


def test_a_perfect_prediction_costs_only_the_look_at_each_slice():
    reference = _spleen()
    effort = correction_effort(reference.copy(), reference, ISOTROPIC)
    assert list(effort) == [SPLEEN], "organs absent from both maps are left out"
    spleen = effort[SPLEEN]
    assert (spleen.voxels, spleen.slices, spleen.pieces_add, spleen.pieces_remove) == (0, 0, 0, 0)
    assert spleen.contour_mm == 0 and spleen.checked_slices == 4
    assert spleen.minutes == pytest.approx(MODEL.t_check_s * 4 / 60)


def test_an_empty_prediction_draws_every_slice_and_starts_every_piece():
    reference = _spleen()
    reference[7:9, 30:35, 30:35] = SPLEEN  # a second piece, two more slices
    effort = empty_effort(reference, ISOTROPIC)[SPLEEN]
    perfect = correction_effort(reference, reference, ISOTROPIC)[SPLEEN]
    assert effort.slices == 6 and effort.checked_slices == 0
    assert effort.pieces_add == 2 and effort.pieces_remove == 0
    assert effort.voxels == int((reference == SPLEEN).sum())
    boundary = 4 * (2 * 16 + 2 * 12 - 4) + 2 * (4 * 5 - 4)  # boundary pixels of each slice's rectangle
    assert effort.contour_mm == pytest.approx(boundary)
    assert effort.minutes == pytest.approx((4 * 6 + boundary / 10 + 10 * 2) / 60)
    assert effort.minutes > perfect.minutes


def test_a_false_blob_is_a_piece_to_remove_on_every_slice_it_lies_on():
    reference = _spleen()
    prediction = reference.copy()
    prediction[4:8, 30:36, 30:36] = SPLEEN  # away from the organ, on slices 4-7 (the organ is on 2-5)
    spleen = correction_effort(prediction, reference, ISOTROPIC)[SPLEEN]
    assert spleen.pieces_remove == 1 and spleen.pieces_add == 0
    assert spleen.slices == 4 and spleen.checked_slices == 2  # 4-7 edited, 2-3 only looked at
    assert spleen.voxels == 4 * 36
    # slices 4-5 hold the spleen too: the blob's contour is erased there; on 6-7 the slice is wiped in one action
    assert spleen.contour_mm == pytest.approx(2 * 20)


def test_a_shift_within_the_tolerance_needs_no_edit():
    reference = _spleen()
    prediction = np.roll(reference, 1, axis=2)  # 1 mm, tolerance 3 mm
    spleen = correction_effort(prediction, reference, ISOTROPIC)[SPLEEN]
    assert spleen.voxels > 0
    assert spleen.slices == 0 and spleen.contour_mm == 0 and spleen.checked_slices == 4


def test_a_shift_beyond_the_tolerance_needs_an_edit_on_each_slice():
    reference = _spleen()
    prediction = np.roll(reference, 5, axis=2)  # 5 mm, tolerance 3 mm
    spleen = correction_effort(prediction, reference, ISOTROPIC)[SPLEEN]
    assert spleen.slices == 4 and spleen.checked_slices == 0 and spleen.contour_mm > 0
    assert spleen.pieces_add == spleen.pieces_remove == 0
    # the same shift is within tolerance when a pixel is 0.5 mm
    assert correction_effort(prediction, reference, (1.0, 0.5, 0.5))[SPLEEN].slices == 0


def test_the_variants_price_the_same_counts_differently():
    effort = OrganEffort(voxels=7, slices=3, checked_slices=2, contour_mm=120.0, pieces_add=1, pieces_remove=1)
    variants = EffortModel.variants()
    assert variants["stated"] == EffortModel()
    assert variants["stated"].minutes(effort) == pytest.approx((4 * 3 + 12 + 10 * 2 + 2) / 60)
    assert variants["slices only"].minutes(effort) == pytest.approx((4 * 3 + 10 * 2 + 2) / 60)
    assert variants["contour only"].minutes(effort) == pytest.approx(12 / 60)
    assert math.isinf(variants["slices only"].draw_speed_mm_s)
    summed = total([effort, effort])
    assert summed.slices == 6 and summed.contour_mm == 240 and summed.pieces_remove == 2


def test_maps_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        correction_effort(np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 9), np.uint8), ISOTROPIC)


def test_the_perturbed_amos_prediction_costs_less_than_an_empty_start():
    labels = SHARED_DATA / "labels"
    reference_image = sitk.ReadImage(str(labels / "amos_0013_label.nii.gz"))
    reference = sitk.GetArrayFromImage(reference_image)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / "amos_0013_pred_perturbed.nii.gz")))
    spacing = reference_image.GetSpacing()[::-1]
    corrected = correction_effort(prediction, reference, spacing)
    empty = empty_effort(reference, spacing)
    assert corrected[LIVER].minutes < empty[LIVER].minutes
    assert total(corrected.values()).minutes < total(empty.values()).minutes
    # a sanity band around AbdomenAtlas's 30-60 min per organ by hand, not a tuned number
    assert 15 < empty[LIVER].minutes < 90, f"{ORGAN_BY_ID[LIVER].name} from empty: {empty[LIVER].minutes:.1f} min"
    assert empty[LIVER].slices == int((reference == LIVER).any(axis=(1, 2)).sum())
