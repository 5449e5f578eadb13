"""Summaries of cases: queue lines (state, round, priority, waiting time, assignees) and a final label's provenance."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from sqlalchemy import select

from review import assignments
from review.feedback import sent_back, sent_back_reason
from review.schema import Assignment, Case, LabelVersion, User
from review.store import utcnow


def case_summary(s, case: Case) -> Dict[str, Any]:
    """A case's queue line: state, round, priority, why it is there, waiting time and its active assignees."""
    return case_summaries(s, [case])[0]


def case_summaries(s, cases: Sequence[Case]) -> List[Dict[str, Any]]:
    """Queue lines for several cases, with one query for all their assignees."""
    ids = [c.id for c in cases]
    by_case: Dict[str, List[Dict[str, Any]]] = {}
    if ids:
        rows = s.execute(
            select(Assignment.case_id, User.name, Assignment.duty, Assignment.expires)
            .join(User, User.id == Assignment.user_id)
            .where(Assignment.case_id.in_(ids), Assignment.status == "active")
        ).all()
        for case_id, name, duty, expires in rows:
            by_case.setdefault(case_id, []).append({"user": name, "duty": duty, "expires": expires.isoformat() + "Z"})
    back = sent_back(s, cases)
    return [
        {
            "case_id": case.id,
            "state": case.state,
            "round": case.round,
            "priority": case.priority,
            "priority_reason": case.priority_reason,
            "sent_back": back.get(case.id, []),
            # a case sent back says so before any priority reason: to its junior it is not a new case
            "why": sent_back_reason(back[case.id]) if case.id in back else case.priority_reason,
            "waiting_seconds": round((utcnow() - case.updated).total_seconds(), 1),
            "assignees": by_case.get(case.id, []),
        }
        for case in cases
    ]


def final_provenance(s, case: Case, version: LabelVersion) -> Dict[str, Any]:
    """What the datastore's ``final`` label carries: the version, its hash and reviewers, and the Reviewer module's
    ``segmentationMeta`` (approved)."""
    reviewers = [s.get(User, uid).name for uid in assignments.readers(s, case)]
    return {
        "workflow": "amos-label consensus",
        "version": version.id,
        "sha256": version.sha256,
        "round": case.round,
        "reviewers": reviewers,
        "segmentationMeta": {
            "status": "approved",
            "approvedBy": ", ".join(reviewers),
            "editTime": int(version.created.timestamp()),
            "comment": "consensus",
        },
    }
