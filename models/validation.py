"""Per-organ Dice on whole validation volumes, with the empty-organ policy used everywhere in the project.

Policy: an organ absent from both prediction and reference is left out (NaN, excluded from means); absent from
exactly one of them scores 0.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping

import numpy as np
import torch

from evaluation.metrics import evaluate_case


def dice_per_organ(prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> Dict[str, float]:
    """Dice per organ name for two integer label maps of the same shape (NaN where both are empty)."""
    pred = torch.as_tensor(prediction).detach().cpu().numpy()
    ref = torch.as_tensor(reference).detach().cpu().numpy()
    return evaluate_case(pred, ref, spacing=(1.0, 1.0, 1.0), surface=False).per_organ["dice"]


def scores_per_organ(
    prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, spacing_zyx
) -> Dict[str, Dict[str, float]]:
    """Dice and NSD per organ name at the real voxel spacing (z, y, x mm); NaN where both are empty."""
    pred = torch.as_tensor(prediction).detach().cpu().numpy()
    ref = torch.as_tensor(reference).detach().cpu().numpy()
    per_organ = evaluate_case(pred, ref, spacing=tuple(float(v) for v in spacing_zyx)).per_organ
    return {"dice": per_organ["dice"], "nsd": per_organ["nsd"]}


def mean_over_cases(per_case: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """Average each organ's score over the cases where it is defined (NaN where it never is)."""
    collected: Dict[str, List[float]] = {}
    for scores in per_case:
        for name, value in scores.items():
            collected.setdefault(name, [])
            if not math.isnan(value):
                collected[name].append(value)
    return {name: (float(np.mean(v)) if v else math.nan) for name, v in collected.items()}


def mean_dice(scores: Mapping[str, float]) -> float:
    """Mean over the organs whose score is defined."""
    values = [v for v in scores.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan
