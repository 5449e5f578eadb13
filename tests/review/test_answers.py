"""Answers that say what happened, in a reader's words: a save's answer, the seniors' feedback and the "sent back"
queue line, an empty queue's reason, refusals that name where the case is (its state kept in a field), and who may
save answered before what was sent. On a real SQLite store and a real folder datastore; the server-level forms are
in tests/amoslabel/server/test_first_start.py (the README's first case) and tests/review/test_server_workflow.py."""

from __future__ import annotations

import io

import pytest

from amoslabel.errors import Conflict, InputError
from review.api import create_review_api
from review.auth import Forbidden
from review.empty_queue import why_nothing_waits
from review.feedback import round_feedback
from review.queries import queue
from review.save_answers import newest_version_by, save_answer
from review.schema import Case
from tests.review.conftest import LABEL
from tests.review.test_service import CASE, _edited, attached  # noqa: F401 (the fixture)
from tests.review.test_workflow import PANCREAS, submitted_case

POINT = {"point_world": [-12.5, 40.0, 101.0], "point_voxel": [60, 48, 12]}


def _answer(team, who: str, case_id: str) -> dict:
    with team.store.read() as s:
        case = s.get(Case, case_id)
        return save_answer(s, case, team.users[who], newest_version_by(s, case_id, team.users[who]))


def _sent_back(team, case_id: str = "c1") -> None:
    wf, u = team.workflow, team.users
    submitted_case(team, case_id)
    vote = {"organ": "pancreas", "decision": "changes_requested", "comment": "tail missing", **POINT}
    wf.review(u["s1"], case_id, [vote], default="approve")
    wf.review(u["s2"], case_id, [{"organ": "liver", "decision": "changes_requested"}], default="approve")
    wf.review(u["s3"], case_id, [], default="approve")


def test_a_save_answers_its_version_whether_it_was_submitted_and_who_has_the_case(team):
    wf, u = team.workflow, team.users
    wf.record_prelabel("c1", LABEL, "prior", {})
    wf.save_version(u["j1"], "c1", team.edited("draft", PANCREAS))
    draft = _answer(team, "j1", "c1")
    assert draft["submitted"] is False and draft["state"] == "with_junior" and draft["with"] == ["j1"]
    assert "draft" in draft["message"] and "Submit" in draft["message"]
    wf.save_version(u["j1"], "c1", LABEL, submit=True)
    sent = _answer(team, "j1", "c1")
    assert sent["submitted"] is True and sent["state"] == "in_review" and sent["round"] == 1
    assert sent["with"] == ["s1", "s2", "s3"] and sent["version"] > draft["version"]
    assert "with the reviewers" in sent["message"]
    wf.save_version(u["s1"], "c1", team.edited("s1-edit", 6))
    edit = _answer(team, "s1", "c1")
    assert edit["submitted"] is False and "vote on every organ" in edit["message"]


def test_a_case_sent_back_carries_its_feedback_and_says_so_in_the_queue(team):
    _sent_back(team)
    with team.store.read() as s:
        feedback = round_feedback(s, s.get(Case, "c1"))
    assert feedback["round"] == 1
    liver, pancreas = feedback["organs"]
    assert (liver["organ_name"], liver["decisions"], liver["comments"]) == ("liver", {"s2": "changes_requested"}, [])
    assert pancreas["decisions"] == {"s1": "changes_requested"}
    assert pancreas["comments"] == [
        {"by": "s1", "text": "tail missing", "point_mm": POINT["point_world"], "point_voxel": POINT["point_voxel"]}
    ]
    (row,) = queue(team.workflow, team.users["j1"])
    assert row["why"] == "sent back: liver (s2), pancreas (s1)"
    assert [o["organ"] for o in row["sent_back"]] == ["liver", "pancreas"]
    # a first round has nothing before it; a case in review shows none (its round's votes are blind)
    team.workflow.record_prelabel("c2", LABEL, "prior", {})
    team.workflow.save_version(team.users["j1"], "c1", LABEL, submit=True)
    with team.store.read() as s:
        assert s.get(Case, "c2").state == "with_junior" and round_feedback(s, s.get(Case, "c2")) is None
        assert s.get(Case, "c1").state == "in_review" and round_feedback(s, s.get(Case, "c1")) is None


