"""Checking a reviewer's per-organ vote from a request."""

from __future__ import annotations

import math
from typing import Any, Collection, Dict, List, Optional, Set

from sqlalchemy import insert

from amoslabel.errors import Conflict, Unprocessable
from amoslabel.organs import MAX_LABEL_ID, ORGAN_BY_ID, ORGANS
from review import audit
from review.consensus import DECISIONS
from review.schema import Comment, Review

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


def check_once(votes: List[Dict[str, Any]], decided: Collection[int], who: str) -> Set[int]:
    """The organs of ``votes``; 409 for one that ``who`` decided already in this round, or twice in ``votes``."""
    seen: Set[int] = set()
    for vote in votes:
        if vote["organ"] in decided or vote["organ"] in seen:
            raise Conflict(f"{who} already decided {ORGAN_BY_ID[vote['organ']].name} in this round")
        seen.add(vote["organ"])
    return seen


def store_votes(execute, where: Dict[str, Any], votes: List[Dict[str, Any]], version_id: Optional[int]) -> None:
    """Insert the votes and their comments (``where``: case, round, user, time), one statement per table: a vote
    carries 15 organs, and an ORM unit of work cost about 1 ms a row. ``execute`` is a session's or connection's."""
    execute(
        insert(Review),
        [{**where, "organ": v["organ"], "decision": v["decision"], "version_id": version_id} for v in votes],
    )
    notes = [v for v in votes if v.get("comment") or v.get("point_world") or v.get("point_voxel")]
    if notes:
        execute(
            insert(Comment),
            [
                {
                    **where,
                    "organ": v["organ"],
                    "text": v.get("comment") or "",
                    "point_world": v.get("point_world"),
                    "point_voxel": v.get("point_voxel"),
                }
                for v in notes
            ],
        )


def vote_event(case_id: str, who: str, state: str, votes: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The audit row of a reviewer's votes (:func:`review.audit.row`), every decision in its details."""
    return audit.row(case_id, who, "review", state, state, f"{len(votes)} organ decisions", {"votes": votes})
