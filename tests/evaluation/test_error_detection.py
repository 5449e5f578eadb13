"""The error-detection metrics on a case made to have a known error region."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.error_detection import (
    best_recall,
    failed_organs,
    organ_dice,
    random_recall,
    recall_at_failing_share,
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


def test_a_half_failing_set_caps_the_recall_and_a_realistic_share_lifts_the_cap():
    scores = {f"c{i:02d}": float(i) for i in range(40)}  # c39 ranks first
    failing = [f"c{i:02d}" for i in range(20, 40)]  # a perfect ranking: the top half fails
    assert top_fraction_recall(scores, failing, 0.2) == pytest.approx(8 / 20)  # the budget holds 8 of 20
    assert best_recall(40, 20, 0.2) == pytest.approx(0.4) and best_recall(40, 4, 0.2) == 1.0
    # 20 % failing: every passing case and 5 of the 20 failing ones per draw; a perfect ranking finds them all
    assert recall_at_failing_share(scores, failing, 0.2, share=0.2) == pytest.approx(1.0)
    reversed_scores = {case: -score for case, score in scores.items()}  # the worst ranking finds none
    assert recall_at_failing_share(reversed_scores, failing, 0.2, share=0.2) == 0.0
    # half the failing cases first and half last: the recall is the share of the drawn ones that were first
    mixed = {**scores, **{case: 100.0 for case in failing[::2]}, **{case: -1.0 for case in failing[1::2]}}
    assert 0.3 < recall_at_failing_share(mixed, failing, 0.2, share=0.2) < 0.7
    few = failing[:3]  # already under the share: the set is taken whole
    assert recall_at_failing_share(scores, few, 0.2, share=0.2) == top_fraction_recall(scores, few, 0.2)
    assert recall_at_failing_share(scores, failing, 0.2, share=0.2) == recall_at_failing_share(
        scores, failing, 0.2, share=0.2
    )  # seeded
    with pytest.raises(ValueError, match="between 0 and 1"):
        recall_at_failing_share(scores, failing, 0.2, share=1.0)
