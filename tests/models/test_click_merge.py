"""A click changes one organ, near the clicks, and no other organ's voxel."""

from __future__ import annotations

import numpy as np
import pytest

from models.click_merge import click_box, merge_organ, refine_in_box, refine_organ

LIVER, STOMACH = 6, 7


@pytest.fixture
def label():
    rng = np.random.default_rng(0)
    out = np.zeros((30, 40, 50), np.uint8)
    out[5:20, 5:25, 5:30] = LIVER
    out[10:25, 20:35, 25:45] = STOMACH  # overlaps the liver's box: stomach wins where they meet
    out[rng.random(out.shape) < 0.01] = 3  # scattered left-kidney voxels everywhere
    return out


def test_the_organ_changes_inside_the_box_and_nothing_else(label):
    box = click_box([[12, 22, 28]], label.shape, margin_mm=12.0, spacing=(3.0, 1.5, 1.5))  # at the liver's edge
    assert box == (slice(8, 17), slice(14, 31), slice(20, 37))
    mask = np.zeros(label.shape, bool)
    mask[0:30, 0:40, 0:27] = True  # the network's new liver: larger everywhere, and over the stomach
    merged = merge_organ(label, LIVER, mask, box)
    others = (label != LIVER) & (label != 0)
    assert np.array_equal(merged[others], label[others])  # every other organ, voxel for voxel
    outside = np.ones(label.shape, bool)
    outside[box] = False
    assert np.array_equal(merged[outside], label[outside])  # nothing moves outside the box
    inside = np.zeros(label.shape, bool)
    inside[box] = True
    grown = inside & (label == 0) & mask
    assert grown.any() and (merged[grown] == LIVER).all()
    dropped = inside & (label == LIVER) & ~mask
    assert dropped.any() and (merged[dropped] == 0).all()


def test_a_box_sized_mask_is_accepted_and_a_wrong_one_refused(label):
    box = click_box([[12, 15, 20], [14, 18, 22]], label.shape, margin_mm=3.0, spacing=(3.0, 1.5, 1.5))
    shape = tuple(s.stop - s.start for s in box)
    merged = merge_organ(label, LIVER, np.zeros(shape, bool), box)
    assert not (merged[box] == LIVER).any()
    with pytest.raises(ValueError, match="mask"):
        merge_organ(label, LIVER, np.zeros((2, 2, 2), bool), box)


@pytest.mark.parametrize("voxels", [[], [[30, 0, 0]], [[-1, 2, 2]], [[1, 2]]])
def test_clicks_outside_the_volume_or_malformed_are_refused(label, voxels):
    with pytest.raises(ValueError):
        click_box(voxels, label.shape, margin_mm=10.0, spacing=(1.0, 1.0, 1.0))


@pytest.fixture
def clean():
    out = np.zeros((40, 40, 40), np.uint8)
    out[5:25, 5:25, 5:25] = LIVER
    out[5:25, 26:36, 5:25] = STOMACH
    return out