def test_an_empty_queue_says_why_and_what_to_do(team):
    wf, u = team.workflow, team.users
    wf.register_case("scan-without-label")
    submitted_case(team, "c1")
    with team.store.read() as s:
        junior = why_nothing_waits(s, u["j2"])
        senior = why_nothing_waits(s, u["s4"])  # c1 already has its three reviewers
        admin = why_nothing_waits(s, u["admin"])
    assert junior["reason"] == "no_prelabel" and "1 scan has no pre-label yet" in junior["detail"]
    assert "`uncertainty`" in junior["detail"] and junior["cases"] == {"new": 1, "in_review": 1}
    assert senior["reason"] == "no_review" and "1 case is with the reviewers" in senior["detail"]
    assert admin["reason"] == "none_escalated" and "0 cases are escalated" in admin["detail"]


def test_refusals_say_where_the_case_is_and_keep_its_state_in_a_field(team):
    wf, u = team.workflow, team.users
    submitted_case(team, "c1")
    with pytest.raises(Conflict) as in_review:
        wf.save_version(u["j1"], "c1", LABEL)  # the junior, after submitting
    assert in_review.value.answer() == {
        "detail": "This case is with the reviewers now. You can edit it again if the reviewers send it back.",
        "state": "in_review",
        "duty": "annotate",
    }
    with pytest.raises(Forbidden) as not_yours:
        wf.save_version(u["j2"], "c1", LABEL)
    assert "is not assigned to you (j2)" in not_yours.value.message and not_yours.value.fields["state"] == "in_review"
    with pytest.raises(Conflict) as claimed:
        wf.claim(u["j2"], "c1")
    assert claimed.value.message.startswith("This case is with the reviewers now.")
    for message in (in_review.value.message, not_yours.value.message, claimed.value.message):
        assert "in_review" not in message and "with_junior" not in message and "assignment" not in message


def test_who_may_save_is_answered_before_what_was_sent(attached, tmp_path):  # noqa: F811
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    other = service.accounts.add_user("j2", "junior")
    unreadable = tmp_path / "broken.nii.gz"
    unreadable.write_bytes(b"not a NIfTI file at all")
    with pytest.raises(InputError) as viewer:  # a viewer's save (Slicer) of a broken file on someone else's case
        store.save_label(CASE, str(unreadable), "final", {"client_id": "j2"})
    assert viewer.value.status == 403
    with pytest.raises(InputError) as own:  # the case's own junior gets the file's fault, in plain words
        store.save_label(CASE, str(unreadable), "final", {"client_id": "j1"})
    assert own.value.status == 400 and "is named .gz but is not gzip-compressed" in own.value.message

    # the review API: the same order, and a save's answer
    api = create_review_api(service).test_client()

    def upload(token: str, content: bytes):
        form = {"label": (io.BytesIO(content), "label.nii.gz")}
        return api.post(f"/api/cases/{CASE}/label", data=form, headers={"Authorization": f"Bearer {token}"})

    other_token = service.accounts.issue_token(other.name)
    refused = upload(other_token, unreadable.read_bytes())
    assert refused.status_code == 403 and refused.json["state"] == "with_junior", refused.json
    saved = upload(service.accounts.issue_token("j1"), _edited(tmp_path, 6).read_bytes())
    assert saved.status_code == 200, saved.json
    assert saved.json["submitted"] is False and saved.json["state"] == "with_junior" and saved.json["with"] == ["j1"]
    assert saved.json["case"] == "with_junior" and isinstance(saved.json["version"], int)
