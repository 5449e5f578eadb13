"""Checking a reviewer's per-organ vote from a request."""

from __future__ import annotations

import math
from typing import Any, Dict

from amoslabel.errors import Unprocessable
from amoslabel.organs import MAX_LABEL_ID, ORGANS
from review.consensus import DECISIONS

_ORGAN_BY_NAME = {o.name: o.id for o in ORGANS}
MAX_COMMENT = 2000


def parse_vote(vote: Any) -> Dict[str, Any]:
    if not isinstance(vote, dict):
        raise Unprocessable("each vote must be an object with organ and decision")
    organ = vote.get("organ")
    organ_id = _ORGAN_BY_NAME.get(organ) if isinstance(organ, str) else organ
    if not isinstance(organ_id, int) or isinstance(organ_id, bool) or not 1 <= organ_id <= MAX_LABEL_ID:
        raise Unprocessable(f"organ {str(organ)[:40]!r} is not an AMOS organ (ids 1-15 or names)")
    decision = vote.get("decision")
    if decision not in DECISIONS:
        raise Unprocessable(f"decision must be one of {', '.join(DECISIONS)}")
    out: Dict[str, Any] = {"organ": organ_id, "decision": decision}
    comment = vote.get("comment")
    if comment is not None:
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise Unprocessable(f"comment must be text of at most {MAX_COMMENT} characters")
        out["comment"] = comment
    for key, kind in (("point_world", float), ("point_voxel", int)):
        value = vote.get(key)
        if value is None:
            continue
        if not is_point(value, whole=kind is int):
            raise Unprocessable(f"{key} must be three finite numbers" + (" (whole, >= 0)" if kind is int else ""))
        out[key] = [kind(v) for v in value]
    return out


def is_point(value: Any, whole: bool = False) -> bool:
    """Three finite numbers (``whole``: whole numbers >= 0, a voxel index) in a list, as a vote's point must be."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and (not whole or all(float(v).is_integer() and v >= 0 for v in value))
    )
