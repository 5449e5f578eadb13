"""A click changes one organ, near the clicks, and no other organ's voxel."""

from __future__ import annotations

import numpy as np
import pytest

from models.click_merge import click_box, merge_organ

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
