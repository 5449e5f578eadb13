"""The region of a scan a click network sees, and the network's answer there.

Pure array and tensor code (numpy, torch, MONAI's sliding window), so that the server's click task
(:mod:`models.click_task`), the click bench and the GPU check (:mod:`bench.gpu_check`, on a machine without MONAI
Label or SimpleITK) run the same code.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from models.click_merge import Box, Voxel
from models.click_network import guidance_channels
from models.inference import SlidingWindowPredictor


def organ_probability(
    network: torch.nn.Module,
    image: np.ndarray,
    guidance: Dict[str, List[Voxel]],
    organ: int,
    patch_zyx: Sequence[int],
    device: str,
) -> np.ndarray:
    """The click network's probability of ``organ`` over ``image`` (1, z, y, x), given the clicks (label name ->
    voxels); float32 (z, y, x).

    A region smaller than the training patch runs in one window of its own size (rounded up to 16 voxels, what a
    five-level UNet divides by), so a click near a small organ costs a small forward pass.
    """
    inputs = guidance_channels(image, {name: points for name, points in guidance.items() if points})
    window = [min(int(p), int(np.ceil(n / 16) * 16)) for p, n in zip(patch_zyx, image.shape[1:])]
    predictor = SlidingWindowPredictor(window, 0.25, 1, tta_flip=False)
    probabilities = predictor(torch.as_tensor(inputs)[None].to(device), network)[0]
    return probabilities[organ].float().cpu().numpy()


def region_around(
    boxes,
    shape: Sequence[int],
    context_mm: float,
    spacing: Sequence[float],
    least_mm: Optional[Sequence[float]] = None,
) -> Box:
    """The smallest box holding ``boxes``, widened by ``context_mm`` and clipped to the volume; then, where it is
    narrower than ``least_mm`` (z, y, x), widened about its centre to that extent (inside the volume).

    ``least_mm`` is one training patch (:meth:`models.infer_task.VersionRecipe.patch_mm`): a network that learned
    from patches of that extent answers badly on less context. (Measured by ``make bench-clicks``: on a crop of a
    third of its training extent, the bench's network lost most of each organ it had found on the whole volume, and
    every click made the label worse.)
    """
    boxes = list(boxes)
    spacing = np.asarray(spacing, dtype=float)
    size = np.asarray(shape)
    margin = np.ceil(context_mm / spacing).astype(int)
    low = np.maximum(np.min([[s.start for s in b] for b in boxes], axis=0) - margin, 0)
    high = np.minimum(np.max([[s.stop for s in b] for b in boxes], axis=0) + margin, size)
    if least_mm is not None:
        least = np.ceil(np.asarray(least_mm, dtype=float) / spacing).astype(int)
        width = np.maximum(high - low, np.minimum(least, size))
        low = np.clip((low + high - width) // 2, 0, size - width)
        high = low + width
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def in_box(mask: np.ndarray, roi: Box, box: Box) -> np.ndarray:
    """The part of a roi-shaped mask that lies in ``box`` (which the roi holds)."""
    return mask[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, roi))]
