"""Read-only views of the review store: queues, a case's detail and history, version files, the newest event."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional

from sqlalchemy import func, select

from amoslabel.errors import NotFound
from amoslabel.organs import ORGAN_BY_ID
from review import pass_policy
from review.auth import Forbidden, Principal
from review.blinding import REVIEWER_EDIT, blind_round, hides_event
from review.consensus import aggregate_comments
from review.eligibility import QUEUE_ORDER, queue_key, queue_parts
from review.schema import Assignment, AuditEvent, Case, CaseScore, Comment, Decision, LabelVersion, Review, User
from review.store import ReviewStore, utcnow
from review.summaries import case_summaries, case_summary
from review.workflow import Workflow


def queue(workflow: Workflow, who: Principal, limit: int = 50) -> List[Dict[str, Any]]:
    """The user's cases: their own leases, then what they may claim; each highest priority first, then oldest."""
    cases = queue_cases(workflow, who, limit)
    with workflow.store.read() as s:
        return case_summaries(s, cases)


def queue_cases(workflow: Workflow, who: Principal, limit: int = 50) -> List[Case]:
    """The cases of :func:`queue`, without their queue lines (a lapsed lease counts as none here already)."""
    with workflow.store.read() as s:
        parts = queue_parts(who.role, who.id, utcnow(), workflow.settings.reviewers_per_case)
        # one ordered, early-stopping scan per part (see the index on cases), merged here
        cases = []
        for part in parts:
            found = s.execute(part.select.order_by(*QUEUE_ORDER).limit(limit)).scalars().all()
            cases += [(not part.own, queue_key(c), c) for c in found]
        return [row[-1] for row in sorted(cases, key=lambda row: row[:-1])[:limit]]


def next_case(workflow: Workflow, who: Principal) -> Dict[str, Any] | None:
    """The first case of the user's queue, claimed (Slicer's Next Sample): :meth:`Workflow.claim_next`."""
    return workflow.claim_next(who)


def case_detail(workflow: Workflow, case_id: str, who: Principal) -> Dict[str, Any]:
    """State, versions, this round's votes, every comment grouped by organ, decisions and agreement."""
    store: ReviewStore = workflow.store
    with store.read() as s:
        case = s.get(Case, case_id)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        _check_visible(s, case, who)
        blind = blind_round(s, case, who)
        names = dict(s.execute(select(User.id, User.name)).all())

        def hidden(round_: int, user_id: Optional[int]) -> bool:  # another senior's work of the blind round
            return blind is not None and round_ == blind.round and blind.hides_user(names.get(user_id))

        versions = [
            v
            for v in s.execute(select(LabelVersion).where(LabelVersion.case_id == case.id).order_by(LabelVersion.id))
            .scalars()
            .all()
            if not (v.kind == REVIEWER_EDIT and hidden(v.round, v.author_user_id))
        ]
        reviews = [
            r
            for r in s.execute(select(Review).where(Review.case_id == case.id).order_by(Review.id)).scalars().all()
            if not hidden(r.round, r.user_id)
        ]
        comments = [
            c
            for c in s.execute(select(Comment).where(Comment.case_id == case.id).order_by(Comment.id)).scalars().all()
            if not hidden(c.round, c.user_id)
        ]
        decisions = s.execute(select(Decision).where(Decision.case_id == case.id).order_by(Decision.id)).scalars().all()
        policy = pass_policy.latest(s, case.id) or {}
        this_round = policy.get("round") == case.round
        plan = pass_policy.designated(policy, case.round)
        score = s.get(CaseScore, case.id)
        # the quality estimator's per-organ prediction (strategies.quality), most likely to fail first
        quality = sorted(((score.components.get("quality") if score else None) or {}).values(), key=_worst_first)
        votes: Dict[str, Dict[str, str]] = defaultdict(dict)
        carried: Dict[str, List[str]] = defaultdict(list)  # approvals carried from the last round (carry_over)
        for r in reviews:
            if r.round == case.round:
                votes[ORGAN_BY_ID[r.organ].name][names[r.user_id]] = r.decision
                if r.carried_from is not None:
                    carried[ORGAN_BY_ID[r.organ].name].append(names[r.user_id])
        comment_items = [
            {
                "round": c.round,
                "reviewer": names[c.user_id],
                "organ": c.organ,
                "organ_name": ORGAN_BY_ID[c.organ].name,
                "text": c.text,
                "point_world": c.point_world,
                "point_voxel": c.point_voxel,
                "created": c.created.isoformat() + "Z",
            }
            for c in comments
        ]
        last_round = case.round - 1 if case.state == "with_junior" and case.round > 0 else case.round
        return {
            **case_summary(s, case),
            # the other seniors' votes, comments and edits of this round are hidden until this user has voted
            "blind": blind is not None,
            "current_version": case.current_version,
            "final_version": case.final_version,
            "versions": [
                {
                    "id": v.id,
                    "kind": v.kind,
                    "round": v.round,
                    "sha256": v.sha256,
                    "author": names.get(v.author_user_id) or v.author_model,
                    "parent": v.parent_id,
                    "created": v.created.isoformat() + "Z",
                }
                for v in versions
            ],
            "votes": votes,
            "carried": carried,
            "quality": quality,
            # the pass policy of this round: organs one reader approves alone, and those audited (full review)
            "one_approval": {ORGAN_BY_ID[o].name: names.get(r) for o, r in plan.items()},
            "audited": [ORGAN_BY_ID[o].name for o in policy.get("audited", [])] if this_round else [],
            "comments": comment_items,
            "feedback": aggregate_comments([c for c in comment_items if c["round"] == last_round]),
            "decisions": [
                {
                    "round": d.round,
                    "outcome": d.outcome,
                    "organs": d.organs,
                    "agreement": d.agreement,
                    "created": d.created.isoformat() + "Z",
                }
                for d in decisions
            ],
        }


