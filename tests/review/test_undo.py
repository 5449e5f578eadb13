"""Undo and redo of a user's label changes in a round: each a new version of theirs, nothing deleted; a junior's is
the datastore's ``working`` label, a reviewer's is not. On a real SQLite store, a real folder datastore and the real
CT's label; the review API's routes through Flask's own client."""

from __future__ import annotations

import re

import pytest

from amoslabel.errors import Conflict, InputError, NotFound
from amoslabel.files import file_sha256
from review.api import create_review_api
from review.schema import LabelVersion
from review.undo import line_of
from tests.review.conftest import LABEL
from tests.review.test_service import CASE, _edited, attached  # noqa: F401 (the fixture)


def _versions(service):
    with service.store.read() as s:
        rows = s.query(LabelVersion).filter_by(case_id=CASE).order_by(LabelVersion.id).all()
        return [(v.id, v.kind, v.sha256, dict(v.info or {})) for v in rows]


def _csrf(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def _sha_of(service, version_id):
    with service.store.read() as s:
        return s.get(LabelVersion, version_id).sha256


def test_the_line_is_read_back_from_the_versions():
    assert line_of(None, []) == ([], -1)
    assert line_of(1, [(2, {}), (3, {})]) == ([1, 2, 3], 2)
    undone = {"undo_step": {"action": "undo", "restores": 2}}
    assert line_of(1, [(2, {}), (3, {}), (4, undone)]) == ([1, 2, 3], 1)
    assert line_of(1, [(2, {}), (3, {}), (4, undone), (5, undone)]) == ([1, 2, 3], 1)  # two undos that raced
    assert line_of(1, [(2, {}), (3, {}), (4, undone), (6, {})]) == ([1, 2, 6], 2)  # a save drops the step ahead
    redone = {"undo_step": {"action": "redo", "restores": 3}}
    assert line_of(1, [(2, {}), (3, {}), (4, undone), (5, redone)]) == ([1, 2, 3], 2)


def test_a_junior_undoes_and_redoes_and_every_step_is_a_version(attached, tmp_path):  # noqa: F811
    studies, service, store, people = attached
    prelabel = service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    with pytest.raises(Conflict, match="no change of yours to undo"):
        service.step(people["j1"], CASE, "undo")
    store.save_label(CASE, str(_edited(tmp_path, 6)), "draft", {"client_id": "j1"})
    store.save_label(CASE, str(_edited(tmp_path, 1)), "draft", {"client_id": "j1"})
    first, second = [v[0] for v in _versions(service)[-2:]]
    working = studies / "labels" / "working" / f"{CASE}.nii.gz"

    back = service.step(people["j1"], CASE, "undo")
    assert back["restored"] == first and back["version"] > second and back["state"] == "with_junior"
    assert file_sha256(working) == _sha_of(service, first)  # what a viewer loads for the case now
    assert service.current_label_file(CASE, "j1") == str(working.resolve())  # where the next click starts
    assert service.step(people["j1"], CASE, "undo")["restored"] == prelabel
    assert file_sha256(working) == _sha_of(service, prelabel)
    with pytest.raises(Conflict, match="no change of yours to undo"):
        service.step(people["j1"], CASE, "undo")
    assert service.step(people["j1"], CASE, "redo")["restored"] == first
    assert service.step(people["j1"], CASE, "redo")["restored"] == second
    with pytest.raises(Conflict, match="no undone change of yours to redo"):
        service.step(people["j1"], CASE, "redo")
    assert file_sha256(working) == _sha_of(service, second)

    service.step(people["j1"], CASE, "undo")
    store.save_label(CASE, str(_edited(tmp_path, 2)), "draft", {"client_id": "j1"})  # a new change after an undo
    with pytest.raises(Conflict, match="to redo"):
        service.step(people["j1"], CASE, "redo")  # the undone step is gone from the line, not from the history
    assert service.step(people["j1"], CASE, "undo")["restored"] == first

    # the case page's buttons: the same steps, by the session's user
    pages = create_review_api(service).test_client()
    login = {"token": service.accounts.issue_token("j1"), "csrf_token": _csrf(pages.get("/login"))}
    assert pages.post("/login", data=login).status_code in (302, 303)
    page = pages.get(f"/cases/{CASE}")
    assert 'id="undo"' in page.get_data(as_text=True) and 'id="redo"' in page.get_data(as_text=True)
    csrf = _csrf(page)
    assert pages.post(f"/cases/{CASE}/undo", data={"csrf_token": csrf}).status_code == 303
    assert file_sha256(working) == _sha_of(service, prelabel)
    assert pages.post(f"/cases/{CASE}/redo", data={}).status_code == 400  # without the form's token: nothing
    assert file_sha256(working) == _sha_of(service, prelabel)

    history = _versions(service)
    assert {prelabel, first, second} <= {v[0] for v in history}  # nothing was deleted
    steps = [v[3]["undo_step"] for v in history if "undo_step" in v[3]]
    assert [s["action"] for s in steps] == ["undo", "undo", "redo", "redo", "undo", "undo", "undo"]
    assert all(v[1] == "junior" for v in history if v[0] != prelabel)


def test_only_the_cases_saver_may_step_and_a_reviewers_step_is_not_the_working_label(attached, tmp_path):  # noqa: F811
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    other = service.accounts.add_user("j2", "junior")
    with pytest.raises(InputError) as refused:
        service.step(other, CASE, "undo")
    assert refused.value.status == 403
    with pytest.raises(NotFound):
        service.step(people["j1"], "no_such_case", "undo")

    store.save_label(CASE, str(_edited(tmp_path, 6)), "final", {"client_id": "j1"})  # Slicer's Submit: in review
    working = studies / "labels" / "working" / f"{CASE}.nii.gz"
    linked = working.resolve()
    with pytest.raises(InputError) as junior_in_review:
        service.step(people["j1"], CASE, "undo")
    assert junior_in_review.value.status in (403, 409)
    service.workflow.claim(people["s1"], CASE)
    store.save_label(CASE, str(_edited(tmp_path, 1)), "draft", {"client_id": "s1"})  # a reviewer's edit
    under_review = _versions(service)[-2][0]
    back = service.step(people["s1"], CASE, "undo")
    assert back["restored"] == under_review
    assert _versions(service)[-1][1] == "senior_edit" and _versions(service)[-1][2] == _sha_of(service, under_review)
    assert working.resolve() == linked  # the other reviewers never load another reader's edit

    # the review API: the same, by the token's user
    api = create_review_api(service).test_client()
    token = service.accounts.issue_token("s1")
    redone = api.post(f"/api/cases/{CASE}/redo", headers={"Authorization": f"Bearer {token}"})
    assert redone.status_code == 200 and redone.json["restored"] > under_review and redone.json["case"] == "in_review"
    again = api.post(f"/api/cases/{CASE}/redo", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 409 and "to redo" in again.json["detail"] and again.json["state"] == "in_review"
    assert api.post(f"/api/cases/{CASE}/undo").status_code == 401

    # the reviewer undoes back to the label under review: at consensus they edited nothing, and the final is that file
    assert service.step(people["s1"], CASE, "undo")["restored"] == under_review
    service.workflow.review(people["s1"], CASE, [], default="approve")
    final = service.workflow.finalise(CASE)
    assert final is not None and _sha_of(service, final) == _sha_of(service, under_review)
    with service.store.read() as s:
        assert s.get(LabelVersion, final).info["readers"] == ["junior:j1"]  # no reviewer's edit fused
