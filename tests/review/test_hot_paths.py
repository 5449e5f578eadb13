"""The hot paths (review.hot_paths): Next Sample's claim, submit and a vote as a few Core statements, answering what
a read of the case would say, and leaving the rare branches to the ORM path."""

from __future__ import annotations

from sqlalchemy import event, select

import pytest

from amoslabel.errors import Conflict
from review.schema import AuditEvent, Case
from review.summaries import case_summary
from tests.review.conftest import LABEL, make_team


def _read(team, case_id: str) -> dict:
    with team.store.read() as s:
        return case_summary(s, s.get(Case, case_id))


def _same(answer: dict, read: dict) -> None:
    """The write's answer is the read's queue line (the waiting time aside: they are a moment apart)."""

    def line(summary: dict) -> dict:  # assignees in any order: the read does not sort them
        people = sorted(summary["assignees"], key=lambda a: (a["user"], a["duty"]))
        return {**{k: v for k, v in summary.items() if k != "waiting_seconds"}, "assignees": people}

    assert line(answer) == line(read)
    assert abs(answer["waiting_seconds"] - read["waiting_seconds"]) < 5


class Statements:
    """Counts the SQL statements the store's engines run (BEGIN and COMMIT included)."""

    def __init__(self, store):
        self.count = 0
        self.engines = {store.engine, store._read_engine}
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_):
        self.count += 1

    def during(self, run):
        before = self.count
        result = run()
        return result, self.count - before


def test_each_answer_is_what_a_read_says_in_few_statements(tmp_path):
    team = make_team(tmp_path, routing="pool")  # Next Sample takes the case (least_loaded routes it at once)
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior", {})
    statements = Statements(team.store)

    claimed, n_claim = statements.during(lambda: wf.claim_next(u["j1"]))
    _same(claimed, _read(team, "c1"))
    assert claimed["state"] == "with_junior" and claimed["assignees"][0]["user"] == "j1"
    again = wf.claim_next(u["j1"])  # their own case again: the lease renewed, nothing new assigned
    assert again["case_id"] == "c1" and len(again["assignees"]) == 1
    assert wf.claim_next(u["j2"]) is None  # one junior per case

    submitted, n_submit = statements.during(lambda: wf.submit(u["j1"], "c1"))
    _same(submitted, _read(team, "c1"))
    assert submitted["state"] == "in_review" and {a["user"] for a in submitted["assignees"]} == {"s1", "s2", "s3"}
    assert len(team.published) == 0  # nothing final yet

    for name in ("s1", "s2"):
        claimed = wf.claim_next(u[name])
        _same(claimed, _read(team, "c1"))
        voted, n_vote = statements.during(lambda n=name: wf.review(u[n], "c1", [], default="approve"))
        _same(voted, _read(team, "c1"))
        assert voted["state"] == "in_review"
    assert wf.claim_next(u["s4"]) is None  # s3 holds the third slot
    voted = wf.review(u["s3"], "c1", [], default="approve")
    _same(voted, _read(team, "c1"))
    assert voted["state"] == "consensus"
    with team.store.read() as s:
        actions = list(s.execute(select(AuditEvent.action).where(AuditEvent.case_id == "c1").order_by(AuditEvent.id)))
    assert [a for (a,) in actions] == [
        "register", "version", "pre-label",  # the pre-label
        "assign", "claim",  # Next Sample
        "version", "submit", "assign", "assign", "assign", "route",  # submit: the junior vouches for it unchanged
        "review", "review", "review", "consensus",
    ]  # fmt: skip
    print(f"statements: Next Sample {n_claim}, submit {n_submit}, vote {n_vote}")
    # BEGIN, the reads and the writes, each one statement (before these paths: 9, 20 and 18)
    assert n_claim <= 6 and n_submit <= 8 and n_vote <= 10


