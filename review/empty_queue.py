"""Why a user's queue is empty, and what they can do: Next Sample's answer when it has no case to give.

An empty answer (``{}``) left a new user guessing whether the server was broken. The answer says, in a reader's
words, where the cases are (counts by state, one query) and the next step for the user's role.
"""

from __future__ import annotations

from typing import Any, Dict

from sqlalchemy import func, select

from review.auth import Principal
from review.schema import Case


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def why_nothing_waits(s, who: Principal) -> Dict[str, Any]:
    """``{"detail": what to do, "reason": a word for programs, "cases": counts by state}`` for ``who``."""
    counts = dict(s.execute(select(Case.state, func.count()).group_by(Case.state)).all())
    new, prelabelled = counts.get("new", 0), counts.get("prelabelled", 0)
    with_junior, in_review = counts.get("with_junior", 0), counts.get("in_review", 0)
    escalated, final = counts.get("escalated", 0), counts.get("final", 0)
    elsewhere = (
        f"{_plural(with_junior, 'case is', 'cases are')} with juniors, {_plural(in_review, 'case is', 'cases are')} "
        f"with the reviewers, {_plural(final, 'case is', 'cases are')} final."
    )
    if who.role == "junior":
        if new:
            reason = "no_prelabel"
            step = (
                f"{_plural(new, 'scan has', 'scans have')} no pre-label yet: in Slicer choose the strategy "
                "`uncertainty` (or `random`) and press Next Sample to load one, then Run the auto-segmentation; the "
                "scan enters the queue pre-labelled, and Next Sample with `review_queue` gives it to you."
            )
        elif prelabelled:
            reason = "taken"
            held = _plural(prelabelled, "pre-labelled case is", "pre-labelled cases are")
            step = f"the {held} held by other juniors."
        else:
            reason = "all_done"
            step = "every scan is past its junior: ask an admin to import new scans."
        detail = f"No case waits for you ({who.name}): {step} {elsewhere}"
    elif who.role == "senior":
        reason = "no_review"
        detail = (
            f"No case waits for your review ({who.name}): the cases with the reviewers already have their readers, "
            f"your vote, or your correction (you never review your own). {elsewhere}"
        )
    else:
        reason = "none_escalated"
        detail = (
            f"No case waits for an admin: {_plural(escalated, 'case is', 'cases are')} escalated. Admins add users, "
            f"import scans and train (README, Your first case). {elsewhere}"
        )
    return {"detail": detail, "reason": reason, "cases": counts}
