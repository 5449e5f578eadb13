"""Queries on who holds, held or could take a case: leases, readers of a round, and load-balanced routing."""

from __future__ import annotations

from typing import List, Optional

from sqlalchemy import func, select

from review.auth import Principal
from review.schema import Assignment, Case, LabelVersion, User
from review.store import utcnow


def actives(s, case_id: str, duty: str) -> List[Assignment]:
    """The case's assignments of ``duty`` still marked active (a lapsed one included)."""
    query = select(Assignment).where(
        Assignment.case_id == case_id, Assignment.duty == duty, Assignment.status == "active"
    )
    return list(s.execute(query).scalars())


def live(s, case_id: str, duty: str, user_id: Optional[int] = None) -> Optional[Assignment]:
    """The case's unexpired ``duty`` lease (of ``user_id``, if given)."""
    now = utcnow()
    for a in actives(s, case_id, duty):
        if a.expires >= now and (user_id is None or a.user_id == user_id):
            return a
    return None


def readers(s, case: Case) -> List[int]:
    """Users holding or having finished a review of the case's current round."""
    query = select(Assignment.user_id).where(
        Assignment.case_id == case.id,
        Assignment.duty == "review",
        Assignment.round == case.round,
        Assignment.status.in_(("active", "done")),
    )
    return sorted(set(s.execute(query).scalars()))


def reviewed_this_round(s, case: Case, who: Principal) -> bool:
    done = select(Assignment.id).where(
        Assignment.case_id == case.id,
        Assignment.user_id == who.id,
        Assignment.duty == "review",
        Assignment.round == case.round,
        Assignment.status == "done",
    )
    return s.execute(done.limit(1)).first() is not None


def readers_needed(s, case: Case, per_case: int) -> int:
    """``per_case`` readers, or every eligible senior (active, not an author of the case) when there are fewer."""
    authors = select(LabelVersion.author_user_id).where(
        LabelVersion.case_id == case.id, LabelVersion.author_user_id.is_not(None)
    )
    eligible = s.execute(
        select(func.count())
        .select_from(User)
        .where(User.role == "senior", User.active.is_(True), User.id.not_in(authors))
    ).scalar_one()
    return min(per_case, eligible)


def least_loaded(s, role: str, duty: str, exclude: set, count: int = 1) -> List[User]:
    """Up to ``count`` active users of ``role`` with the fewest active ``duty`` leases (then the oldest)."""
    load = (
        select(Assignment.user_id, func.count().label("n"))
        .where(Assignment.status == "active", Assignment.duty == duty)
        .group_by(Assignment.user_id)
        .subquery()
    )
    query = (
        select(User)
        .outerjoin(load, load.c.user_id == User.id)
        .where(User.role == role, User.active.is_(True))
        .order_by(func.coalesce(load.c.n, 0), User.id)
    )
    if exclude:
        query = query.where(User.id.not_in(exclude))
    return list(s.execute(query.limit(count)).scalars())
