"""Seniors vote blind: until a senior has voted on every organ in a round, the other seniors' work of that round is
hidden from them, wherever it shows.

The AMOS workflow's consensus is only worth its name if each reader decides alone. So while a case is in review and
a senior has not finished voting in its round, that senior does not see the other seniors' votes, comments and label
edits of the round: not in the case's detail (API and case page), not in its history, not as SEG series in the
viewer. Earlier rounds are open to them (they are the case's past), and so is everything once they have voted.
Admins see everything; juniors see a round's feedback once it is over, as before.

One place decides (:func:`blind_round`); the views ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sqlalchemy import func, select

from amoslabel.organs import ORGANS
from review.auth import Principal
from review.schema import AuditEvent, Case, Review

# the label versions a reviewer makes while reviewing (workflow.save_version's kind for a senior)
REVIEWER_EDIT = "senior_edit"


@dataclass(frozen=True)
class BlindRound:
    """The round whose other seniors' work ``viewer`` must not see, and the audit event it began after."""

    round: int
    viewer: str
    began_after_event: int

    def hides_user(self, name: Optional[str]) -> bool:
        return name is not None and name != self.viewer


def blind_round(s, case: Case, who: Principal) -> Optional[BlindRound]:
    """The round of ``case`` that is blind to ``who`` now (None: nothing is hidden from them)."""
    if who.role != "senior" or case.state != "in_review":
        return None
    voted = s.execute(
        select(func.count()).where(Review.case_id == case.id, Review.round == case.round, Review.user_id == who.id)
    ).scalar_one()
    if voted >= len(ORGANS):
        return None
    began = s.execute(
        select(func.max(AuditEvent.id)).where(
            AuditEvent.case_id == case.id, AuditEvent.to_state == "in_review", AuditEvent.from_state != "in_review"
        )
    ).scalar()
    return BlindRound(case.round, who.name, int(began or 0))


def hides_event(blind: Optional[BlindRound], event: AuditEvent) -> bool:
    """Whether a history event is another senior's vote or label edit in the blind round."""
    if blind is None or event.id <= blind.began_after_event or not blind.hides_user(event.actor):
        return False
    return event.action == "review" or (event.action == "version" and REVIEWER_EDIT in (event.reason or ""))
