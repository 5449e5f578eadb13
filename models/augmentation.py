"""Training-time patch sampling and the AMOS paper's data augmentation.

Patch sampling is nnU-Net's: a configured fraction of patches is centred on a voxel of a randomly chosen organ
present in the case (class-balanced, so small organs such as the adrenals are seen), the rest anywhere. Each random
transform draws its parameters from its own seeded generator (MONAI's ``Randomizable``), so a training run is
replayable from the seed recorded in the model version.

AMOS augmentations (probability, range): rotation 0.2 [-0.52, 0.52] rad; scale 0.2 [0.7, 1.4]; Gaussian noise
0.1 variance [0, 0.1]; Gaussian blur 0.2 sigma [0.5, 1]; brightness 0.15 [0.75, 1.25]; contrast 0.15 [0.75, 1.25];
simulated low resolution 0.25 [0.5, 1]; gamma 0.3 [0.7, 1.5]; mirroring on every axis (each axis with p = 0.5).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandZoomd,
)

from amoslabel.organs import MAX_LABEL_ID

MAX_INDICES_PER_CLASS = 20000


class SampleClassIndicesd:
    """Deterministic (cacheable): store up to N flat voxel indices per organ present in ``label``.

    Storing a bounded sample instead of every foreground index keeps the disk cache small (a full index list of
    a CT is hundreds of MB) while leaving every organ enough centres to sample from.
    """

    def __init__(self, max_per_class: int = MAX_INDICES_PER_CLASS, seed: int = 0):
        self.max_per_class = max_per_class
        self.seed = seed

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        flat = np.asarray(d["label"]).reshape(-1)
        rng = np.random.default_rng(self.seed)
        indices: Dict[int, np.ndarray] = {}
        counts = np.bincount(flat, minlength=MAX_LABEL_ID + 1)
        for organ in range(1, MAX_LABEL_ID + 1):
            if counts[organ] == 0:
                continue
            where = np.flatnonzero(flat == organ)
            if len(where) > self.max_per_class:
                where = rng.choice(where, self.max_per_class, replace=False)
            indices[organ] = where.astype(np.int64)
        d["class_indices"] = indices
        return d


class RandClassBalancedCropd(Randomizable):
    """Crop a patch of ``patch_size`` (z, y, x) from ``image`` and ``label``, padding volumes that are smaller.

    With probability ``foreground_fraction`` the patch is centred on a voxel of one organ present in the case,
    chosen uniformly among those organs; otherwise its centre is uniform over the volume. The drawn centre is
    recorded in ``crop_centre``.
    """

    def __init__(self, patch_size: Sequence[int], foreground_fraction: float):
        self.patch = tuple(int(p) for p in patch_size)
        self.foreground_fraction = foreground_fraction
        self._centre: tuple = ()

    def randomize(self, shape: Sequence[int], class_indices: Dict[int, np.ndarray]) -> None:
        if class_indices and self.R.rand() < self.foreground_fraction:
            organ = list(class_indices)[self.R.randint(len(class_indices))]
            choices = class_indices[organ]
            flat = int(choices[self.R.randint(len(choices))])
            self._centre = tuple(int(c) for c in np.unravel_index(flat, shape))
        else:
            self._centre = tuple(int(self.R.randint(s)) for s in shape)

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        image = torch.as_tensor(np.asarray(d["image"]))
        label = torch.as_tensor(np.asarray(d["label"]))
        shape = image.shape[1:]
        self.randomize(shape, d.get("class_indices") or {})
        d["image"] = _crop(image, self._centre, self.patch, pad_value=float(image.min()))
        d["label"] = _crop(label, self._centre, self.patch, pad_value=0)
        d["crop_centre"] = list(self._centre)
        d.pop("class_indices", None)
        return d


def _crop(array: torch.Tensor, centre: Sequence[int], patch: Sequence[int], pad_value: float) -> torch.Tensor:
    """A ``patch``-sized window of ``array`` (C, Z, Y, X) around ``centre``, padded where it leaves the volume."""
    out = torch.full((array.shape[0], *patch), pad_value, dtype=array.dtype)
    src, dst = [], []
    for c, p, s in zip(centre, patch, array.shape[1:]):
        start = int(np.clip(c - p // 2, min(0, s - p), max(0, s - p)))
        lo, hi = max(start, 0), min(start + p, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def amos_augmentations(seed: int) -> Compose:
    """The AMOS paper's augmentation pipeline for ``image`` and ``label`` patches (channel-first)."""
    both = ["image", "label"]
    angle = 0.52
    transforms: List[Any] = [
        RandRotated(
            keys=both,
            range_x=angle,
            range_y=angle,
            range_z=angle,
            prob=0.2,
            mode=("bilinear", "nearest"),
            padding_mode="border",
            keep_size=True,
        ),
        RandZoomd(
            keys=both,
            min_zoom=0.7,
            max_zoom=1.4,
            prob=0.2,
            mode=("trilinear", "nearest"),
            padding_mode="edge",
            keep_size=True,
        ),
        # variance in [0, 0.1]: MONAI draws the standard deviation uniformly from [0, std]
        RandGaussianNoised(keys="image", prob=0.1, mean=0.0, std=math.sqrt(0.1), sample_std=True),
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),  # brightness: x * [0.75, 1.25]
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, fixed_mean=True, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond(keys="image", zoom_range=(0.5, 1.0), prob=0.25),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
        RandFlipd(keys=both, spatial_axis=0, prob=0.5),
        RandFlipd(keys=both, spatial_axis=1, prob=0.5),
        RandFlipd(keys=both, spatial_axis=2, prob=0.5),
    ]
    pipeline = Compose(transforms, map_items=True)
    pipeline.set_random_state(seed=seed)
    return pipeline