def test_a_repeated_write_is_a_409_and_changes_nothing(tmp_path):
    team = make_team(tmp_path, routing="pool", reviewers_per_case=1)
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior", {})
    wf.claim_next(u["j1"])
    wf.submit(u["j1"], "c1")
    with pytest.raises(Conflict):
        wf.submit(u["j1"], "c1")
    assert wf.claim_next(u["s1"])["case_id"] == "c1"
    wf.review(u["s1"], "c1", [{"organ": 6, "decision": "approve"}])
    with pytest.raises(Conflict, match="liver"):
        wf.review(u["s1"], "c1", [{"organ": "liver", "decision": "approve"}])
    back = wf.review(u["s1"], "c1", [{"organ": 1, "decision": "changes_requested", "comment": "tip"}], "approve")
    # the round decided with changes: back to the junior (the ORM path), its line says what was asked
    assert back["state"] == "with_junior" and back["round"] == 2 and back["sent_back"][0]["organ"] == "spleen"
    _same(back, _read(team, "c1"))
    claimed = wf.claim_next(u["j1"])
    assert claimed["case_id"] == "c1" and claimed["sent_back"] == back["sent_back"]


def test_a_readers_own_routed_case_comes_before_any_other(tmp_path):
    """Next Sample and the queue give a senior the cases routed to them first, then cases with a free slot (even
    of a higher priority): routed cases left behind hold their readers' slots for a whole lease."""
    from review.queries import queue
    from review.schema import Assignment

    team = make_team(tmp_path, reviewers_per_case=2)
    wf, u = team.workflow, team.users
    for case in ("b", "c"):
        wf.record_prelabel(case, LABEL, "prior", {})
        wf.claim(u["j1"], case)
        assert {a["user"] for a in wf.submit(u["j1"], case)["assignees"] if a["duty"] == "review"} == (
            {"s1", "s2"} if case == "b" else {"s3", "s4"}  # the least loaded seniors
        )
    with team.store.write() as s:  # s4 gave up c's slot; c is more urgent than b
        s.execute(
            select(Assignment).where(Assignment.case_id == "c", Assignment.user_id == u["s4"].id)
        ).scalar_one().status = "expired"
        s.get(Case, "c").priority = 10.0
    assert [c["case_id"] for c in queue(wf, u["s1"])] == ["b", "c"]
    assert wf.claim_next(u["s1"])["case_id"] == "b"
    wf.review(u["s1"], "b", [], default="approve")
    assert wf.claim_next(u["s1"])["case_id"] == "c"  # then the free slot
    assert [c["case_id"] for c in queue(wf, u["s2"])] == ["b"]  # c's slots are full now (s3, s1)


def test_a_lapsed_review_lease_frees_its_slot_at_once(tmp_path):
    """A reader's lease that lapsed counts as none for the next claim (not only after the sweep): another senior
    takes the slot, and the expiry is in the case's history."""
    from datetime import timedelta

    from review.schema import Assignment
    from review.store import utcnow

    team = make_team(tmp_path, reviewers_per_case=2)
    wf, u = team.workflow, team.users
    wf.record_prelabel("b", LABEL, "prior", {})
    wf.claim(u["j1"], "b")
    wf.submit(u["j1"], "b")  # routed to s1 and s2
    assert wf.claim_next(u["s3"]) is None  # both slots held
    with team.store.write() as s:
        lease = s.execute(select(Assignment).where(Assignment.case_id == "b", Assignment.user_id == u["s2"].id))
        lease.scalar_one().expires = utcnow() - timedelta(seconds=1)
    claimed = wf.claim_next(u["s3"])
    assert claimed["case_id"] == "b" and {a["user"] for a in claimed["assignees"] if a["duty"] == "review"} == {
        "s1",
        "s3",
    }
    with team.store.read() as s:
        expired = s.execute(
            select(AuditEvent).where(AuditEvent.case_id == "b", AuditEvent.action == "lease_expired")
        ).all()
    assert len(expired) == 1
