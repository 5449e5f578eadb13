"""Which cases a user may take, as SQL: the conditions behind a queue and behind Next Sample's claim (one home).

A junior takes a pre-labelled case no one holds, or a case with its junior that they hold or no one holds. A senior
takes a case in review that they did not draw: one whose review they hold and have not finished, or one with a free
review slot this round. A lapsed lease counts as none (it is expired in the claim's transaction).

The user's own live leases come first (a case routed to a senior at submit, the case a junior works on), then the
cases they may claim: routed cases left behind for newer ones would hold their readers' slots for a whole lease, and
every other reader's claim would scan past them.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select

from amoslabel.organs import ORGAN_BY_ID
from review.schema import Assignment, Case, LabelVersion, Review

# the queue's order within a part: highest priority first, then oldest (the index ix_cases_queue serves it per state)
QUEUE_ORDER = (Case.priority.desc(), Case.created, Case.id)


def queue_key(row: Any) -> tuple:
    """:data:`QUEUE_ORDER` in Python, for merging the rows of several parts (a case, or a row of its columns)."""
    return (-row.priority, row.created, row.id)


class QueuePart(NamedTuple):
    """One part of a user's queue: the cases of one state they may take, as a select to order with
    :data:`QUEUE_ORDER` and limit; ``own`` for the cases they hold a live lease on (taken before the others)."""

    state: str
    own: bool
    select: Select
    lease: Optional[Any] = None  # (own parts) the id of the user's live lease, a column of ``select``


def queue_parts(role: str, user_id: Any, now: Any, reviewers_per_case: int) -> List[QueuePart]:
    """The parts of the queue of a user of ``role`` and ``user_id`` at ``now``, their own leases first; each is one
    early-stopping scan of the queue index. ``user_id`` and ``now`` are values, or bind parameters of a statement
    built once (:mod:`review.hot_paths`)."""
    live = and_(Assignment.case_id == Case.id, Assignment.status == "active", Assignment.expires >= now)

    def held(state: str, duty: str, *also) -> QueuePart:
        """The cases in ``state`` the user holds a live ``duty`` lease on, read from the user's leases (a few): a
        scan of the state's queue would read every case of it when they hold fewer than the limit."""
        held_lease = aliased(Assignment)  # not correlated with the subqueries on assignments of the caller
        lease = (held_lease.case_id == Case.id, held_lease.user_id == user_id, held_lease.duty == duty)
        live_lease = and_(*lease, held_lease.status == "active", held_lease.expires >= now)
        if duty == "review":  # a reader's lease is of the case's current round
            live_lease = and_(live_lease, held_lease.round == Case.round)
        query = select(Case).select_from(held_lease).join(Case, live_lease).where(Case.state == state, *also)
        return QueuePart(state, True, query, held_lease.id)

    if role == "junior":
        taken = exists().where(live, Assignment.duty == "annotate")
        return [
            held("with_junior", "annotate"),
            QueuePart("with_junior", False, select(Case).where(Case.state == "with_junior", ~taken)),
            QueuePart("prelabelled", False, select(Case).where(Case.state == "prelabelled", ~taken)),
        ]
    if role == "senior":
        this_round = and_(Assignment.case_id == Case.id, Assignment.duty == "review", Assignment.round == Case.round)
        # a reader: a lease done, or active and not lapsed (a lapsed one is expired in the claim's transaction)
        read = or_(Assignment.status == "done", and_(Assignment.status == "active", Assignment.expires >= now))
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
        return [
            held("in_review", "review", ~authored, voted_all < len(ORGAN_BY_ID)),
            QueuePart(
                "in_review",
                False,
                select(Case).where(Case.state == "in_review", ~authored, ~took_part, readers < reviewers_per_case),
            ),
        ]
    return [QueuePart(state, False, select(Case).where(Case.state == state)) for state in ("escalated", "submitted")]
