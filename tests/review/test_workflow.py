"""The review workflow on a real SQLite file: the AMOS round trip, consensus rules, leases, illegal transitions,
roles, escalation and STAPLE fusion."""

from __future__ import annotations

import sqlite3
import time

import pytest
from sqlalchemy import func, select

from amoslabel.errors import Conflict
from amoslabel.organs import ORGANS
from review.auth import Forbidden
from review.consensus import OrganRule
from review.queries import case_detail, history, queue
from review.schema import Assignment, LabelVersion, Review, User
from review.states import STATES, TRANSITIONS, check_transition
from tests.review.conftest import LABEL, make_team

PANCREAS = 10


def submitted_case(team, case_id="c1", edit=None):
    """A pre-labelled case, edited and submitted by j1, now in review by s1-s3."""
    wf, u = team.workflow, team.users
    wf.record_prelabel(case_id, LABEL, "prior", {})
    wf.save_version(u["j1"], case_id, edit or team.edited(f"{case_id}-j1", PANCREAS), submit=True)
    return case_id


def test_amos_round_trip(team):
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior:v1", {"params": {"model": "prior"}})
    assert [c["case_id"] for c in queue(wf, u["j1"])] == ["c1"]  # routed to the least loaded junior
    assert queue(wf, u["j2"]) == []
    wf.save_version(u["j1"], "c1", team.edited("junior-r1", PANCREAS), submit=True)
    detail = case_detail(wf, "c1", u["admin"])
    assert detail["state"] == "in_review"
    assert sorted(a["user"] for a in detail["assignees"]) == ["s1", "s2", "s3"]  # K = 3 distinct, not the author

    point = {"point_world": [-12.5, 40.0, 101.0], "point_voxel": [60, 48, 12]}
    wf.review(
        u["s1"],
        "c1",
        [{"organ": "pancreas", "decision": "changes_requested", "comment": "pancreatic tail missing", **point}],
        default="approve",
    )
    assert case_detail(wf, "c1", u["admin"])["state"] == "in_review"  # waits for every reader
    wf.review(u["s2"], "c1", [], default="approve")
    wf.review(u["s3"], "c1", [], default="approve")
    back = case_detail(wf, "c1", u["j1"])
    assert back["state"] == "with_junior" and back["round"] == 2
    feedback = back["feedback"]["pancreas"]
    assert feedback[0]["text"] == "pancreatic tail missing" and feedback[0]["reviewer"] == "s1"
    assert feedback[0]["point_world"] == point["point_world"] and feedback[0]["point_voxel"] == point["point_voxel"]

    wf.save_version(u["j1"], "c1", LABEL, submit=True)
    for senior in ("s1", "s2", "s3"):
        wf.review(u[senior], "c1", [], default="approve")
    assert case_detail(wf, "c1", u["admin"])["state"] == "consensus"
    final_id = wf.finalise("c1")
    detail = case_detail(wf, "c1", u["admin"])
    assert detail["state"] == "final" and detail["final_version"] == final_id
    assert [v["kind"] for v in detail["versions"]] == ["prelabel", "junior", "junior", "consensus"]
    # no reviewer edited: the final is the reviewed version's own file, not a copy written again
    assert detail["versions"][-1]["sha256"] == detail["versions"][-2]["sha256"]
    assert [(e["case_id"], e["kind"]) for e in wf.final_labels()] == [("c1", "consensus")]
    ((case_id, path, info),) = team.published
    assert case_id == "c1" and info["reviewers"] == ["s1", "s2", "s3"]
    assert info["segmentationMeta"]["status"] == "approved"
    moves = [(e["from"], e["to"]) for e in history(wf, "c1", u["admin"]) if e["from"] != e["to"]]
    assert moves == [
        (None, "new"),
        ("new", "prelabelled"),
        ("prelabelled", "with_junior"),
        ("with_junior", "submitted"),
        ("submitted", "in_review"),
        ("in_review", "changes_requested"),
        ("changes_requested", "with_junior"),
        ("with_junior", "submitted"),
        ("submitted", "in_review"),
        ("in_review", "consensus"),
        ("consensus", "final"),
    ]


