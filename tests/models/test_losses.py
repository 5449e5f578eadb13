"""Dice + cross-entropy, plain and class-balanced."""

from __future__ import annotations

import pytest
import torch

from models.losses import DiceCrossEntropy, build_loss


def _batch():
    target = torch.zeros(1, 1, 16, 16, 16)
    target[0, 0, :8] = 6  # half the patch is liver
    target[0, 0, 12:14, 4:6, 4:6] = 2  # eight voxels of kidney
    return target


def test_balanced_weights_follow_inverse_sqrt_frequency_and_skip_absent_classes():
    classes = _batch()[:, 0].long()
    w = DiceCrossEntropy._weights(classes, 16)
    assert w[1] == 0 and w[15] == 0  # absent organs get no cross-entropy weight
    present = w[[0, 2, 6]]
    assert present.mean() == pytest.approx(1.0)
    assert w[2] / w[6] == pytest.approx((2048 / 8) ** 0.5, rel=1e-4)


def test_balanced_loss_pushes_small_organs_harder():
    target = _batch()
    grads = {}
    for name in ("dice_ce", "dice_balanced_ce"):
        logits = torch.zeros(1, 16, 16, 16, 16, requires_grad=True)
        build_loss(name)(logits, target).backward()
        kidney = target[0, 0] == 2
        grads[name] = logits.grad[0, 2][kidney].abs().mean().item()
    assert grads["dice_balanced_ce"] > 2 * grads["dice_ce"]


def test_unknown_loss():
    with pytest.raises(KeyError, match="unknown loss"):
        build_loss("focal")
