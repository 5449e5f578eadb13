"""The simulated annotator: where it clicks, and how clicks-to-goal counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation.clicks import (
    T_BOX_S,
    T_CLICK_S,
    T_SCRIBBLE_S,
    Click,
    box_then_clicks,
    click_minutes,
    clicks_to_goal,
    mixed_minutes,
    next_click,
    next_lasso,
    next_scribble,
    organ_box,
    organ_dice,
)

LIVER, SPLEEN = 6, 1


def ball(shape, centre, radius):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def test_a_missed_part_gets_a_foreground_click_at_its_centre():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[ball(truth.shape, (20, 20, 20), 12)] = LIVER
    prediction = truth.copy()
    prediction[:, :, 25:][truth[:, :, 25:] == LIVER] = 0  # the liver's right part missed
    click = next_click(prediction, truth, LIVER)
    assert click is not None and click.positive and click.organ == LIVER
    missed = (truth == LIVER) & (prediction != LIVER)
    assert missed[click.voxel]
    depth = ndimage.distance_transform_edt(np.pad(missed, 1))[1:-1, 1:-1, 1:-1]
    assert depth[click.voxel] == depth.max()  # the deepest voxel of the region, not its edge


def test_the_largest_error_wins_and_a_false_blob_gets_a_background_click():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[ball(truth.shape, (20, 20, 20), 8)] = LIVER
    prediction = truth.copy()
    prediction[ball(truth.shape, (20, 20, 20), 8) & (np.indices(truth.shape)[0] < 17)] = 0  # a small miss
    prediction[ball(truth.shape, (8, 8, 30), 6)] = LIVER  # a larger false blob
    click = next_click(prediction, truth, LIVER)
    assert click is not None and not click.positive
    assert ball(truth.shape, (8, 8, 30), 6)[click.voxel]


def test_a_missed_part_another_organ_holds_is_not_this_organs_click():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[ball(truth.shape, (20, 20, 20), 12)] = LIVER
    prediction = truth.copy()
    prediction[:, :, 22:][truth[:, :, 22:] == LIVER] = SPLEEN  # a large part held by the spleen
    prediction[18:22, 18:22, 10:14] = 0  # a small part missed on background
    click = next_click(prediction, truth, LIVER)
    assert click is not None and click.positive and prediction[click.voxel] == 0
    prediction[18:22, 18:22, 10:14] = LIVER
    assert next_click(prediction, truth, LIVER) is None  # what is left is the spleen's to give back
    assert next_click(prediction, truth, SPLEEN) is not None and not next_click(prediction, truth, SPLEEN).positive


def test_spacing_counts_in_millimetres():
    """A missed slab 5 slices thick at 5 mm: in voxels its centre is anywhere on the middle slice; in mm, the
    slab's in-plane centre is the one voxel farthest from every border."""
    truth = np.zeros((5, 21, 21), np.uint8)
    truth[:] = SPLEEN
    click = next_click(np.zeros_like(truth), truth, SPLEEN, spacing=(5.0, 1.0, 1.0))
    assert click is not None and click.positive and click.voxel == (2, 10, 10)


def test_no_error_no_click_and_dice():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:5, 2:5, 2:5] = LIVER
    assert next_click(truth, truth, LIVER) is None
    assert organ_dice(truth, truth, LIVER) == 1.0 and organ_dice(truth, truth, SPLEEN) == 1.0
    assert organ_dice(np.zeros_like(truth), truth, LIVER) == 0.0


def fill_component(truth):
    """An oracle refinement: each click fixes the whole error region it lies in (and nothing else)."""

    def refine(label, clicks):
        click: Click = clicks[-1]
        wrong = (truth == click.organ) != (label == click.organ)
        components, _ = ndimage.label(wrong)
        part = components == components[click.voxel]
        out = label.copy()
        out[part] = np.where(truth[part] == click.organ, click.organ, 0)
        return out

    return refine


def three_missed_slabs():
    """A cube of liver, and a start that misses three separate slabs of it."""
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[5:25, 5:25, 5:25] = LIVER
    start = truth.copy()
    for z in (6, 12, 18):
        start[z : z + 3, 5:25, 5:25] = 0
    return truth, start


def test_clicks_to_goal_counts_one_click_per_error_region():
    truth, start = three_missed_slabs()
    run = clicks_to_goal(start, truth, LIVER, fill_component(truth), goal=0.99)
    assert run.reached_at == 3 and len(run.clicks) == 3 and all(c.positive for c in run.clicks)
    assert run.dice[0] < run.dice[1] < run.dice[2] < run.dice[3] and run.dice[-1] == 1.0
    # a lower goal read off the same run: the first click at which the Dice reached it
    lower = run.dice[2] - 1e-6
    assert run.clicks_to(lower, cap=20) == 2 and run.clicks_to(run.dice[0], cap=20) == 0
    assert run.clicks_to(1.01, cap=20) == 20


def test_a_refinement_that_never_helps_is_counted_at_the_cap():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = LIVER
    start = np.zeros_like(truth)
    run = clicks_to_goal(start, truth, LIVER, lambda label, clicks: label, goal=0.9, cap=4)
    assert run.reached_at is None and len(run.clicks) == 4 and run.noc(20) == 20
    already = clicks_to_goal(truth, truth, LIVER, lambda label, clicks: label)
    assert already.reached_at == 0 and already.clicks == []