@pytest.mark.parametrize(
    "rule, liver_votes, expected",
    [
        ({"kind": "unanimous"}, ["approve", "approve", "changes_requested"], "with_junior"),
        ({"kind": "unanimous"}, ["approve", "not_assessable", "approve"], "consensus"),
        ({"kind": "unanimous"}, ["not_assessable"] * 3, "consensus"),
        ({"kind": "k_of_n", "k": 2}, ["approve", "approve", "changes_requested"], "consensus"),
        ({"kind": "k_of_n", "k": 2}, ["approve", "changes_requested", "changes_requested"], "with_junior"),
        ({"kind": "k_of_n", "k": 3}, ["approve", "approve", "changes_requested"], "with_junior"),
        ({"kind": "k_of_n", "k": 2}, ["approve", "not_assessable", "changes_requested"], "with_junior"),
        ({"kind": "k_of_n", "k": 2}, ["approve", "not_assessable", "not_assessable"], "consensus"),
    ],
)
def test_conflicting_votes_under_each_rule(tmp_path, rule, liver_votes, expected):
    team = make_team(tmp_path, organ_rules={"liver": rule})
    submitted_case(team)
    for senior, vote in zip(("s1", "s2", "s3"), liver_votes):
        team.workflow.review(team.users[senior], "c1", [{"organ": "liver", "decision": vote}], default="approve")
    assert case_detail(team.workflow, "c1", team.users["admin"])["state"] == expected


def test_organ_rule_unit_cases():
    assert OrganRule("unanimous").decide(["changes_requested"], 3) == "changes"  # known early
    assert OrganRule("unanimous").decide(["approve"], 3) == "pending"
    assert OrganRule("k_of_n", 2).decide(["approve", "approve"], 3) == "pending"  # the round waits for everyone


def test_an_expired_lease_returns_the_case_to_the_pool(tmp_path):
    team = make_team(tmp_path, annotate_lease_minutes=0.002)  # 0.12 s
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior", {})
    assert [c["case_id"] for c in queue(wf, u["j1"])] == ["c1"] and queue(wf, u["j2"]) == []
    time.sleep(0.3)
    assert [c["case_id"] for c in queue(wf, u["j2"])] == ["c1"]  # back in the pool
    wf.claim(u["j2"], "c1")
    with pytest.raises(Forbidden):
        wf.submit(u["j1"], "c1")
    events = history(wf, "c1", u["admin"])
    assert any(e["action"] == "lease_expired" and "j1" in e["reason"] for e in events)
    with team.store.read() as s:
        leases = s.execute(select(Assignment.status).where(Assignment.case_id == "c1")).scalars().all()
    assert sorted(leases) == ["active", "expired"]  # never two live assignments


def _dump(team) -> list:
    path = team.store.url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        return list(db.iterdump())


def test_every_illegal_transition_is_refused():
    for current in STATES:
        for target in STATES:
            if target in TRANSITIONS[current]:
                check_transition("c", current, target)
            else:
                with pytest.raises(Conflict):
                    check_transition("c", current, target)


@pytest.mark.parametrize("state", ["new", "prelabelled", "with_junior", "in_review", "final", "escalated"])
def test_operations_in_the_wrong_state_get_409_and_change_nothing(tmp_path, state):
    team = make_team(tmp_path, routing="pool", max_rounds=1)
    wf, u = team.workflow, team.users
    wf.register_case("c1")
    if state != "new":
        wf.record_prelabel("c1", LABEL, "prior", {})
    if state in ("with_junior", "in_review", "final", "escalated"):
        wf.claim(u["j1"], "c1")
    if state in ("in_review", "final", "escalated"):
        wf.save_version(u["j1"], "c1", LABEL, submit=True)
    if state in ("final", "escalated"):
        decision = "approve" if state == "final" else "changes_requested"
        for senior in ("s1", "s2", "s3"):
            wf.review(u[senior], "c1", [], default=decision)
        wf.finalise("c1")
    assert case_detail(wf, "c1", u["admin"])["state"] == state
    operations = {
        "junior claims": lambda: wf.claim(u["j2"], "c1"),
        "junior submits": lambda: wf.submit(u["j1"], "c1"),
        "senior claims": lambda: wf.claim(u["s4"], "c1"),
        "senior reviews": lambda: wf.review(u["s1"], "c1", [], default="approve"),
        "admin resolves": lambda: wf.resolve(u["admin"], "c1", "accept"),
        "model pre-labels": lambda: wf.record_prelabel("c1", LABEL, "prior", {}),
    }
    allowed = {
        "new": {"model pre-labels"},
        "prelabelled": {"junior claims", "model pre-labels"},
        "with_junior": {"junior submits"},
        "in_review": {"senior claims", "senior reviews"},
        "final": set(),
        "escalated": {"admin resolves"},
    }[state]
    for name, operation in operations.items():
        if name in allowed:
            continue
        before = _dump(team)
        with pytest.raises((Conflict, Forbidden)) as err:
            operation()
        assert err.value.status in (403, 409), name
        assert _dump(team) == before, f"{name} in {state} changed the store"


