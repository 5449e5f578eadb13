"""What the seniors asked of a case's junior: the organs sent back, by whom, with their comments and points.

The feedback of a round is read once that round is closed (a case is sent back when its round ends with changes
requested), so no senior's vote of an open round shows here: blind review (:mod:`review.blinding`) is untouched.
Next Sample hands it to the junior with the case; the queue's *Why* column says "sent back" with it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from sqlalchemy import select

from amoslabel.organs import ORGAN_BY_ID
from review.schema import Case, Comment, Review, User

SENT_BACK = "changes_requested"


def closed_round(case: Case) -> int | None:
    """The round whose feedback the case's junior works on: the previous one for a case sent back to its junior
    (rounds count from 1; a case's first round has nothing before it)."""
    if case.state == "with_junior" and case.round > 1:
        return case.round - 1
    return None


def sent_back(s, cases: Sequence[Case]) -> Dict[str, List[Dict[str, Any]]]:
    """For each case sent back to its junior: the organs its last round asked to change, and by whom (one query)."""
    rounds = {c.id: r for c in cases if (r := closed_round(c)) is not None}
    if not rounds:
        return {}
    rows = s.execute(
        select(Review.case_id, Review.round, Review.organ, User.name)
        .join(User, User.id == Review.user_id)
        .where(Review.case_id.in_(list(rounds)), Review.decision == SENT_BACK)
        .order_by(Review.organ, User.name)
    ).all()
    by_case: Dict[str, Dict[int, List[str]]] = {}
    for case_id, round_, organ, name in rows:
        if round_ == rounds[case_id]:
            by_case.setdefault(case_id, {}).setdefault(organ, []).append(name)
    return {
        case_id: [{"organ": ORGAN_BY_ID[o].name, "by": names} for o, names in sorted(organs.items())]
        for case_id, organs in by_case.items()
    }


def sent_back_reason(organs: List[Dict[str, Any]]) -> str:
    """``sent back: spleen (senior1), liver (senior1, senior2)``: the queue's *Why* for a case sent back."""
    return "sent back: " + ", ".join(f"{o['organ'].replace('_', ' ')} ({', '.join(o['by'])})" for o in organs)


def round_feedback(s, case: Case) -> Dict[str, Any] | None:
    """The seniors' feedback the junior of a case sent back works on, per organ: each senior's decision and their
    comments with their points (mm, LPS, and voxel i, j, k); None when the case was not sent back."""
    round_ = closed_round(case)
    if round_ is None:
        return None
    names = dict(s.execute(select(User.id, User.name)).all())
    organs: Dict[int, Dict[str, Any]] = {}

    def organ_entry(organ: int) -> Dict[str, Any]:
        name = ORGAN_BY_ID[organ].name
        return organs.setdefault(organ, {"organ": organ, "organ_name": name, "decisions": {}, "comments": []})

    for r in s.execute(select(Review).where(Review.case_id == case.id, Review.round == round_)).scalars():
        if r.decision != "approve":
            organ_entry(r.organ)["decisions"][names.get(r.user_id, "?")] = r.decision
    comments = select(Comment).where(Comment.case_id == case.id, Comment.round == round_).order_by(Comment.id)
    for c in s.execute(comments).scalars():
        organ_entry(c.organ)["comments"].append(
            {"by": names.get(c.user_id, "?"), "text": c.text, "point_mm": c.point_world, "point_voxel": c.point_voxel}
        )
    return {"round": round_, "organs": [organs[o] for o in sorted(organs)]}
