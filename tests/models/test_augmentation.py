"""Patch sampling and the AMOS augmentations: the paper's probabilities and ranges, replayable from a seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import (
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandZoomd,
)

from models.augmentation import RandClassBalancedCropd, SampleClassIndicesd, amos_augmentations


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(1, 40, 70, 80)).astype(np.float32))
    label = torch.zeros((1, 40, 70, 80), dtype=torch.uint8)
    label[0, 10:20, 10:30, 10:30] = 6  # a large organ
    label[0, 30:33, 50:53, 60:63] = 11  # a tiny one
    data = SampleClassIndicesd()({"image": image, "label": label.numpy()})
    data["label"] = label
    return data


def test_paper_probabilities_and_ranges():
    found = {type(t): t for t in amos_augmentations(0).transforms}
    assert found[RandRotated].prob == 0.2 and found[RandRotated].rand_rotate.range_x == (-0.52, 0.52)
    assert found[RandZoomd].prob == 0.2
    assert (found[RandZoomd].rand_zoom.min_zoom, found[RandZoomd].rand_zoom.max_zoom) == ((0.7,), (1.4,))
    assert found[RandGaussianNoised].prob == 0.1 and found[RandGaussianNoised].rand_gaussian_noise.std == pytest.approx(
        math.sqrt(0.1)
    )
    assert found[RandGaussianSmoothd].prob == 0.2 and found[RandGaussianSmoothd].rand_smooth.sigma_x == (0.5, 1.0)
    assert found[RandScaleIntensityd].prob == 0.15 and found[RandScaleIntensityd].scaler.factors == (-0.25, 0.25)
    assert found[RandScaleIntensityFixedMeand].prob == 0.15
    assert found[RandSimulateLowResolutiond].prob == 0.25
    assert found[RandSimulateLowResolutiond].sim_lowres_tfm.zoom_range == (0.5, 1.0)
    assert found[RandAdjustContrastd].prob == 0.3 and found[RandAdjustContrastd].adjuster.gamma == (0.7, 1.5)
    flips = [t for t in amos_augmentations(0).transforms if isinstance(t, RandFlipd)]
    assert sorted(f.flipper.spatial_axis for f in flips) == [0, 1, 2] and all(f.prob == 0.5 for f in flips)


def test_same_seed_replays_the_same_patches(volume):
    def run(seed):
        crop = RandClassBalancedCropd((32, 32, 32), 0.67)
        crop.set_random_state(seed)
        aug = amos_augmentations(seed)
        return [aug(crop(volume)) for _ in range(4)]

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"])) for x, y in zip(a, b))
    assert not all(torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"])) for x, y in zip(a, c))


def test_crops_have_the_patch_size_and_record_their_centre(volume):
    crop = RandClassBalancedCropd((48, 48, 48), 1.0)  # larger than the volume's z: padded
    crop.set_random_state(0)
    out = crop(volume)
    assert tuple(out["image"].shape) == (1, 48, 48, 48) and tuple(out["label"].shape) == (1, 48, 48, 48)
    assert len(out["crop_centre"]) == 3


def test_foreground_patches_are_balanced_across_organs(volume):
    crop = RandClassBalancedCropd((16, 16, 16), 1.0)
    crop.set_random_state(0)
    hits = {6: 0, 11: 0}
    for _ in range(200):
        labels = set(torch.unique(crop(volume)["label"]).tolist())
        for organ in hits:
            hits[organ] += organ in labels
    # the tiny organ (27 voxels vs 4000) is in about half the patches, not in 27/4027 of them
    assert hits[11] > 60 and hits[6] > 60
