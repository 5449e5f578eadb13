"""Sliding-window prediction with optional flip test-time augmentation, on whatever device is given."""

from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple

import torch
from monai.inferers import SlidingWindowInferer


def flip_combinations(enabled: bool) -> List[Tuple[int, ...]]:
    """Spatial dims (of a (B, C, Z, Y, X) tensor) to flip, one tuple per pass; ``()`` is the unflipped pass.

    With test-time flipping on, all 8 combinations of the three axes are used, as nnU-Net does.
    """
    if not enabled:
        return [()]
    axes = (2, 3, 4)
    return [c for r in range(4) for c in itertools.combinations(axes, r)]


class SlidingWindowPredictor:
    """Class probabilities for a whole volume: Gaussian-weighted sliding window, averaged over flips.

    Args:
        patch_size: the window, in array order (z, y, x); the training patch size.
        overlap: fraction of overlap between windows.
        batch_size: windows per forward pass.
        tta_flip: average over the 8 mirrorings.
    """

    def __init__(self, patch_size: Sequence[int], overlap: float, batch_size: int, tta_flip: bool):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.flips = flip_combinations(tta_flip)
        self.window = SlidingWindowInferer(
            roi_size=self.patch_size, sw_batch_size=batch_size, overlap=overlap, mode="gaussian", progress=False
        )

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """``inputs`` (B, 1, Z, Y, X) -> probabilities (B, C, Z, Y, X), float32, on the inputs' device."""
        use_amp = inputs.device.type == "cuda"
        total = None
        with torch.inference_mode(), torch.autocast(inputs.device.type, enabled=use_amp):
            for dims in self.flips:
                x = torch.flip(inputs, dims) if dims else inputs
                logits = self.window(x, network).float()
                probs = torch.softmax(logits, dim=1)
                del logits
                if dims:
                    probs = torch.flip(probs, dims)
                total = probs if total is None else total.add_(probs)
                del probs
            total.div_(len(self.flips))
        return total
