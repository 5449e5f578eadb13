"""What a label save answers: the version it became, whether it was submitted, where the case is and who has it.

Every save path answers with it (a viewer's ``PUT /datastore/label``, the review API's label upload, OHIF's store),
so a user sees in their client's log what happened without asking the review API. MONAI Label's client returns the
JSON body to its caller, which is where 3D Slicer's module logs it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from sqlalchemy import select

from review.assignments import readers
from review.auth import Principal
from review.schema import Assignment, Case, LabelVersion, User
from review.states import where_it_is
from review.store import utcnow

# whose duty a case in each state is, for "who has it now"
DUTY_OF_STATE = {"with_junior": "annotate", "in_review": "review"}


def holders(s, case: Case) -> List[str]:
    """Who has the case now: its junior (with_junior), its reviewers (in_review); nobody otherwise."""
    duty = DUTY_OF_STATE.get(case.state)
    if duty is None:
        return []
    if duty == "review":
        ids = readers(s, case)
    else:
        ids = list(
            s.execute(
                select(Assignment.user_id).where(
                    Assignment.case_id == case.id,
                    Assignment.duty == duty,
                    Assignment.status == "active",
                    Assignment.expires >= utcnow(),
                )
            ).scalars()
        )
    return sorted(s.execute(select(User.name).where(User.id.in_(ids))).scalars()) if ids else []


def newest_version_by(s, case_id: str, who: Principal) -> Optional[LabelVersion]:
    """The newest label version ``who`` saved on the case (the one a save just made)."""
    query = (
        select(LabelVersion)
        .where(LabelVersion.case_id == case_id, LabelVersion.author_user_id == who.id)
        .order_by(LabelVersion.id.desc())
        .limit(1)
    )
    return s.execute(query).scalars().first()


def save_answer(s, case: Case, who: Principal, version: Optional[LabelVersion]) -> Dict[str, Any]:
    """``{"version", "submitted", "state", "round", "with", "message"}`` after ``who`` saved ``version``."""
    submitted = (
        who.role == "junior" and version is not None and case.state != "with_junior" and version.round == case.round
    )
    now_with = holders(s, case)
    number = version.id if version is not None else None
    if who.role == "senior":
        message = (
            f"Saved your edit of case {case.id!r} as version {number}. It is fused with the other reviewers' votes "
            "when the round closes: vote on every organ to finish your review."
        )
    elif submitted:
        message = f"Submitted version {number} of case {case.id!r} for review (round {case.round}). " + where_it_is(
            case.state
        )
        if now_with:
            message += f" Reviewers: {', '.join(now_with)}."
    else:
        message = (
            f"Saved version {number} of case {case.id!r} as a draft; the case stays with you. Submit it when it is "
            "ready (Slicer: Submit Label, which saves with the tag `final`; OHIF: Submit for review on the case "
            "page)."
        )
    return {
        "version": number,
        "submitted": submitted,
        "state": case.state,
        "round": case.round,
        "with": now_with,
        "message": message,
    }
