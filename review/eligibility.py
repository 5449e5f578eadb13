"""Which cases a user may take, as SQL: the conditions behind a queue and behind Next Sample's claim (one home).

A junior takes a pre-labelled case no one holds, or a case with its junior that they hold or no one holds. A senior
takes a case in review that they did not draw: one whose review they hold and have not finished, or one with a free
review slot this round. A lapsed lease counts as none (it is expired in the claim's transaction).
"""

from __future__ import annotations

from typing import Any, Dict

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.sql import Select

from amoslabel.organs import ORGAN_BY_ID
from review.schema import Assignment, Case, LabelVersion, Review

# the queue's order: highest priority first, then oldest (the index ix_cases_queue serves it per state)
QUEUE_ORDER = (Case.priority.desc(), Case.created, Case.id)


def queue_selects(role: str, user_id: Any, now: Any, reviewers_per_case: int) -> Dict[str, Select]:
    """``{state: select(Case) of the cases in that state the user of ``role`` and ``user_id`` may take at ``now``}``;
    each is ordered with :data:`QUEUE_ORDER` and limited by the caller (one early-stopping scan of the queue index per
    state). ``user_id`` and ``now`` are values, or bind parameters of a statement built once (:mod:`review.hot_paths`).
    """
    live = and_(Assignment.case_id == Case.id, Assignment.status == "active", Assignment.expires >= now)
    if role == "junior":
        mine = exists().where(live, Assignment.user_id == user_id, Assignment.duty == "annotate")
        taken = exists().where(live, Assignment.duty == "annotate")
        return {
            "with_junior": select(Case).where(Case.state == "with_junior", or_(mine, ~taken)),
            "prelabelled": select(Case).where(Case.state == "prelabelled", ~taken),
        }
    if role == "senior":
        this_round = and_(Assignment.case_id == Case.id, Assignment.duty == "review", Assignment.round == Case.round)
        read = or_(Assignment.status == "active", Assignment.status == "done")
        mine = exists().where(live, this_round, Assignment.user_id == user_id)
        took_part = exists().where(this_round, Assignment.user_id == user_id, read)
        voted_all = (
            select(func.count())
            .where(Review.case_id == Case.id, Review.round == Case.round, Review.user_id == user_id)
            .scalar_subquery()
        )
        readers = select(func.count(func.distinct(Assignment.user_id))).where(this_round, read).scalar_subquery()
        authored = exists().where(
            LabelVersion.case_id == Case.id,
            LabelVersion.author_user_id == user_id,
            or_(LabelVersion.kind == "junior", LabelVersion.kind == "imported"),
        )
        return {
            "in_review": select(Case).where(
                Case.state == "in_review",
                ~authored,
                or_(
                    and_(mine, voted_all < len(ORGAN_BY_ID)),
                    and_(~took_part, readers < reviewers_per_case),
                ),
            )
        }
    return {state: select(Case).where(Case.state == state) for state in ("escalated", "submitted")}
