"""Simulated clicks and clicks-to-goal (NoC@90): how interactive correction is measured.

The simulated annotator looks at one organ, finds its largest error region (a missed part or a false blob), and
clicks at that region's centre: the voxel farthest from the region's border, in millimetres. A missed part gets a
foreground click for the organ, a false blob a background click. A click on one organ never changes another organ's
voxels (:mod:`models.click_merge`), so a missed part that another organ holds is that organ's error, fixed by its
own clicks: the annotator of one organ clicks only missed parts that lie on background. This is the click model of
the interactive segmentation literature (DeepEdit's and DeepGrow's evaluation, NoC@85/90 since Xu et al. 2016), one
click per round. A run may start with a box around the organ (:func:`box_then_clicks`), as a user who draws Slicer's
ROI first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from evaluation.metrics import dice_of as organ_dice


@dataclass(frozen=True)
class Click:
    """One click on one organ.

    Attributes:
        organ: the AMOS organ id the click is about.
        voxel: the clicked voxel as an array index (z, y, x).
        positive: True for a foreground click (the organ is here), False for a background click (it is not).
    """

    organ: int
    voxel: Tuple[int, int, int]
    positive: bool


def next_click(
    prediction: np.ndarray, truth: np.ndarray, organ: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> Optional[Click]:
    """The click the simulated annotator makes next on ``organ``, or None when the organ has no error left.

    Args:
        prediction, truth: label maps of one grid, (z, y, x).
        spacing: voxel size (z, y, x) in mm, so that "farthest from the border" is in millimetres.
    """
    best: Optional[Tuple[int, np.ndarray, bool]] = None
    for positive, region in (
        (True, (truth == organ) & (prediction == 0)),
        (False, (prediction == organ) & (truth != organ)),
    ):
        if not region.any():
            continue
        components, count = ndimage.label(region)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), components == largest, positive)
    if best is None:
        return None
    _, region, positive = best
    # the border of the volume is not the region's border: pad so that it does not pull the centre to the edge
    distance = ndimage.distance_transform_edt(np.pad(region, 1, constant_values=False), sampling=spacing)[
        1:-1, 1:-1, 1:-1
    ]
    voxel = np.unravel_index(int(np.argmax(distance)), region.shape)
    return Click(organ, tuple(int(v) for v in voxel), positive)


Refine = Callable[[np.ndarray, List[Click]], np.ndarray]  # (current label, every click so far) -> new label


@dataclass
class ClicksToGoal:
    """One organ's run: the Dice after each click (index 0: the start) and the clicks it took to reach the goal."""

    organ: int
    dice: List[float] = field(default_factory=list)
    clicks: List[Click] = field(default_factory=list)
    reached_at: Optional[int] = None  # interactions to the goal; None: not within the cap
    final: Optional[np.ndarray] = field(default=None, repr=False)  # the label after the last interaction
    boxes: int = 0  # boxes drawn before the clicks (:func:`box_then_clicks`); each counts as one interaction

    def noc(self, cap: int) -> int:
        """Number of clicks to the goal, counted as ``cap`` when it was not reached (the usual NoC convention)."""
        return self.reached_at if self.reached_at is not None else cap

    def clicks_to(self, goal: float, cap: int) -> int:
        """Clicks until the Dice first reached ``goal`` (a lower goal than the run's: NoC@85 from a NoC@90 run),
        ``cap`` when it never did."""
        return next((i for i, d in enumerate(self.dice) if d >= goal), cap)


def clicks_to_goal(
    start: np.ndarray,
    truth: np.ndarray,
    organ: int,
    refine: Refine,
    goal: float = 0.9,
    cap: int = 20,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> ClicksToGoal:
    """Click on ``organ`` until its Dice reaches ``goal`` or ``cap`` clicks were made (NoC@goal)."""
    run = ClicksToGoal(organ)
    label = start
    run.dice.append(organ_dice(label, truth, organ))
    run.final = label
    if run.dice[0] >= goal:
        run.reached_at = 0
        return run
    while len(run.clicks) < cap:
        click = next_click(label, truth, organ, spacing)
        if click is None:
            break
        run.clicks.append(click)
        label = refine(label, list(run.clicks))
        run.final = label
        run.dice.append(organ_dice(label, truth, organ))
        if run.dice[-1] >= goal:
            run.reached_at = len(run.clicks)
            break
    return run


Box = Tuple[slice, slice, slice]  # (z, y, x)
RefineBox = Callable[[np.ndarray, int, Box], np.ndarray]  # (current label, organ, drawn box) -> new label


def organ_box(truth: np.ndarray, organ: int, margin: int = 1) -> Box:
    """The box the simulated annotator draws around ``organ``: its reference's extent, ``margin`` voxels wider on
    each side (a box drawn by hand is not tight), inside the volume."""
    where = np.argwhere(truth == organ)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, truth.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def box_then_clicks(
    start: np.ndarray,
    truth: np.ndarray,
    organ: int,
    refine_box: RefineBox,
    refine: Refine,
    goal: float = 0.9,
    cap: int = 20,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> ClicksToGoal:
    """A box around ``organ`` (:func:`organ_box`), then clicks until the goal: the box counts as one interaction of
    the ``cap``. A start already at the goal needs neither."""
    first = organ_dice(start, truth, organ)
    if first >= goal:
        return ClicksToGoal(organ, dice=[first], reached_at=0, final=start)
    boxed = refine_box(start, organ, organ_box(truth, organ))
    rest = clicks_to_goal(boxed, truth, organ, refine, goal, cap - 1, spacing)
    reached = rest.reached_at + 1 if rest.reached_at is not None else None
    return ClicksToGoal(organ, [first] + rest.dice, rest.clicks, reached, rest.final, boxes=1)


#: Seconds per click round, an assumption like :class:`evaluation.effort.EffortModel`'s: find the error on the
#: slice (the voxel-editing model's 4 s per slice), click, wait for the answer (1-2 s measured on CPU) and look at it.
T_CLICK_S = 6.0
#: Seconds per box, an assumption: two corners on one slice, a look along the third axis, the answer's wait and look.
T_BOX_S = 10.0


def click_minutes(run: ClicksToGoal, minutes_left: float, t_click_s: float = T_CLICK_S) -> float:
    """Estimated minutes of a correction by clicks (and a box, if drawn): the interactions made, plus voxel editing
    of whatever they left wrong (``minutes_left``: :func:`evaluation.effort.correction_effort` of the last label)."""
    return (len(run.clicks) * t_click_s + run.boxes * T_BOX_S) / 60 + minutes_left
