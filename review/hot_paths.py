"""The review API's hot paths as a few indexed Core statements each: Next Sample's claim, a junior's submit, a
senior's vote.

Same rules as the rest of :class:`review.workflow.Workflow` (leases, exactly one holder, 409 on a repeated write, the
audit rows in the same transaction), without the ORM's unit of work, which cost about 1 ms a statement, and without
re-reading the case for the answer: the answer is built from what the transaction read and wrote.

A case row is the lock, as everywhere in the workflow: SQLite serialises write transactions (``BEGIN IMMEDIATE``), so
what a statement reads there is current. On PostgreSQL the claim first locks a candidate's row with ``FOR UPDATE SKIP
LOCKED`` (a case another claim holds is skipped, not waited for) and reads its leases in the next statement, which
under READ COMMITTED sees every claim committed before the lock was granted.

The rare branches stay on the ORM path, which the workflow takes instead: a later round's submit (carried approvals),
a round under a pass policy, a vote that reopens a carried approval, and a decided round that goes back to the junior.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sqlalchemy import DateTime, and_, bindparam, exists, insert, null, or_, select, union_all, update
from sqlalchemy.sql import Executable, Select

from amoslabel.errors import Conflict, NotFound, Unprocessable
from amoslabel.organs import ORGAN_BY_ID, ORGANS
from review import assignments, audit, pass_policy
from review.auth import Principal
from review.consensus import decide_round
from review.eligibility import QUEUE_ORDER, queue_key, queue_parts
from review.schema import Assignment, AuditEvent, Case, Decision, LabelVersion, Review, User
from review.states import check_transition
from review.store import utcnow
from review.summaries import case_summary
from review.votes import check_once, store_votes, vote_event

FALLBACK = object()  # a rare branch: the ORM path answers instead (nothing was written)
_AUTHOR_KINDS = ("junior", "imported")  # a senior who wrote one of these may not review the case
_CANDIDATES = 5  # cases read per Next Sample: taken ones (another claim won the race) are skipped


def _is_reader(status):
    return or_(status == "active", status == "done")


class HotPaths:
    """The hot half of :class:`review.workflow.Workflow`, which provides ``store``, ``settings``, ``rules``,
    ``_settle`` and ``_tell``."""

    # -- Next Sample ---------------------------------------------------------------------------------------------
    def claim_next(self, who: Principal) -> Optional[Dict[str, Any]]:
        """The first case of ``who``'s queue, claimed (its lease renewed if theirs): Slicer's Next Sample. None when
        nothing waits."""
        if who.role not in ("junior", "senior"):
            return None  # admins claim nothing: they resolve escalated cases on the review pages
        with self.store.write() as s:
            now = utcnow()
            for own in (True, False):  # the user's own leases first: the others are not read while one is claimed
                for candidate in self._candidates(s, who, now, own):
                    claimed = self._claim_candidate(s, who, candidate, now)
                    if claimed is not None:
                        return claimed
        return None

    def _candidates(self, s, who: Principal, now: datetime, own: bool, case_id: Optional[str] = None) -> List[Any]:
        """The first cases of the queue's ``own`` part or of the others (or ``case_id`` alone, if it is there) with
        what the claim needs: ``mine`` (my live lease's id) and ``stale`` (a lapsed lease to expire first)."""
        rows = []
        for query in _candidate_queries(who.role, self.settings.reviewers_per_case, own, case_id is not None):
            rows += s.execute(query, {"me": who.id, "now": now, "case_id": case_id}).all()
        return sorted(rows, key=queue_key)[:_CANDIDATES]

    def _claim_candidate(self, s, who: Principal, candidate, now: datetime) -> Optional[Dict[str, Any]]:
        if not self.store.is_sqlite:
            locked = select(Case.id).where(Case.id == candidate.id).with_for_update(skip_locked=True)
            if s.execute(locked).first() is None:
                return None  # another claim holds it: the next case, not a wait
            # read after the lock: every earlier claim is seen
            fresh = self._candidates(s, who, now, candidate.mine is not None, candidate.id)
            if not fresh:
                return None  # claimed by another between the queue's read and the lock
            candidate = fresh[0]
        if candidate.stale:  # the lapsed lease's expiry is logged before the case is taken again (rare)
            assignments.expire_stale(s, s.get(Case, candidate.id))
            s.flush()  # the Core statements below do not flush the ORM's changes themselves
        if who.role == "junior":
            return self._claim_as_junior(s, who, candidate, now)
        return self._claim_as_senior(s, who, candidate, now)

    def _claim_as_junior(self, s, who: Principal, case, now: datetime) -> Dict[str, Any]:
        expires = now + assignments.lease(self.settings, "annotate")
        connection = s.connection()
        events = []
        if case.mine is not None:  # their own case: the lease renewed
            connection.execute(update(Assignment).where(Assignment.id == case.mine).values(expires=expires))
        else:
            connection.execute(insert(Assignment), [_lease(case.id, who.id, "annotate", case.round, now, expires)])
            events.append(
                audit.row(case.id, who.name, "assign", case.state, case.state, f"annotate: {who.name} (claimed)")
            )
        state, updated = case.state, case.updated
        changes: Dict[str, Any] = {"junior_id": who.id}
        if case.state == "prelabelled":
            check_transition(case.id, case.state, "with_junior")
            events.append(audit.row(case.id, who.name, "claim", case.state, "with_junior", "claimed by a junior"))
            state, updated = "with_junior", now
            changes.update(state=state, updated=updated)
        if case.mine is None or state != case.state:
            connection.execute(update(Case).where(Case.id == case.id).values(**changes))
        if events:
            connection.execute(insert(AuditEvent), events)
        answer = _answer(case, state, case.round, updated, [_assignee(who.name, "annotate", expires)])
        if state == "with_junior" and case.round > 1:  # a case sent back: its queue line says what was asked
            return case_summary(s, s.get(Case, case.id))
        return answer

    def _claim_as_senior(self, s, who: Principal, case, now: datetime) -> Optional[Dict[str, Any]]:
        connection = s.connection()
        expires = now + assignments.lease(self.settings, "review")
        holders = self._round_readers(connection, case.id, case.round)
        if case.mine is not None:
            connection.execute(update(Assignment).where(Assignment.id == case.mine).values(expires=expires))
        else:
            if any(h.user_id == who.id for h in holders) or len({h.user_id for h in holders}) >= (
                self.settings.reviewers_per_case
            ):
                return None  # voted this round already, or its slots filled since the queue's read
            connection.execute(insert(Assignment), [_lease(case.id, who.id, "review", case.round, now, expires)])
            event = audit.row(
                case.id, who.name, "assign", case.state, case.state, f"review: {who.name} (claimed a review slot)"
            )
            connection.execute(insert(AuditEvent), [event])
        lines = [
            _assignee(h.name, "review", expires if h.user_id == who.id else h.expires)
            for h in holders
            if h.status == "active"
        ]
        if case.mine is None:
            lines.append(_assignee(who.name, "review", expires))
        return _answer(case, case.state, case.round, case.updated, lines)

    @staticmethod
    def _round_readers(connection, case_id: str, round_: int) -> List[Any]:
        """The review leases (active or done) of the case's round, with their users' names."""
        return connection.execute(_ROUND_READERS, {"case_id": case_id, "round": round_}).all()

    # -- submit ----------------------------------------------------------------------------------------------------
    def _submit_fast(self, who: Principal, case_id: str) -> Any:
        """A junior's submit of round 1 without a pass policy (else :data:`FALLBACK`); returns (answer, notice)."""
        if self.settings.pass_policy is not None:
            return FALLBACK
        with self.store.write() as s:
            connection = s.connection()
            now = utcnow()
            case = self._lock(s, case_id, who, "annotate", current=True)
            if case.round > 1:
                return FALLBACK  # the readers' approvals of untouched organs carry over (review.carry_over)
            _require(case, who, "annotate", "with_junior")
            if case.current_version is None:
                raise Conflict(f"Case {case_id!r} has no label to submit yet: save one first.", state=case.state)
            events = []
            version = {
                "id": case.current_version,
                "round": case.version_round,
                "path": case.path,
                "info": dict(case.info or {}),
            }
            if case.kind == "prelabel":  # the junior vouches for the pre-label unchanged: their own version
                info = {"unchanged_from": case.current_version}
                version_id = connection.execute(
                    insert(LabelVersion)
                    .values(
                        case_id=case_id,
                        sha256=case.sha256,
                        path=case.path,
                        kind="junior",
                        author_user_id=who.id,
                        author_model=None,
                        parent_id=case.current_version,
                        round=case.round,
                        created=now,
                        info=info,
                    )
                    .returning(LabelVersion.id)
                ).scalar_one()
                version = {"id": version_id, "round": case.round, "path": case.path, "info": info}
                events.append(
                    audit.row(
                        case_id,
                        who.name,
                        "version",
                        case.state,
                        case.state,
                        f"junior label v{version_id}",
                        {"sha256": case.sha256},
                    )
                )
            check_transition(case_id, case.state, "submitted")
            events.append(
                audit.row(case_id, who.name, "submit", case.state, "submitted", f"round {case.round} submitted")
            )
            connection.execute(
                update(Assignment)
                .where(Assignment.case_id == case_id, Assignment.duty == "annotate", Assignment.status == "active")
                .values(status="done")
            )
            seniors = connection.execute(_seniors_query(self.settings.reviewers_per_case), {"case_id": case_id}).all()
            expires = now + assignments.lease(self.settings, "review")
            if seniors:
                leases = [_lease(case_id, u.id, "review", case.round, now, expires) for u in seniors]
                connection.execute(insert(Assignment), leases)
                events += [
                    audit.row(
                        case_id, "system", "assign", "submitted", "submitted", f"review: {u.name} (routed for review)"
                    )
                    for u in seniors
                ]
                check_transition(case_id, "submitted", "in_review")
                events.append(
                    audit.row(
                        case_id, "system", "route", "submitted", "in_review", "to " + ", ".join(u.name for u in seniors)
                    )
                )
            state = "in_review" if seniors else "submitted"
            connection.execute(
                update(Case).where(Case.id == case_id).values(state=state, updated=now, current_version=version["id"])
            )
            connection.execute(insert(AuditEvent), events)
            answer = _answer(case, state, case.round, now, [_assignee(u.name, "review", expires) for u in seniors])
        notice = {
            "case_id": case_id,
            "version": version["id"],
            "round": version["round"],
            "kind": "submitted",
            "author": who.pseudonym,
            "path": version["path"],
            "info": version["info"],
        }
        return answer, notice

    # -- a vote ----------------------------------------------------------------------------------------------------
    def _review_fast(self, who: Principal, case_id: str, parsed: List[Dict[str, Any]], default: Optional[str]) -> Any:
        """A senior's votes on a round without a pass policy or carried approvals (else :data:`FALLBACK`)."""
        with self.store.write() as s:
            connection = s.connection()
            now = utcnow()
            case = self._lock(s, case_id, who, "review", current=False)
            _require(case, who, "review", "in_review")
            if case.authored:
                raise assignments.refuse_author(case_id, case.state, who)
            if pass_policy.designated(case.plan, case.round):
                return FALLBACK  # organs another reader approves alone (review.pass_policy)
            done = set()
            if case.voted:
                mine = connection.execute(
                    select(Review.organ, Review.carried_from).where(
                        Review.case_id == case_id, Review.round == case.round, Review.user_id == who.id
                    )
                ).all()
                if any(r.carried_from is not None for r in mine):
                    return FALLBACK  # a vote may reopen an approval carried from the last round (review.carry_over)
                done = {r.organ for r in mine}
            seen = check_once(parsed, done, who.name)
            if default is not None:
                parsed = parsed + [{"organ": o.id, "decision": default} for o in ORGANS if o.id not in done | seen]
            if not parsed:
                raise Unprocessable("no organ decision to record: send votes, or a default for the organs left")
            where = {"case_id": case_id, "round": case.round, "user_id": who.id, "created": now}
            store_votes(connection.execute, where, parsed, case.current_version)
            events = [vote_event(case_id, who.name, case.state, parsed)]
            if len(done | {v["organ"] for v in parsed}) >= len(ORGANS):
                connection.execute(update(Assignment).where(Assignment.id == case.lease).values(status="done"))
            return self._decide_fast(s, case, events, now)

    def _decide_fast(self, s, case, events: List[Dict[str, Any]], now: datetime) -> Dict[str, Any]:
        """Decide the round when every reader is in (:meth:`review.workflow.Workflow._decide`'s rule) and answer."""
        connection = s.connection()
        readers = self._round_readers(connection, case.id, case.round)
        active = [_assignee(r.name, "review", r.expires) for r in readers if r.status == "active"]
        outcome = "pending"
        if len({r.user_id for r in readers}) >= self._readers_needed(connection, case.id):
            votes: Dict[int, Dict[int, str]] = {}
            rows = connection.execute(
                select(Review.organ, Review.user_id, Review.decision).where(
                    Review.case_id == case.id, Review.round == case.round
                )
            )
            for organ, user_id, decision in rows:
                votes.setdefault(organ, {})[user_id] = decision
            outcome, organs = decide_round(votes, len({r.user_id for r in readers}), self.rules)
        if outcome == "pending":
            connection.execute(insert(AuditEvent), events)
            return _answer(case, case.state, case.round, case.updated, active)
        if outcome == "consensus":
            check_transition(case.id, case.state, "consensus")
            connection.execute(
                insert(Decision).values(
                    case_id=case.id,
                    round=case.round,
                    outcome=outcome,
                    created=now,
                    organs={ORGAN_BY_ID[k].name: v for k, v in organs.items()},
                )
            )
            events.append(
                audit.row(
                    case.id, "system", "consensus", case.state, "consensus", f"round {case.round}: every organ approved"
                )
            )
            connection.execute(update(Case).where(Case.id == case.id).values(state="consensus", updated=now))
            connection.execute(insert(AuditEvent), events)
            return _answer(case, "consensus", case.round, now, active)
        connection.execute(insert(AuditEvent), events)  # changes asked: back to the junior on the ORM path (rare)
        orm_case = s.get(Case, case.id)
        self._settle(s, orm_case, outcome, organs)
        s.flush()
        return case_summary(s, orm_case)

    def _readers_needed(self, connection, case_id: str) -> int:
        """:func:`review.assignments.readers_needed` in one statement."""
        return min(
            self.settings.reviewers_per_case,
            connection.execute(assignments.ELIGIBLE_READERS, {"case_id": case_id}).scalar_one(),
        )

    # -- the case row, locked --------------------------------------------------------------------------------------
    def _lock(self, s, case_id: str, who: Principal, duty: str, current: bool):
        """The case row (locked on PostgreSQL) with ``who``'s part in it: ``ever`` (held the duty once), ``lease``
        (their live lease), and for a submit the current version (``current``), for a vote whether they authored the
        case, whether they voted in this round and the newest pass-policy plan. 404 when there is no such case."""
        connection = s.connection()
        if not self.store.is_sqlite:
            connection.execute(select(Case.id).where(Case.id == case_id).with_for_update())
        query = _lock_query(duty, current)
        case = connection.execute(query, {"case_id": case_id, "me": who.id, "now": utcnow()}).first()
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        return case


# The statements, built once with bind parameters (me, now, case_id, round): building a statement costs more CPU
# than running it on an indexed table.
_ME, _NOW, _CASE, _ROUND = bindparam("me"), bindparam("now", type_=DateTime), bindparam("case_id"), bindparam("round")
_ROUND_READERS = (
    select(Assignment.id, Assignment.user_id, User.name, Assignment.status, Assignment.expires)
    .join(User, User.id == Assignment.user_id)
    .where(
        Assignment.case_id == _CASE,
        Assignment.duty == "review",
        Assignment.round == _ROUND,
        _is_reader(Assignment.status),
    )
    .order_by(Assignment.id)
)


@functools.lru_cache(maxsize=None)
def _seniors_query(reviewers_per_case: int) -> Select:
    """The readers of a new round: the least loaded active seniors who wrote no label of the case."""
    return assignments.by_load("senior", "review", assignments.AUTHORS, User.id, User.name).limit(reviewers_per_case)


@functools.lru_cache(maxsize=None)
def _candidate_queries(role: str, reviewers_per_case: int, own: bool, one_case: bool) -> Tuple[Executable, ...]:
    stale = exists().where(Assignment.case_id == Case.id, Assignment.status == "active", Assignment.expires < _NOW)
    columns = (Case.id, Case.state, Case.round, Case.priority, Case.priority_reason, Case.created, Case.updated)
    queries = []
    for part in queue_parts(role, _ME, _NOW, reviewers_per_case):
        if part.own != own:
            continue
        # the user's live lease: the one an own part is read from; the other parts hold none (they are disjoint)
        lease = (part.lease if part.own else null()).label("mine")
        query = part.select.with_only_columns(*columns, lease, stale.label("stale"))
        if one_case:
            query = query.where(Case.id == _CASE)
        queries.append(query.order_by(*QUEUE_ORDER).limit(_CANDIDATES))
    if len(queries) > 1:  # one statement: each part still one early-stopping scan, in a subquery of its own
        return (union_all(*(select(query.subquery()) for query in queries)),)
    return tuple(queries)


@functools.lru_cache(maxsize=None)
def _lock_query(duty: str, current: bool) -> Select:
    part = and_(Assignment.case_id == Case.id, Assignment.user_id == _ME, Assignment.duty == duty)
    held = (part, Assignment.status == "active", Assignment.expires >= _NOW)
    lease = select(Assignment.id).where(*held).order_by(Assignment.id).limit(1).scalar_subquery()
    lease_round = select(Assignment.round).where(*held).order_by(Assignment.id).limit(1).scalar_subquery()
    query = select(
        Case.id,
        Case.state,
        Case.round,
        Case.current_version,
        Case.priority,
        Case.priority_reason,
        Case.updated,
        exists().where(part).label("ever"),
        lease.label("lease"),
        lease_round.label("lease_round"),
    ).where(Case.id == _CASE)
    if current:
        return query.add_columns(
            LabelVersion.kind,
            LabelVersion.sha256,
            LabelVersion.path,
            LabelVersion.round.label("version_round"),
            LabelVersion.info,
        ).outerjoin(LabelVersion, LabelVersion.id == Case.current_version)
    authored = exists().where(
        LabelVersion.case_id == Case.id,
        LabelVersion.author_user_id == _ME,
        or_(*(LabelVersion.kind == k for k in _AUTHOR_KINDS)),
    )
    voted = exists().where(Review.case_id == Case.id, Review.round == Case.round, Review.user_id == _ME)
    plan = (
        select(AuditEvent.details)
        .where(AuditEvent.case_id == Case.id, AuditEvent.action == pass_policy.POLICY_EVENT)
        .order_by(AuditEvent.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return query.add_columns(authored.label("authored"), voted.label("voted"), plan.label("plan"))


def _require(case, who: Principal, duty: str, state: str) -> None:
    """:func:`review.assignments.require` on a row of :meth:`HotPaths._lock`."""
    held = case.lease is not None and (duty != "review" or case.lease_round == case.round)
    assignments.check_hold(case.id, case.state, who, duty, state, bool(case.ever), held)


def _lease(case_id: str, user_id: int, duty: str, round_: int, now: datetime, expires: datetime) -> Dict[str, Any]:
    """An active lease's row (:func:`review.assignments.assign`)."""
    return {
        "case_id": case_id,
        "user_id": user_id,
        "duty": duty,
        "round": round_,
        "status": "active",
        "assigned": now,
        "expires": expires,
    }


def _assignee(name: str, duty: str, expires: datetime) -> Dict[str, Any]:
    return {"user": name, "duty": duty, "expires": expires.isoformat() + "Z"}


def _answer(case, state: str, round_: int, updated: datetime, assignees: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """A case's queue line (:func:`review.summaries.case_summary`) from what the write read and wrote; a case sent
    back (whose line names the organs) is answered by a read instead."""
    return {
        "case_id": case.id,
        "state": state,
        "round": round_,
        "priority": case.priority,
        "priority_reason": case.priority_reason,
        "sent_back": [],
        "why": case.priority_reason,
        "waiting_seconds": round((utcnow() - updated).total_seconds(), 1),
        "assignees": list(assignees),
    }
