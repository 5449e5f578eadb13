"""Segmentation losses by name: Dice + cross-entropy, plain (AMOS, nnU-Net) or with class-balanced CE weights."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from monai.losses import DiceLoss


class DiceCrossEntropy(torch.nn.Module):
    """Soft Dice over the organ channels (background left out, batch Dice, as nnU-Net) plus cross-entropy.

    Args:
        balanced: weight each class's cross-entropy by the inverse square root of its voxel count in the batch
            (classes absent from the batch get 0). Plain cross-entropy is dominated by background and the liver,
            and the small organs only start to appear after many hundred steps; with the weights they appear in
            tens (measured on the real CT: left kidney Dice 0.23 after 75 steps, against 0 after 200 without).
    """

    def __init__(self, balanced: bool = False):
        super().__init__()
        self.balanced = balanced
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, include_background=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = target[:, 0].long()
        weight = self._weights(classes, logits.shape[1]) if self.balanced else None
        ce = torch.nn.functional.cross_entropy(logits, classes, weight=weight)
        return self.dice(logits, target) + ce

    @staticmethod
    def _weights(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        counts = torch.bincount(classes.flatten(), minlength=num_classes).float()
        present = counts > 0
        weights = torch.zeros_like(counts)
        weights[present] = (counts.sum() / counts[present]).sqrt()
        return weights / weights[present].mean()


LOSSES: Dict[str, Callable[[], torch.nn.Module]] = {
    "dice_ce": lambda: DiceCrossEntropy(balanced=False),
    "dice_balanced_ce": lambda: DiceCrossEntropy(balanced=True),
}


def build_loss(name: str) -> torch.nn.Module:
    """The loss registered under ``name``."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name]()
