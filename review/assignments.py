"""Who holds, held or could take a case: leases, readers of a round, routing to the least loaded, and expiry.

A lease (an active assignment) gives one user one duty on one case (``annotate`` for the junior, ``review`` for a
senior) until it expires; an expired lease returns the case to the pool, and each expiry is in the audit log. These
functions run inside the workflow's transactions (``s`` is its session); the workflow decides when to call them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import List, Optional, Union

from sqlalchemy import bindparam, func, select
from sqlalchemy.sql import Select

from amoslabel.config import ReviewSettings
from amoslabel.errors import Conflict
from review import audit
from review.auth import Forbidden, Principal
from review.schema import Assignment, Case, LabelVersion, Review, User
from review.states import WHEN_YOU_CAN, where_it_is
from review.store import ReviewStore, utcnow

# How a user gets a duty on a case (said when they act on one they hold no lease of)
TAKE_IT = {
    "annotate": "take it with Next Sample (Slicer) or from your queue on the review pages first.",
    "review": "claim it from your queue on the review pages (or Next Sample in Slicer) first.",
}


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


# who wrote a label of a case (``case_id`` bound), and the active seniors who did not: the readers a round may have
AUTHORS = select(LabelVersion.author_user_id).where(
    LabelVersion.case_id == bindparam("case_id"), LabelVersion.author_user_id.is_not(None)
)
ELIGIBLE_READERS = (
    select(func.count()).select_from(User).where(User.role == "senior", User.active.is_(True), User.id.not_in(AUTHORS))
)


def readers_needed(s, case: Case, per_case: int) -> int:
    """``per_case`` readers, or every eligible senior (active, not an author of the case) when there are fewer."""
    return min(per_case, s.execute(ELIGIBLE_READERS, {"case_id": case.id}).scalar_one())


def least_loaded(s, role: str, duty: str, exclude: set, count: int = 1) -> List[User]:
    """Up to ``count`` active users of ``role`` with the fewest active ``duty`` leases (then the oldest)."""
    return list(s.execute(by_load(role, duty, exclude, User).limit(count)).scalars())


def by_load(role: str, duty: str, exclude: Union[set, Select], *columns) -> Select:
    """``select(*columns)`` of the active users of ``role`` but ``exclude`` (ids, or a select of them), fewest active
    ``duty`` leases first, then the oldest."""
    load = (
        select(Assignment.user_id, func.count().label("n"))
        .where(Assignment.status == "active", Assignment.duty == duty)
        .group_by(Assignment.user_id)
        .subquery()
    )
    query = (
        select(*columns)
        .outerjoin(load, load.c.user_id == User.id)
        .where(User.role == role, User.active.is_(True))
        .order_by(func.coalesce(load.c.n, 0), User.id)
    )
    if isinstance(exclude, Select) or exclude:
        query = query.where(User.id.not_in(exclude))
    return query


def lease(settings: ReviewSettings, duty: str) -> timedelta:
    """How long a lease of ``duty`` lasts."""
    minutes = settings.annotate_lease_minutes if duty == "annotate" else settings.review_lease_minutes
    return timedelta(minutes=minutes)


def assign(s, case: Case, user: User, duty: str, actor: str, why: str, settings: ReviewSettings) -> Assignment:
    """Give ``user`` a lease of ``duty`` on ``case`` (an ``annotate`` lease makes them the case's junior)."""
    now = utcnow()
    assignment = Assignment(
        case_id=case.id,
        user_id=user.id,
        duty=duty,
        round=case.round,
        status="active",
        assigned=now,
        expires=now + lease(settings, duty),
    )
    s.add(assignment)
    if duty == "annotate":
        case.junior_id = user.id
    audit.record(s, case.id, actor, "assign", case.state, case.state, f"{duty}: {user.name} ({why})")
    return assignment


def require(s, case: Case, who: Principal, duty: str, state: str) -> Assignment:
    """``who``'s live lease of ``duty`` on ``case`` in ``state``.

    Raises:
        Forbidden: ``who`` never had a part in the case (checked first), or holds no live lease of this round.
        Conflict: the case is not in ``state``.
    """
    ever = s.execute(
        select(Assignment.id)
        .where(Assignment.case_id == case.id, Assignment.user_id == who.id, Assignment.duty == duty)
        .limit(1)
    ).first()
    assignment = live(s, case.id, duty, user_id=who.id) if ever is not None and case.state == state else None
    check_hold(
        case.id,
        case.state,
        who,
        duty,
        state,
        ever is not None,
        assignment is not None and (duty != "review" or assignment.round == case.round),
    )
    return assignment


def check_hold(case_id: str, now: str, who: Principal, duty: str, state: str, ever: bool, held: bool) -> None:
    """:func:`require`'s answers, in order, from what the caller read (``now``: the case's state; ``ever``: ``who``
    held ``duty`` on it once; ``held``: a live lease of this round). Also :mod:`review.hot_paths`'."""
    if not ever:
        raise Forbidden(f"Case {case_id!r} is not assigned to you ({who.name}): {TAKE_IT[duty]}", state=now, duty=duty)
    if now != state:
        raise Conflict(f"{where_it_is(now)} {WHEN_YOU_CAN[duty]}", state=now, duty=duty)
    if not held:
        raise Forbidden(
            f"Your hold on case {case_id!r} has ended (it expired, or a new round began): {TAKE_IT[duty]}",
            state=now,
            duty=duty,
        )


def refuse_author(case_id: str, state: str, who: Principal) -> Forbidden:
    """The refusal of a review by a reader who drew a label of the case."""
    return Forbidden(
        f"You ({who.name}) corrected a label of case {case_id!r}, so you cannot review it: reviews are by readers who "
        "did not draw it.",
        state=state,
    )


def pick_seniors(s, case: Case, per_case: int) -> List[User]:
    """Up to ``per_case`` active seniors who wrote no label of the case: the previous round's readers first (they
    check the changes they asked for, and their approvals of untouched organs carry over: :mod:`review.carry_over`),
    then the least loaded."""
    authors = set(s.execute(select(LabelVersion.author_user_id).where(LabelVersion.case_id == case.id)).scalars()) - {
        None
    }
    again: List[User] = []
    if case.round > 1:
        before = select(Review.user_id).where(Review.case_id == case.id, Review.round == case.round - 1).distinct()
        for user_id in sorted(set(s.execute(before).scalars()) - authors):
            user = s.get(User, user_id)
            if user is not None and user.active and user.role == "senior":
                again.append(user)
        again = again[:per_case]
    rest = least_loaded(s, "senior", "review", authors | {u.id for u in again}, per_case - len(again))
    return again + rest if per_case > len(again) else again


def review_slots(s, case: Case, per_case: int) -> int:
    """How many more seniors may take a review of the case's current round."""
    return per_case - len(readers(s, case))


def expire(s, assignment: Assignment, case: Case) -> None:
    """End a lapsed lease and log it: the case is back in the pool."""
    assignment.status = "expired"
    user = s.get(User, assignment.user_id)
    reason = f"{user.name}'s {assignment.duty} lease expired; the case is back in the pool"
    audit.record(s, case.id, "system", "lease_expired", case.state, case.state, reason)


def expire_stale(s, case: Case) -> None:
    """Log the expiry of the case's lapsed leases in the caller's transaction (before the sweep sees them)."""
    stale = select(Assignment).where(
        Assignment.case_id == case.id, Assignment.status == "active", Assignment.expires < utcnow()
    )
    for assignment in s.execute(stale).scalars().all():
        expire(s, assignment, case)


def expire_due(store: ReviewStore) -> int:
    """Expire every lapsed lease in the store (one write transaction, only when there are some); how many.

    Each case is locked first, as every transition locks it (so two leaders for a moment, or a claim renewing the
    lease, cannot both act on it), and its leases are checked again under that lock."""
    now = utcnow()
    with store.read() as s:
        due = s.execute(
            select(Assignment.id, Assignment.case_id).where(Assignment.status == "active", Assignment.expires < now)
        ).all()
    if not due:
        return 0
    expired = 0
    with store.write() as s:
        for case_id in sorted({case_id for _, case_id in due}):  # one order everywhere: no deadlock between sweeps
            store.lock_case(s, case_id)
        for assignment in s.execute(select(Assignment).where(Assignment.id.in_([i for i, _ in due]))).scalars():
            if assignment.status != "active" or assignment.expires >= now:
                continue
            expire(s, assignment, s.get(Case, assignment.case_id))
            expired += 1
    return expired
