"""Simulated clicks and clicks-to-goal (NoC@90): how interactive correction is measured.

The simulated annotator looks at one organ, finds its largest error region (a missed part or a false blob), and
clicks at that region's centre: the voxel farthest from the region's border, in millimetres. A missed part gets a
foreground click for the organ, a false blob a background click. A click on one organ never changes another organ's
voxels (:mod:`models.click_merge`), so a missed part that another organ holds is that organ's error, fixed by its
own clicks: the annotator of one organ clicks only missed parts that lie on background. This is the click model of
the interactive segmentation literature (DeepEdit's and DeepGrow's evaluation, NoC@85/90 since Xu et al. 2016), one
click per round. A run may start with a box around the organ (:func:`box_then_clicks`), as a user who draws Slicer's
ROI first; and the annotator may draw a scribble or a lasso a round instead of a click (:func:`next_scribble`,
:func:`next_lasso`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

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
    found = _largest_error(prediction, truth, organ)
    if found is None:
        return None
    region, positive = found
    return Click(organ, _centre(region, spacing), positive)


def _largest_error(prediction: np.ndarray, truth: np.ndarray, organ: int) -> Optional[Tuple[np.ndarray, bool]]:
    """The organ's largest error region (a missed part on background, or a false blob) and whether it is missed."""
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
    return None if best is None else (best[1], best[2])


def _centre(region: np.ndarray, spacing: Sequence[float]) -> Tuple[int, int, int]:
    """The region's voxel farthest from its border, in millimetres."""
    # the border of the volume is not the region's border: pad so that it does not pull the centre to the edge
    distance = ndimage.distance_transform_edt(np.pad(region, 1, constant_values=False), sampling=spacing)[
        1:-1, 1:-1, 1:-1
    ]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(distance)), region.shape))


