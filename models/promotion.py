"""When a freshly trained challenger replaces the serving champion.

The challenger is promoted only if its validation mean Dice is higher, or if it is at most ``epsilon`` lower while
its mean NSD is higher (a boundary gain worth a sliver of overlap). Both are measured on the same fixed validation
split of final labels, in the same run, with the evaluation module. Anything else keeps the champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class ValidationScores:
    mean_dice: Optional[float]
    mean_nsd: Optional[float]


def decide(challenger: ValidationScores, champion: Optional[ValidationScores], epsilon: float) -> Tuple[bool, str]:
    """(promote?, why) for one challenger against the champion (None: there is no champion yet)."""
    if challenger.mean_dice is None:
        return False, "the challenger has no validation Dice"
    if champion is None or champion.mean_dice is None:
        return True, "first trained version" if champion is None else "the champion has no validation Dice"
    dice_gain = challenger.mean_dice - champion.mean_dice
    nsd_gain = (
        None if challenger.mean_nsd is None or champion.mean_nsd is None else challenger.mean_nsd - champion.mean_nsd
    )
    figures = f"mDice {champion.mean_dice:.4f} -> {challenger.mean_dice:.4f}"
    if nsd_gain is not None:
        figures += f", mNSD {champion.mean_nsd:.4f} -> {challenger.mean_nsd:.4f}"
    if dice_gain > 0:
        return True, f"mDice improved ({figures})"
    if dice_gain >= -epsilon and nsd_gain is not None and nsd_gain > 0:
        return True, f"mDice within {epsilon} and mNSD improved ({figures})"
    return False, f"kept the champion ({figures})"


def due_for_training(final_cases: Sequence[str], trained_on: Sequence[str], after_new_finals: int) -> bool:
    """True when at least ``after_new_finals`` (> 0) final cases are not in the serving version's training set."""
    if after_new_finals <= 0:
        return False
    return len(set(final_cases) - set(trained_on)) >= after_new_finals
