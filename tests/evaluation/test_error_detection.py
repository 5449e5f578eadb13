"""The error-detection metrics on a case made to have a known error region."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.error_detection import (
    failed_organs,
    organ_dice,
    random_recall,
    top_fraction_recall,
    voxel_detection,
)

LIVER, SPLEEN = 6, 1


@pytest.fixture
def made_case():
    """A reference with a liver and a spleen; the pre-label misses a slab of the liver and adds a false blob."""
    reference = np.zeros((12, 20, 20), np.int64)
    reference[2:10, 2:12, 2:12] = LIVER
    reference[2:10, 14:18, 14:18] = SPLEEN
    prelabel = reference.copy()
    prelabel[2:10, 2:12, 2:6] = 0  # missed liver (4 of 10 columns)
    prelabel[0:2, 0:3, 15:19] = SPLEEN  # a false blob
    body = np.ones_like(reference, bool)
    body[:, :, 19] = False  # the edge is outside the body: not scored
    return reference, prelabel, body


def test_a_heat_equal_to_the_error_map_scores_one_and_a_constant_heat_one_half(made_case):
    reference, prelabel, body = made_case
    error = prelabel != reference
    perfect = voxel_detection(error.astype(float), error, body)
    assert perfect.auroc == 1.0 and perfect.average_precision == 1.0
    assert perfect.error_voxels == int(error[body].sum()) and perfect.body_voxels == int(body.sum())
    constant = voxel_detection(np.ones(error.shape), error, body)
    assert constant.auroc == 0.5 and constant.average_precision == pytest.approx(constant.error_rate)
    assert voxel_detection((~error).astype(float), error, body).auroc == 0.0
    # a heat that finds the missed liver but not the false blob sits in between
    half = np.zeros(error.shape)
    half[2:10, 2:12, 2:6] = 1
    assert 0.5 < voxel_detection(half, error, body).auroc < 1.0


def test_detection_is_undefined_without_errors_and_refuses_another_grid(made_case):
    reference, _, body = made_case
    none = voxel_detection(np.random.default_rng(0).random(reference.shape), np.zeros(reference.shape, bool), body)
    assert math.isnan(none.auroc) and math.isnan(none.average_precision) and none.error_voxels == 0
    with pytest.raises(ValueError, match="share a grid"):
        voxel_detection(np.zeros((2, 2, 2)), reference > 0, body)


def test_an_organ_fails_below_dice_0_8(made_case):
    reference, prelabel, _ = made_case
    dice = organ_dice(prelabel, reference)
    assert set(dice) == {LIVER, SPLEEN}
    assert dice[LIVER] == pytest.approx(2 * 480 / (480 + 800))  # 6 of 10 columns kept: 0.75
    assert failed_organs(prelabel, reference) == [LIVER]
    assert failed_organs(reference, reference) == []
    missing = prelabel.copy()
    missing[missing == SPLEEN] = 0
    assert failed_organs(missing, reference) == [SPLEEN, LIVER]  # a missed organ scores 0


def test_recall_at_a_budget_counts_failing_cases_in_the_top_share():
    scores = {f"c{i:02d}": float(i) for i in range(20)}  # c19 ranks first
    assert top_fraction_recall(scores, ["c19", "c18", "c00"], 0.1) == pytest.approx(2 / 3)
    assert top_fraction_recall(scores, ["c00"], 0.2) == 0.0
    assert math.isnan(top_fraction_recall(scores, [], 0.2))
    assert random_recall(20, 0.1) == 0.1 and random_recall(7, 0.2) == pytest.approx(2 / 7)