def test_a_foreground_click_adds_the_networks_region_that_holds_it_and_nothing_else(clean):
    label = clean.copy()
    label[10:16, 10:16, 10:16] = 0  # a missed part of the liver
    network = clean == LIVER
    network[30:38, 30:38, 30:38] = True  # a false region of the network's, away from the click
    box = click_box([[13, 13, 13]], label.shape, margin_mm=40.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(label, LIVER, network, [(13, 13, 13)], [], box)
    assert (out[10:16, 10:16, 10:16] == LIVER).all()  # the missed part is back
    assert not (out[30:38, 30:38, 30:38] == LIVER).any()  # not connected to the click: not added
    assert np.array_equal(out == STOMACH, clean == STOMACH)
    # a foreground click never takes anything away, even where the network disagrees
    assert not ((label == LIVER) & (out != LIVER)).any()


def test_a_foreground_click_the_network_misses_still_takes_its_voxel_but_never_another_organs(clean):
    nothing = np.zeros(clean.shape, bool)
    box = click_box([[30, 30, 30]], clean.shape, margin_mm=5.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(clean, LIVER, nothing, [(30, 30, 30)], [], box)
    assert out[30, 30, 30] == LIVER and (out != clean).sum() == 1
    on_stomach = click_box([[10, 30, 10]], clean.shape, margin_mm=5.0, spacing=(1.0, 1.0, 1.0))
    assert np.array_equal(refine_organ(clean, LIVER, ~nothing, [(10, 30, 10)], [], on_stomach), clean)


def test_a_background_click_removes_a_false_blob_whole_but_only_what_the_network_rejects_of_the_organ(clean):
    label = clean.copy()
    label[30:34, 30:34, 30:34] = LIVER  # a false blob, inside the click's box
    network = clean == LIVER  # the network keeps the true liver, blob or not
    network[30:34, 30:34, 30:34] = True  # and even agrees with the blob: it goes anyway
    box = click_box([[32, 32, 32]], label.shape, margin_mm=6.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(label, LIVER, network, [], [(32, 32, 32)], box)
    assert np.array_equal(out, clean)
    # a leak of the liver itself (reaching past the box): only the voxels the network rejects go
    leak = clean.copy()
    leak[25:28, 5:25, 5:25] = LIVER
    box = click_box([[26, 15, 15]], leak.shape, margin_mm=4.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(leak, LIVER, clean == LIVER, [], [(26, 15, 15)], box)
    inside = np.zeros(leak.shape, bool)
    inside[box] = True
    assert not (out[25:28][inside[25:28]] == LIVER).any()  # the leak, inside the box
    assert np.array_equal(out[~inside], leak[~inside])  # outside the box nothing moves
    assert (out[5:25, 5:25, 5:25] == LIVER).all()  # the organ itself stays


def test_clicks_outside_the_box_are_refused(clean):
    box = click_box([[10, 10, 10]], clean.shape, margin_mm=2.0, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="outside the box"):
        refine_organ(clean, LIVER, clean == LIVER, [(30, 30, 30)], [], box)


def test_a_click_tips_the_networks_doubt_its_way_and_never_wipes_a_small_organ(clean):
    label = clean.copy()
    label[8:14, 8:14, 8:14] = 0  # a missed part of the liver
    probability = (label == LIVER).astype(np.float32)
    probability[8:14, 8:14, 8:14] = 0.3  # the network doubted it (another class came first)
    probability[30:36, 30:36, 30:36] = 0.1  # a region it hardly thought liver
    box = click_box([[11, 11, 11]], label.shape, margin_mm=40.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(label, LIVER, probability, [(11, 11, 11)], [], box)
    assert (out[8:14, 8:14, 8:14] == LIVER).all() and not (out[30:36, 30:36, 30:36] == LIVER).any()
    # a small organ lying whole inside the box is not a blob: a background click on its doubtful edge takes the
    # edge, not the organ
    small = np.zeros((40, 40, 40), np.uint8)
    small[18:22, 18:22, 18:24] = LIVER
    doubt = (small == LIVER).astype(np.float32)
    doubt[18:22, 18:22, 22:24] = 0.6  # the network is unsure of this end
    box = click_box([[20, 20, 23]], small.shape, margin_mm=10.0, spacing=(1.0, 1.0, 1.0))
    out = refine_organ(small, LIVER, doubt, [], [(20, 20, 23)], box)
    assert not (out[18:22, 18:22, 22:24] == LIVER).any() and (out[18:22, 18:22, 18:22] == LIVER).all()
    sure = refine_organ(small, LIVER, small == LIVER, [], [(20, 20, 23)], box)
    assert (sure != small).sum() == 1  # where the network is sure, only the clicked voxel goes


def test_a_box_makes_the_organ_the_networks_largest_region_inside_it_and_changes_nothing_outside(clean):
    label = clean.copy()
    prob = np.zeros(label.shape, np.float32)
    prob[8:30, 8:30, 8:30] = 0.9  # the network's liver, larger than the label's and over the stomach
    prob[2:4, 2:4, 2:4] = 0.9  # a small second region in the box: not the organ
    box = (slice(0, 32), slice(0, 32), slice(0, 32))
    out = refine_in_box(label, LIVER, prob, box)
    assert (out[8:25, 8:26, 8:30] == LIVER).all()  # grown where it was background
    assert (out[5:8, 5:8, 5:8] == 0).all()  # what the network does not give the organ in the box is dropped
    assert not (out[2:4, 2:4, 2:4] == LIVER).any()  # the smaller region is not the organ
    assert np.array_equal(out == STOMACH, clean == STOMACH)  # never another organ's voxel
    outside = np.ones(label.shape, bool)
    outside[box] = False
    assert np.array_equal(out[outside], clean[outside])
    part = label.copy()
    part[26:30, 2:6, 2:6] = LIVER  # a second part of the organ, apart from the rest
    prob[26:31, 1:6, 1:6] = 0.9  # which the network confirms: kept, not dropped for being smaller
    assert (refine_in_box(part, LIVER, prob, box)[26:31, 2:6, 2:6] == LIVER).all()
    weak = np.where(prob > 0, 0.3, 0.0).astype(np.float32)  # under 0.5 everywhere: the click's threshold
    assert (refine_in_box(label, LIVER, weak, box)[20, 20, 20] == LIVER).all()
    assert np.array_equal(refine_in_box(label, LIVER, np.zeros_like(prob), box), label)  # nothing found: unchanged