def _worst_first(prediction: Dict[str, Any]) -> tuple:
    return (-prediction.get("p_fail", 0.0), prediction.get("organ", 0))


def history(workflow: Workflow, case_id: str, who: Principal) -> List[Dict[str, Any]]:
    """Every audit event of a case, oldest first."""
    with workflow.store.read() as s:
        case = s.get(Case, case_id)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        _check_visible(s, case, who)
        blind = blind_round(s, case, who)
        events = [
            e
            for e in s.execute(select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.id))
            .scalars()
            .all()
            if not hides_event(blind, e)
        ]
        return [
            {
                "at": e.at.isoformat() + "Z",
                "actor": e.actor,
                "action": e.action,
                "from": e.from_state,
                "to": e.to_state,
                "reason": e.reason,
            }
            for e in events
        ]


def version_file(workflow: Workflow, version_id: Optional[int]) -> Optional[str]:
    """The file of a label version (None for no version or an unknown one)."""
    if version_id is None:
        return None
    with workflow.store.read() as s:
        version = s.get(LabelVersion, version_id)
        return version.path if version else None


def audit_stamp(workflow: Workflow, case_id: Optional[str] = None) -> int:
    """The newest audit event's id (of a case, or of the whole store): any transition changes it."""
    with workflow.store.read() as s:
        query = select(func.max(AuditEvent.id))
        if case_id:
            query = query.where(AuditEvent.case_id == case_id)
        return s.execute(query).scalar() or 0


def _check_visible(s, case: Case, who: Principal) -> None:
    """Admins see every case; others see cases they hold or held an assignment on, or could claim now."""
    if who.role == "admin":
        return
    involved = s.execute(
        select(Assignment.id).where(Assignment.case_id == case.id, Assignment.user_id == who.id).limit(1)
    ).first()
    if involved:
        return
    claimable = (who.role == "junior" and case.state == "prelabelled") or (
        who.role == "senior" and case.state == "in_review"
    )
    if not claimable:
        raise Forbidden(f"case {case.id!r} is not in {who.name}'s queue")


def prelabels(store: ReviewStore, case_id: Optional[str] = None) -> Dict[str, tuple]:
    """case -> (version id, file) of each case's latest pre-label (what its junior got from a model); of one case
    when ``case_id`` is given."""
    query = select(LabelVersion.case_id, LabelVersion.id, LabelVersion.path).where(LabelVersion.kind == "prelabel")
    if case_id is not None:
        query = query.where(LabelVersion.case_id == case_id)
    with store.read() as s:
        rows = s.execute(query.order_by(LabelVersion.id)).all()
    return {case_id: (version, path) for case_id, version, path in rows}
