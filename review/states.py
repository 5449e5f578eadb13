"""Case states and the transitions between them: data, checked in one place.

new -> prelabelled -> with_junior -> submitted -> in_review -> changes_requested -> with_junior ...
                                                          \\-> consensus -> final
in_review -> escalated (too many rounds) -> with_junior | consensus (an admin decides)
any state -> withdrawn (an admin withdraws the scan: wrong patient, consent withdrawn); nothing leaves it
"""

from __future__ import annotations

from typing import Dict, FrozenSet

from amoslabel.errors import Conflict

STATES = (
    "new",
    "prelabelled",
    "with_junior",
    "submitted",
    "in_review",
    "changes_requested",
    "consensus",
    "final",
    "escalated",
    "withdrawn",
)

TRANSITIONS: Dict[str, FrozenSet[str]] = {
    "new": frozenset({"prelabelled", "final", "withdrawn"}),  # final: a label imported as final with the scan
    "prelabelled": frozenset({"with_junior", "withdrawn"}),
    "with_junior": frozenset({"submitted", "withdrawn"}),
    "submitted": frozenset({"in_review", "withdrawn"}),
    "in_review": frozenset({"changes_requested", "consensus", "escalated", "withdrawn"}),
    "changes_requested": frozenset({"with_junior", "withdrawn"}),
    "escalated": frozenset({"with_junior", "consensus", "withdrawn"}),
    "consensus": frozenset({"final", "withdrawn"}),
    "final": frozenset({"withdrawn"}),
    "withdrawn": frozenset(),
}
CLOSED = ("final", "withdrawn")  # no one works on these: not queued, not scored


def check_transition(case_id: str, current: str, target: str) -> None:
    """Raise :class:`Conflict` (409) unless ``current -> target`` is a legal transition."""
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing"
        raise Conflict(f"case {case_id!r} is {current}: it cannot go to {target} (from {current}: {allowed})")
