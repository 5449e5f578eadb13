"""The audit log: every transition and every notable act on a case is one row, written in the act's transaction."""

from __future__ import annotations

from typing import Any, Dict, Optional

from review.schema import AuditEvent, Case
from review.states import check_transition
from review.store import utcnow


def record(s, *event, **fields) -> None:
    """Add one audit event, :func:`row`'s arguments (who, what, from which state to which, why), to the session's
    transaction."""
    s.add(AuditEvent(**row(*event, **fields)))


def row(
    case_id: Optional[str],
    actor: str,
    action: str,
    from_state: Optional[str],
    to_state: Optional[str],
    reason: str,
    details: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """One audit event's columns, for a bulk insert (:mod:`review.hot_paths`) or :func:`record`."""
    return {
        "case_id": case_id,
        "actor": str(actor)[:96],
        "action": action,
        "from_state": from_state,
        "to_state": to_state,
        "reason": reason,
        "at": utcnow(),
        "details": details or {},
    }


def move(s, case: Case, target: str, actor: str, action: str, reason: str) -> None:
    """Move ``case`` to ``target`` if the state machine allows it (else 409), and record the transition."""
    check_transition(case.id, case.state, target)
    record(s, case.id, actor, action, case.state, target, reason)
    case.state = target
    case.updated = utcnow()