def test_role_violations_get_403(team):
    wf, u = team.workflow, team.users
    submitted_case(team)
    refused = [
        lambda: wf.review(u["j1"], "c1", [], default="approve"),  # a junior cannot review
        lambda: wf.review(u["s4"], "c1", [], default="approve"),  # a senior not assigned to it
        lambda: wf.review(u["admin"], "c1", [], default="approve"),
        lambda: wf.submit(u["s1"], "c1"),  # a senior cannot submit
        lambda: wf.claim(u["admin"], "c1"),
        lambda: wf.save_version(u["j2"], "c1", LABEL),  # another junior's case
        lambda: wf.resolve(u["s1"], "c1", "accept"),  # only an admin resolves
        lambda: case_detail(wf, "c1", u["j2"]),  # not in j2's queue
    ]
    for call in refused:
        with pytest.raises(Forbidden):
            call()
    # a senior cannot review a label they wrote
    with team.store.write() as s:
        version = s.execute(select(LabelVersion).where(LabelVersion.kind == "junior")).scalars().first()
        version.author_user_id = u["s2"].id
    with pytest.raises(Forbidden, match="cannot review"):
        wf.review(u["s2"], "c1", [], default="approve")
    # and one decision per organ per round
    wf.review(u["s1"], "c1", [{"organ": 1, "decision": "approve"}])
    with pytest.raises(Conflict, match="already decided spleen"):
        wf.review(u["s1"], "c1", [{"organ": "spleen", "decision": "changes_requested"}])


def test_too_many_rounds_escalate_to_an_admin(tmp_path):
    team = make_team(tmp_path, max_rounds=2)
    wf, u = team.workflow, team.users
    submitted_case(team)
    liver = [{"organ": "liver", "decision": "changes_requested", "comment": "again"}]
    wf.review(u["s1"], "c1", liver, default="approve")
    wf.review(u["s2"], "c1", [], default="approve")
    wf.review(u["s3"], "c1", [], default="approve")
    wf.submit(u["j1"], "c1")  # resubmitted unchanged: s2 and s3 approved everything, and it all carries over
    assert case_detail(wf, "c1", u["admin"])["state"] == "in_review"
    wf.review(u["s1"], "c1", liver)  # round 2's one vote: the organ s1 asked to change
    assert case_detail(wf, "c1", u["admin"])["state"] == "escalated"
    assert [c["case_id"] for c in queue(wf, u["admin"])] == ["c1"]
    wf.resolve(u["admin"], "c1", "accept")
    wf.finalise("c1")
    assert case_detail(wf, "c1", u["admin"])["state"] == "final"


def test_reviewer_edits_are_fused_with_staple_and_agreement_is_recorded(team):
    wf, u = team.workflow, team.users
    submitted_case(team, edit=LABEL)
    wf.save_version(u["s1"], "c1", team.edited("s1-edit", 6))  # s1 erases the liver
    wf.save_version(u["s2"], "c1", team.edited("s2-edit", 1))  # s2 erases the spleen
    for senior in ("s1", "s2", "s3"):
        wf.review(u[senior], "c1", [], default="approve")
    wf.finalise("c1")
    decision = case_detail(wf, "c1", u["admin"])["decisions"][-1]
    figures = decision["agreement"]
    assert figures["fusion"] == "multi-label STAPLE"
    assert set(figures["against_consensus"]) == {"junior:j1", "senior:s1", "senior:s2"}
    # two of three readers keep each organ, so the fused label keeps both: the junior agrees fully
    assert figures["against_consensus"]["junior:j1"]["dice"] == 1.0
    assert figures["against_junior"]["senior:s1"]["dice_per_organ"]["liver"] == 0.0
    assert figures["against_junior"]["senior:s2"]["dice_per_organ"]["spleen"] == 0.0


def test_a_round_waits_for_every_review_slot_to_be_filled(tmp_path):
    """Readers who claim a case one by one: the first reader's approval does not decide the round alone."""
    team = make_team(tmp_path, reviewers_per_case=3, routing="pool")
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior", {})
    wf.claim(u["j1"], "c1")
    with team.store.write() as s:  # submitted while one senior was active: routed to s1 alone
        s.query(User).filter(User.role == "senior", User.name != "s1").update({"active": False})
    wf.submit(u["j1"], "c1")
    with team.store.write() as s:
        s.query(User).filter(User.role == "senior").update({"active": True})
    assert wf.claim(u["s1"], "c1")["state"] == "in_review"
    assert wf.review(u["s1"], "c1", [], "approve")["state"] == "in_review"  # two slots still open
    wf.claim(u["s2"], "c1")
    assert wf.review(u["s2"], "c1", [], "approve")["state"] == "in_review"
    wf.claim(u["s3"], "c1")
    assert wf.review(u["s3"], "c1", [], "approve")["state"] == "consensus"
    # a reader who has voted is neither offered the case again nor given a second slot while slots stay open
    wf.record_prelabel("c2", LABEL, "prior", {})
    wf.claim(u["j1"], "c2")
    with team.store.write() as s:
        s.query(User).filter(User.role == "senior", User.name != "s1").update({"active": False})
    wf.submit(u["j1"], "c2")
    with team.store.write() as s:
        s.query(User).filter(User.role == "senior").update({"active": True})
    wf.review(u["s1"], "c2", [], "approve")
    assert "c2" not in [c["case_id"] for c in queue(wf, u["s1"])]
    with pytest.raises(Conflict):
        wf.claim(u["s1"], "c2")
    assert "c2" in [c["case_id"] for c in queue(wf, u["s2"])]


