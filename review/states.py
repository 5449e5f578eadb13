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

# Where a case is, in a reader's words. A refusal says this; its ``state`` field keeps the internal name for programs.
WHERE_IT_IS: Dict[str, str] = {
    "new": "This case has no pre-label yet.",
    "prelabelled": "This case is waiting for a junior to take it.",
    "with_junior": "This case is with its junior, who is correcting the label.",
    "submitted": "This case has just been submitted and is on its way to the reviewers.",
    "in_review": "This case is with the reviewers now.",
    "changes_requested": "The reviewers have sent this case back for changes.",
    "consensus": "The reviewers agree on this case; it is becoming final.",
    "final": "This case is final: its label is decided.",
    "escalated": "The reviewers could not agree on this case; an admin settles it.",
    "withdrawn": "An admin has withdrawn this case.",
}
# What a user with a duty may do about a case that is not where the duty needs it
WHEN_YOU_CAN: Dict[str, str] = {
    "annotate": "You can edit it again if the reviewers send it back.",
    "review": "Reviewers vote while a case is with the reviewers.",
}


def where_it_is(state: str) -> str:
    """A case's state in a reader's words."""
    return WHERE_IT_IS.get(state, f"This case is {state.replace('_', ' ')}.")


def check_transition(case_id: str, current: str, target: str) -> None:
    """Raise :class:`Conflict` (409) unless ``current -> target`` is a legal transition."""
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing"
        raise Conflict(f"case {case_id!r} is {current}: it cannot go to {target} (from {current}: {allowed})")
