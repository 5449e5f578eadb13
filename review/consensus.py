"""Consensus rules per organ, fusion of senior edits with multi-label STAPLE, and reader agreement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import AbstractSet, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from amoslabel.organs import MAX_LABEL_ID, ORGANS
from evaluation.metrics import evaluate_case

DECISIONS = ("approve", "changes_requested", "not_assessable")


@dataclass(frozen=True)
class OrganRule:
    """``unanimous``: no assessing reader asks for changes. ``k_of_n``: at least ``k`` approvals.

    "Not assessable" (the organ is outside the field of view, or the image does not show it) abstains: ``k`` is
    lowered to the number of readers who assessed the organ, and an organ nobody could assess is approved.
    """

    kind: str = "unanimous"
    k: int = 0

    def decide(self, votes: Sequence[str], readers: int) -> str:
        """``approved``, ``changes`` or ``pending`` (votes outstanding) for one organ."""
        approvals = sum(v == "approve" for v in votes)
        changes = sum(v == "changes_requested" for v in votes)
        if self.kind == "unanimous" and changes:
            return "changes"  # known before the last vote: one objection is enough
        if len(votes) < readers:
            return "pending"
        assessing = approvals + changes
        if self.kind == "unanimous" or assessing == 0:
            return "approved" if not changes else "changes"
        return "approved" if approvals >= min(self.k, assessing) else "changes"


def decide_round(
    votes: Mapping[int, Mapping[int, str]],
    readers: int,
    rules: Mapping[int, OrganRule],
    one_approval: AbstractSet[int] = frozenset(),
) -> Tuple[str, Dict[int, str]]:
    """Per-organ decisions and the round's outcome from ``votes[organ][user] = decision``.

    The outcome is ``pending`` until every reader has voted on every organ (feedback goes back once, with every
    reader's comments); then ``changes_requested`` if any organ needs changes, else ``consensus``. An organ of
    ``one_approval`` (the pass policy: :mod:`review.pass_policy`) needs one reader's vote instead of every reader's.
    """
    needed = {o.id: 1 if o.id in one_approval else readers for o in ORGANS}
    organs = {o.id: rules[o.id].decide(list(votes.get(o.id, {}).values()), needed[o.id]) for o in ORGANS}
    complete = all(len(votes.get(o.id, {})) >= needed[o.id] for o in ORGANS)
    if not complete:
        return "pending", organs
    return ("changes_requested" if "changes" in organs.values() else "consensus"), organs


def fuse_staple(labels: Sequence[sitk.Image]) -> sitk.Image:
    """Multi-label STAPLE of readers' label maps on one grid (a single map is returned as is)."""
    if len(labels) == 1:
        return labels[0]
    cast = [sitk.Cast(label, sitk.sitkUInt8) for label in labels]
    staple = sitk.MultiLabelSTAPLEImageFilter()
    # undecided voxels take the label no reader uses, then fall back to the first reader's label
    staple.SetLabelForUndecidedPixels(MAX_LABEL_ID + 1)
    fused = staple.Execute(cast)
    array = sitk.GetArrayFromImage(fused)
    undecided = array == MAX_LABEL_ID + 1
    if undecided.any():
        array[undecided] = sitk.GetArrayViewFromImage(cast[0])[undecided]
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(labels[0])
    return out


def fuse_readers(junior: str, junior_path: str, edits: Mapping[str, str]) -> Tuple[sitk.Image, Dict[str, object]]:
    """The round's consensus label and its agreement figures.

    Args:
        junior: the junior reader's name (``junior:<user>``, or ``junior:model`` for an unchanged pre-label).
        junior_path: the label the round reviewed.
        edits: reviewer name -> their newest edited label of the round; none means the reviewed label is final.
    """
    junior_label = sitk.ReadImage(junior_path)
    readers = {junior: junior_label} | {f"senior:{name}": sitk.ReadImage(path) for name, path in edits.items()}
    fused = fuse_staple(list(readers.values())) if edits else junior_label
    figures = {
        "readers": list(readers),
        "fusion": "multi-label STAPLE" if edits else "none (no reviewer edits)",
        "against_consensus": agreement(readers, fused),
        "against_junior": agreement({k: v for k, v in readers.items() if k.startswith("senior:")}, junior_label),
    }
    return fused, figures


def agreement(readers: Mapping[str, sitk.Image], against: sitk.Image) -> Dict[str, Dict[str, Optional[float]]]:
    """Each reader's mean Dice and NSD (and per organ) against one label map."""
    ref = sitk.GetArrayViewFromImage(against)
    spacing = against.GetSpacing()[::-1]
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for name, label in readers.items():
        known = _self_agreement(ref) if label is against else None  # the reviewed label is the consensus
        if known is not None:
            out[name] = known
            continue
        scores = evaluate_case(sitk.GetArrayViewFromImage(label), ref, spacing)
        out[name] = {
            "dice": _finite(scores.mean("dice")),
            "nsd": _finite(scores.mean("nsd")),
            "dice_per_organ": {k: _finite(v) for k, v in scores.per_organ["dice"].items()},
            "nsd_per_organ": {k: _finite(v) for k, v in scores.per_organ["nsd"].items()},
        }
    return out


def _self_agreement(label: np.ndarray) -> Optional[Dict[str, object]]:
    """A label map's agreement with itself: 1 for every organ it holds, none for the others. Comparing the map with
    itself gives the same, at the cost of every organ's surface distances (seconds on a full CT, per final). None
    for a map that is not one of organ ids (not integers, or ids past the last organ): measuring it says why."""
    if label.dtype.kind not in "ui":
        return None
    present = np.bincount(label.ravel(), minlength=MAX_LABEL_ID + 1) > 0
    if len(present) > MAX_LABEL_ID + 1:
        return None
    per_organ = {organ.name: 1.0 if present[organ.id] else None for organ in ORGANS}
    mean = 1.0 if any(v is not None for v in per_organ.values()) else None
    return {"dice": mean, "nsd": mean, "dice_per_organ": per_organ, "nsd_per_organ": dict(per_organ)}


def _finite(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def rules_from_config(default: OrganRule, per_organ: Mapping[str, OrganRule]) -> Dict[int, OrganRule]:
    """Organ id -> rule, the default overridden per organ name."""
    return {o.id: per_organ.get(o.name, default) for o in ORGANS}


def aggregate_comments(comments: List[dict]) -> Dict[str, List[dict]]:
    """Comments grouped by organ name, for the junior."""
    names = {o.id: o.name for o in ORGANS}
    grouped: Dict[str, List[dict]] = {}
    for c in comments:
        grouped.setdefault(names.get(c["organ"], str(c["organ"])), []).append(c)
    return grouped