def test_a_box_first_counts_as_one_interaction_and_its_minutes_are_counted():
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[5:25, 5:25, 5:25] = LIVER
    start = np.zeros_like(truth)
    assert organ_box(truth, LIVER) == (slice(4, 26),) * 3  # the reference's extent and a voxel more
    drawn = []

    def box_fills_most(label, organ, box):  # a box answer that finds all but one slab
        drawn.append(box)
        out = label.copy()
        out[truth == organ] = organ
        out[10:13, 5:25, 5:25] = 0
        return out

    run = box_then_clicks(start, truth, LIVER, box_fills_most, fill_component(truth), goal=0.99, cap=5)
    assert drawn == [organ_box(truth, LIVER)] and run.boxes == 1
    assert run.dice[0] == 0.0 and 0.8 < run.dice[1] < 1.0 and run.dice[2] == 1.0  # start, after the box, a click
    assert run.reached_at == 2 and len(run.clicks) == 1 and run.noc(20) == 2
    assert click_minutes(run, 0.0) == pytest.approx((T_CLICK_S + T_BOX_S) / 60)
    already = box_then_clicks(truth, truth, LIVER, box_fills_most, fill_component(truth))
    assert already.reached_at == 0 and already.boxes == 0 and len(drawn) == 1  # at the goal: no box drawn
    never = box_then_clicks(start, truth, LIVER, lambda label, organ, box: label, lambda label, clicks: label, cap=3)
    assert never.reached_at is None and never.boxes == 1 and len(never.clicks) == 2  # the box is one of the cap


def test_a_scribble_runs_along_the_largest_errors_cross_section_on_its_centre_slice():
    truth = np.zeros((20, 30, 30), np.uint8)
    truth[4:16, 5:25, 5:25] = LIVER
    start = truth.copy()
    start[8:12, 10:14, 5:25] = 0  # a missed bar along x, 20 voxels long
    scribble = next_scribble(start, truth, LIVER)
    centre = next_click(start, truth, LIVER)
    assert scribble and all(c.positive and c.organ == LIVER for c in scribble)
    assert {c.voxel[0] for c in scribble} == {centre.voxel[0]} and centre.voxel in [c.voxel for c in scribble]
    xs = sorted(c.voxel[2] for c in scribble)
    assert xs[-1] - xs[0] >= 15  # along the bar, not a point
    assert all(start[c.voxel] == 0 and truth[c.voxel] == LIVER for c in scribble)  # all on the missed part
    blob = truth.copy()
    blob[2, 2:6, 2:6] = LIVER  # a false blob: a background scribble
    assert not any(c.positive for c in next_scribble(blob, truth, LIVER))
    assert next_scribble(truth, truth, LIVER) == []
    # a lasso around the same cross-section: every voxel of the bar on that slice
    lasso = next_lasso(start, truth, LIVER)
    assert sorted(c.voxel for c in lasso) == [(centre.voxel[0], y, x) for y in range(10, 14) for x in range(5, 25)]


def test_a_scribble_a_round_counts_one_interaction_each_and_its_own_minutes():
    truth, start = three_missed_slabs()
    run = clicks_to_goal(start, truth, LIVER, fill_component(truth), goal=0.99, annotator=next_scribble)
    assert run.reached_at == 3 and run.rounds == 3 and len(run.clicks) > 3  # three strokes of many voxels
    assert click_minutes(run, 0.0, T_SCRIBBLE_S) == pytest.approx(3 * T_SCRIBBLE_S / 60)


def test_the_annotator_takes_the_brush_at_the_first_interaction_that_changes_nothing():
    truth, start = three_missed_slabs()
    helpful = clicks_to_goal(start, truth, LIVER, fill_component(truth), goal=0.99)
    assert helpful.stalled_at is None  # every click raised the Dice: no stall, the brush is not needed
    assert mixed_minutes(helpful, 0.5) == click_minutes(helpful, 0.5)
    useless = clicks_to_goal(start, truth, LIVER, lambda label, clicks: label, goal=0.99, cap=5)
    assert useless.stalled_at == 1 and np.array_equal(useless.at_stall, start) and useless.rounds == 5
    assert mixed_minutes(useless, 2.0) == pytest.approx(T_CLICK_S / 60 + 2.0)  # one click, then the brush
    harmful = clicks_to_goal(start, truth, LIVER, lambda label, clicks: np.zeros_like(label), goal=0.99, cap=3)
    assert harmful.stalled_at == 1 and np.array_equal(harmful.at_stall, start)  # undone: the brush starts before it
    assert click_minutes(useless, 2.0) == pytest.approx(5 * T_CLICK_S / 60 + 2.0)

    def box_fills_most(label, organ, box):
        out = label.copy()
        out[truth == organ] = organ
        out[10:13, 5:25, 5:25] = 0
        return out

    boxed = box_then_clicks(
        np.zeros_like(truth), truth, LIVER, box_fills_most, lambda label, clicks: label, goal=0.99, cap=4
    )
    assert (
        boxed.stalled_at == 2 and (boxed.at_stall == LIVER).sum() == (box_fills_most(truth, LIVER, None) == LIVER).sum()
    )
    assert mixed_minutes(boxed, 1.0) == pytest.approx((T_BOX_S + T_CLICK_S) / 60 + 1.0)  # the box, a click, the brush