def test_a_case_that_cannot_be_finalised_does_not_hold_up_the_others(team):
    """The leader's sweep (``recover``) finalises every case in consensus, oldest first, but those queued for the
    process's own finaliser; one whose label file is damaged fails, is logged and stays in consensus, and the sweep
    goes on to the next."""
    wf, u = team.workflow, team.users
    for case_id in ("c1", "c2"):
        submitted_case(team, case_id, edit=team.edited(f"{case_id}-j1", PANCREAS))
        for senior in ("s1", "s2", "s3"):
            wf.review(u[senior], case_id, [], default="approve")
        assert case_detail(wf, case_id, u["admin"])["state"] == "consensus"
    damaged = next(v for v in case_detail(wf, "c1", u["admin"])["versions"] if v["kind"] == "junior")
    path = next((team.tmp / "versions" / "c1").glob(f"{damaged['sha256']}.nii.gz"))
    path.chmod(0o644)
    path.write_bytes(b"not a label any more")  # the junior's version of c1, damaged on disk
    queued = {"c2"}.__contains__  # c2 is queued for this process's finaliser: the sweep leaves it
    assert wf.recover(queued=queued) == 0
    assert case_detail(wf, "c2", u["admin"])["state"] == "consensus"
    assert wf.recover() == 1
    assert case_detail(wf, "c1", u["admin"])["state"] == "consensus"  # left for the next sweep
    assert case_detail(wf, "c2", u["admin"])["state"] == "final"
    assert wf.recover(settled_s=3600) == 0  # nothing has been in consensus that long


def test_round_two_reviews_only_what_changed_and_a_carried_approval_can_be_reopened(team):
    """After changes on the spleen: each senior's approvals of the untouched organs carry into round 2; the spleen
    (changed) needs every senior's vote again; a senior may reopen a carried approval; the history says so."""
    wf, u = team.workflow, team.users
    submitted_case(team, "c1", edit=LABEL)
    wf.review(u["s1"], "c1", [{"organ": "spleen", "decision": "changes_requested", "comment": "too small"}], "approve")
    for senior in ("s2", "s3"):
        wf.review(u[senior], "c1", [], default="approve")
    wf.save_version(u["j1"], "c1", team.edited("spleen-fixed", 1), submit=True)  # only the spleen changes

    detail = case_detail(wf, "c1", u["admin"])
    assert detail["state"] == "in_review" and detail["round"] == 2
    assert sorted(a["user"] for a in detail["assignees"] if a["duty"] == "review") == ["s1", "s2", "s3"]
    untouched = [o.name for o in ORGANS if o.id != 1]
    assert {organ: sorted(names) for organ, names in detail["carried"].items()} == {
        organ: ["s1", "s2", "s3"] for organ in untouched
    }
    assert "spleen" not in detail["carried"]  # changed: a new vote from each senior
    with team.store.read() as s:
        before = s.execute(select(func.count()).select_from(Review).where(Review.round == 2)).scalar_one()
    wf.review(u["s1"], "c1", [], default="approve")  # s1's work in round 2: the spleen alone
    wf.review(u["s2"], "c1", [{"organ": "liver", "decision": "changes_requested"}], default="approve")  # reopened
    wf.review(u["s3"], "c1", [], default="approve")
    with team.store.read() as s:
        votes = s.execute(select(Review).where(Review.round == 2, Review.carried_from.is_(None))).scalars().all()
        after = s.execute(select(func.count()).select_from(Review).where(Review.round == 2)).scalar_one()
    assert sorted((r.organ, r.decision) for r in votes) == [
        (1, "approve"),
        (1, "approve"),
        (1, "approve"),
        (6, "changes_requested"),
    ]  # 4 organ votes in round 2 instead of 45
    assert before == 3 * (len(ORGANS) - 1)  # 14 organs carried for each of the three
    assert after == 3 * len(ORGANS)  # the reopened approval was replaced, not added to
    back = case_detail(wf, "c1", u["admin"])
    assert back["state"] == "with_junior" and back["round"] == 3  # s2's reopened liver sends it back
    carry = [e for e in history(wf, "c1", u["admin"]) if e["action"] == "carry"]
    assert len(carry) == 1 and "changed: spleen" in carry[0]["reason"]
