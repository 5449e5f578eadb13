"""Team statistics from the review store: reader agreement, organs sent back, and the team overview's figures."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any, Dict, List

from sqlalchemy import func, select

from review import pass_policy
from review.schema import AuditEvent, Case, Decision
from review.states import STATES
from review.workflow import Workflow


def agreement_stats(workflow: Workflow) -> Dict[str, Any]:
    """Per reader: cases read, mean Dice/NSD against consensus; per organ: how often it was sent back."""
    with workflow.store.read() as s:
        decisions = s.execute(select(Decision)).scalars().all()
    readers: Dict[str, Dict[str, list]] = defaultdict(lambda: {"dice": [], "nsd": []})
    sent_back: Dict[str, int] = defaultdict(int)
    for d in decisions:
        for organ, state in (d.organs or {}).items():
            if state == "changes":
                sent_back[organ] += 1
        for reader, scores in (d.agreement or {}).get("against_consensus", {}).items():
            for metric in ("dice", "nsd"):
                if scores.get(metric) is not None:
                    readers[reader][metric].append(scores[metric])
    return {
        "readers": {
            name: {
                "cases": len(v["dice"]),
                "mean_dice": round(sum(v["dice"]) / len(v["dice"]), 4) if v["dice"] else None,
                "mean_nsd": round(sum(v["nsd"]) / len(v["nsd"]), 4) if v["nsd"] else None,
            }
            for name, v in sorted(readers.items())
        },
        "organs_sent_back": dict(sorted(sent_back.items(), key=lambda kv: -kv[1])),
        "rounds_decided": len(decisions),
    }


def team_figures(workflow: Workflow) -> Dict[str, Any]:
    """Cases per state, finals per day, mean hours per stage, rounds of final cases, agreement, organs sent back."""
    with workflow.store.read() as s:
        per_state = dict(s.execute(select(Case.state, func.count()).group_by(Case.state)).all())
        rounds = Counter(s.execute(select(Case.round).where(Case.state == "final")).scalars())
        policy = pass_policy.figures(s)
        moves = s.execute(
            select(AuditEvent.case_id, AuditEvent.at, AuditEvent.from_state, AuditEvent.to_state)
            .where(AuditEvent.from_state.is_not(None), AuditEvent.to_state != AuditEvent.from_state)
            .order_by(AuditEvent.case_id, AuditEvent.id)
        ).all()
    finals_per_day: Counter = Counter()
    stage_seconds: Dict[str, List[float]] = defaultdict(list)
    entered: Dict[str, datetime] = {}
    for case_id, at, _from, to in moves:
        if case_id in entered:  # the time the case spent in the state it leaves now
            stage_seconds[_from].append((at - entered[case_id]).total_seconds())
        entered[case_id] = at
        if to == "final":
            finals_per_day[at.date().isoformat()] += 1
    agreement = agreement_stats(workflow)
    return {
        "cases_per_state": {state: per_state.get(state, 0) for state in STATES},
        "finals_per_day": dict(sorted(finals_per_day.items())),
        "mean_hours_per_stage": {k: round(sum(v) / len(v) / 3600, 3) for k, v in stage_seconds.items() if v},
        "rounds_of_final_cases": dict(sorted(rounds.items())),
        "pass_policy": policy,
        "readers": agreement["readers"],
        "organs_sent_back": agreement["organs_sent_back"],
    }
