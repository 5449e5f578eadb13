"""Which cases a cohort run does, and which it skips with the reason (read from the review store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from sqlalchemy import select

from review.schema import Case, CaseScore, LabelVersion
from review.store import ReviewStore

# a pre-label replaces the label only before a junior has it (review.workflow.Workflow.record_prelabel)
PRELABEL_STATES = ("new", "prelabelled")


@dataclass
class CohortPlan:
    """The cases to do, in id order, and every skipped case with why."""

    todo: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)


def states(store: ReviewStore, cases: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """case id -> workflow state (only ``cases`` when given; an unknown id maps to nothing)."""
    with store.read() as s:
        query = select(Case.id, Case.state)
        rows = s.execute(query).all()
    table = {case_id: state for case_id, state in rows}
    return table if cases is None else {c: table[c] for c in cases if c in table}


def prelabelled_by(store: ReviewStore, model_tag: str, case_id: Optional[str] = None) -> set:
    """Cases (or just ``case_id``) that already have a pre-label version from this model version (``model_tag``:
    e.g. ``unet:v3``)."""
    query = select(LabelVersion.case_id).where(LabelVersion.kind == "prelabel", LabelVersion.author_model == model_tag)
    if case_id is not None:
        query = query.where(LabelVersion.case_id == case_id)
    with store.read() as s:
        return set(s.execute(query).scalars())


def scored_with(store: ReviewStore, members: Dict[str, int]) -> set:
    """Cases whose stored score came from exactly these network versions (the prior aside, as the server's
    :meth:`strategies.scoring.ScoringWorker.stale` compares)."""
    with store.read() as s:
        rows = s.execute(select(CaseScore.case_id, CaseScore.members)).all()
    return {c for c, m in rows if {k: v for k, v in (m or {}).items() if k != "prior"} == members}


def plan_cases(
    table: Dict[str, str],
    done: set,
    allowed_states: Sequence[str],
    done_reason: str,
    wanted: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
) -> CohortPlan:
    """Split cases into to-do and skipped: already done, in a state the run may not touch, or unknown."""
    plan = CohortPlan()
    for case_id in wanted if wanted is not None else sorted(table):
        state = table.get(case_id)
        if state is None:
            plan.skipped[case_id] = "not a case of this studies folder"
        elif case_id in done:
            plan.skipped[case_id] = done_reason
        elif state not in allowed_states:
            plan.skipped[case_id] = f"{state.replace('_', ' ')}: past pre-labelling"
        elif limit is None or len(plan.todo) < limit:
            plan.todo.append(case_id)
    return plan