def next_scribble(
    prediction: np.ndarray, truth: np.ndarray, organ: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> List[Click]:
    """The scribble the simulated annotator draws next on ``organ``, as its voxels (each acts as a click, as the
    server reads a scribble): on the axial slice through the centre of the largest error region (:func:`next_click`'s
    voxel), along the medial line of the region's cross-section there (its 2D skeleton), foreground over a missed
    part, background over a false blob. Empty when the organ has no error left."""
    return _stroke(prediction, truth, organ, spacing, lasso=False)


def next_lasso(
    prediction: np.ndarray, truth: np.ndarray, organ: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> List[Click]:
    """The lasso the simulated annotator draws next on ``organ``: around the cross-section of the largest error
    region on the axial slice through its centre, as every voxel inside (each acts as a click, as the server reads a
    lasso). Empty when the organ has no error left."""
    return _stroke(prediction, truth, organ, spacing, lasso=True)


def _stroke(prediction, truth, organ, spacing, lasso: bool) -> List[Click]:
    found = _largest_error(prediction, truth, organ)
    if found is None:
        return []
    region, positive = found
    centre = _centre(region, spacing)
    parts, _ = ndimage.label(region[centre[0]])
    section = parts == parts[centre[1:]]
    drawn = section if lasso else skeletonize(section)
    drawn[centre[1:]] = True
    return [Click(organ, (centre[0], int(y), int(x)), positive) for y, x in np.argwhere(drawn)]


def one_click(
    prediction: np.ndarray, truth: np.ndarray, organ: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> List[Click]:
    """:func:`next_click` as an interaction: one click, or none."""
    click = next_click(prediction, truth, organ, spacing)
    return [click] if click is not None else []


#: (current label, reference, organ, spacing) -> the next interaction's clicks (a click, a scribble's voxels); none
#: when the organ has no error left
Annotator = Callable[[np.ndarray, np.ndarray, int, Sequence[float]], List[Click]]


Refine = Callable[[np.ndarray, List[Click]], np.ndarray]  # (current label, every click so far) -> new label


@dataclass
class ClicksToGoal:
    """One organ's run: the Dice after each interaction (index 0: the start) and the interactions it took to reach
    the goal."""

    organ: int
    dice: List[float] = field(default_factory=list)
    clicks: List[Click] = field(default_factory=list)  # every click, a scribble's voxels among them
    reached_at: Optional[int] = None  # interactions to the goal; None: not within the cap
    final: Optional[np.ndarray] = field(default=None, repr=False)  # the label after the last interaction
    boxes: int = 0  # boxes drawn before the clicks (:func:`box_then_clicks`); each counts as one interaction
    rounds: int = 0  # interactions after the box: clicks, or scribbles
    # the first interaction that raised the Dice by less than :data:`STALL_GAIN` (its index in ``dice``: a box counts),
    # and the label after it: where an annotator who sees nothing change takes the brush instead; None: never
    stalled_at: Optional[int] = None
    at_stall: Optional[np.ndarray] = field(default=None, repr=False)

    def note(self, label: np.ndarray) -> None:
        """Record the label after an interaction whose Dice was just appended; mark the first stall, keeping the
        better of the labels before and after it (an annotator undoes an interaction that made things worse)."""
        before, self.final = self.final, label
        if self.stalled_at is None and len(self.dice) > 1 and self.dice[-1] - self.dice[-2] < STALL_GAIN:
            worse = self.dice[-1] < self.dice[-2] and before is not None
            self.stalled_at, self.at_stall = len(self.dice) - 1, before if worse else label

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
    annotator: Annotator = one_click,
) -> ClicksToGoal:
    """Interact with ``organ`` (a click a round, or what ``annotator`` draws) until its Dice reaches ``goal`` or
    ``cap`` interactions were made (NoC@goal)."""
    run = ClicksToGoal(organ)
    label = start
    run.dice.append(organ_dice(label, truth, organ))
    run.final = label
    if run.dice[0] >= goal:
        run.reached_at = 0
        return run
    while run.rounds < cap:
        drawn = annotator(label, truth, organ, spacing)
        if not drawn:
            break
        run.clicks.extend(drawn)
        run.rounds += 1
        label = refine(label, list(run.clicks))
        run.dice.append(organ_dice(label, truth, organ))
        run.note(label)
        if run.dice[-1] >= goal:
            run.reached_at = run.rounds
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
    annotator: Annotator = one_click,
) -> ClicksToGoal:
    """A box around ``organ`` (:func:`organ_box`), then clicks (or what ``annotator`` draws) until the goal: the box
    counts as one interaction of the ``cap``. A start already at the goal needs neither."""
    first = organ_dice(start, truth, organ)
    if first >= goal:
        return ClicksToGoal(organ, dice=[first], reached_at=0, final=start)
    boxed = refine_box(start, organ, organ_box(truth, organ))
    rest = clicks_to_goal(boxed, truth, organ, refine, goal, cap - 1, spacing, annotator)
    reached = rest.reached_at + 1 if rest.reached_at is not None else None
    run = ClicksToGoal(organ, [first], rest.clicks, reached, final=start, boxes=1, rounds=rest.rounds)
    run.dice.append(rest.dice[0])
    run.note(boxed)
    if run.stalled_at is None and rest.stalled_at is not None:
        run.stalled_at, run.at_stall = rest.stalled_at + 1, rest.at_stall
    run.dice += rest.dice[1:]
    run.final = rest.final
    return run


#: An interaction that raises the organ's Dice by less than this is one the annotator sees change nothing: they take
#: the brush for the rest (:func:`mixed_minutes`).
STALL_GAIN = 0.01

#: Seconds per click round, an assumption like :class:`evaluation.effort.EffortModel`'s: find the error on the
#: slice (the voxel-editing model's 4 s per slice), click, wait for the answer (1-2 s measured on CPU) and look at it.
T_CLICK_S = 6.0
#: Seconds per box, an assumption: two corners on one slice, a look along the third axis, the answer's wait and look.
T_BOX_S = 10.0
#: Seconds per scribble, an assumption: a click's round (:data:`T_CLICK_S`) and a stroke drawn along the error.
T_SCRIBBLE_S = 8.0
#: Seconds per lasso, an assumption: a click's round and a contour drawn around the error.
T_LASSO_S = 10.0


def click_minutes(run: ClicksToGoal, minutes_left: float, t_click_s: float = T_CLICK_S) -> float:
    """Estimated minutes of a correction by clicks (and a box, if drawn): the interactions made (``t_click_s``
    each; :data:`T_SCRIBBLE_S` for scribbles), plus voxel editing of whatever they left wrong (``minutes_left``:
    :func:`evaluation.effort.correction_effort` of the last label)."""
    return (run.rounds * t_click_s + run.boxes * T_BOX_S) / 60 + minutes_left


def mixed_minutes(run: ClicksToGoal, minutes_left_at_stall: float, t_click_s: float = T_CLICK_S) -> float:
    """Estimated minutes of an annotator who interacts until an interaction changes nothing they can see (the first
    stall, :data:`STALL_GAIN`), then edits the rest by hand: the interactions up to and including that one, plus
    voxel editing of the label after it (``minutes_left_at_stall``: :func:`evaluation.effort.correction_effort` of
    ``run.at_stall``, or of ``run.final`` when the run never stalled)."""
    made = run.stalled_at if run.stalled_at is not None else len(run.dice) - 1
    boxes = min(run.boxes, made)
    return (boxes * T_BOX_S + (made - boxes) * t_click_s) / 60 + minutes_left_at_stall
