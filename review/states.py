"""Case states and the transitions between them: data, checked in one place.

new -> prelabelled -> with_junior -> submitted -> in_review -> changes_requested -> with_junior ...
                                                          \\-> consensus -> final
in_review -> escalated (too many rounds) -> with_junior | consensus (an admin decides)
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
)

TRANSITIONS: Dict[str, FrozenSet[str]] = {
    "new": frozenset({"prelabelled", "final"}),  # final: a label imported as final with the scan
    "prelabelled": frozenset({"with_junior"}),
    "with_junior": frozenset({"submitted"}),
    "submitted": frozenset({"in_review"}),
    "in_review": frozenset({"changes_requested", "consensus", "escalated"}),
    "changes_requested": frozenset({"with_junior"}),
    "escalated": frozenset({"with_junior", "consensus"}),
    "consensus": frozenset({"final"}),
    "final": frozenset(),
}


def check_transition(case_id: str, current: str, target: str) -> None:
    """Raise :class:`Conflict` (409) unless ``current -> target`` is a legal transition."""
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing"
        raise Conflict(f"case {case_id!r} is {current}: it cannot go to {target} (from {current}: {allowed})")
