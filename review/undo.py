"""Undo and redo of a user's own label changes in a case's round: each a new version, nothing deleted.

A user's line in a round is the version they started from (the label the case had when they first saved in the
round: the pre-label or the junior's, for a reviewer the version under review), then each of their saves. Undo
restores the step before the one the user is at, redo the step after; either is recorded as a new version of the
user's with the restored step's file (``info["undo_step"]``: the action and the version it restores), so the case's
history keeps every save, undo and redo. A save after an undo drops the steps ahead of it, as an editor's undo does.

Where the user is on the line is read back from those versions, not kept anywhere else: two undos that raced restore
the same step, and the line stays as one of them left it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from sqlalchemy import select

from amoslabel.errors import Conflict
from review.auth import Principal
from review.schema import Case, LabelVersion

ACTIONS = ("undo", "redo")


def line_of(base: Optional[int], saves: Sequence[Tuple[int, Dict[str, Any]]]) -> Tuple[List[int], int]:
    """The user's line of versions and the index they are at.

    Args:
        base: the version the user started the round from (None: the case had no label).
        saves: the user's versions in the round, oldest first, as ``(id, info)``.
    """
    line = [base] if base is not None else []
    at = len(line) - 1
    for version, info in saves:
        step = (info or {}).get("undo_step")
        if step and step.get("restores") in line:
            at = line.index(step["restores"])
        else:
            line = line[: at + 1] + [version]
            at = len(line) - 1
    return line, at


def step_to_restore(s, case: Case, who: Principal, action: str) -> LabelVersion:
    """The version an ``action`` ("undo" or "redo") of ``who`` restores on ``case`` now.

    Raises:
        Conflict: nothing to undo (no change of this user in this round, or back at its start) or to redo.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    rows = s.execute(
        select(LabelVersion.id, LabelVersion.info, LabelVersion.parent_id)
        .where(LabelVersion.case_id == case.id, LabelVersion.author_user_id == who.id)
        .where(LabelVersion.round == case.round, LabelVersion.kind.in_(("junior", "senior_edit")))
        .order_by(LabelVersion.id)
    ).all()
    line, at = line_of(rows[0].parent_id if rows else None, [(r.id, r.info) for r in rows])
    target = at - 1 if action == "undo" else at + 1
    if not rows or not 0 <= target < len(line):
        what = "change of yours to undo" if action == "undo" else "undone change of yours to redo"
        raise Conflict(f"There is no {what} on case {case.id!r} in round {case.round}.", state=case.state)
    return s.get(LabelVersion, line[target])
