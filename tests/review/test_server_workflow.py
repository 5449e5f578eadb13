"""A full AMOS-style review on the real CT, through the real server: one junior in 3D Slicer's client class (logged
in with its API token as the secret, as a team with only tokens logs in Slicer), three seniors on the JSON API, users
and history through the commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException

from tests.app.test_server import status_of, train
from tests.conftest import amoslabel_command, login
from tests.review.conftest import add_users

CASE = "review_ct"
PANCREAS = 10


def cli(*args: str) -> str:
    done = amoslabel_command(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def people(sample_studies):
    return add_users(
        sample_studies,
        [("jun", "junior"), ("sen1", "senior"), ("sen2", "senior"), ("sen3", "senior"), ("boss", "admin")],
    )


def api(server, token, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    return requests.request(method, f"{server.url}/review/api{path}", headers=headers, timeout=60, **kwargs)


def wait_state(server, token, case_id, state, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = api(server, token, "GET", f"/cases/{case_id}").json()["state"]
        if current == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{case_id} did not reach {state}; it is {current}")


def erase(label_file: str, organ: int, out: Path) -> Path:
    image = sitk.ReadImage(label_file)
    array = sitk.GetArrayFromImage(image)
    array[array == organ] = 0
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(out))
    return out


def test_amos_review_run_on_the_real_ct(server, sample_studies, shared, people, tmp_path):
    admin = login(server.url, tmp_path, "boss", people["boss"])
    admin.upload_image(str(shared / "ct" / "ts_abdomen_ct.nii.gz"), image_id=CASE)

    # 1. pre-label: the first inference of a new case starts its workflow and routes it to the junior
    prelabel_file, params = admin.infer("unet", CASE, {})
    junior = login(server.url, tmp_path, "jun", people["jun"])
    sample = junior.next_sample("review_queue", {})
    assert sample["id"] == CASE
    case = api(server, people["jun"], "GET", f"/cases/{CASE}").json()
    assert case["state"] == "with_junior" and case["versions"][0]["kind"] == "prelabel"
    author = case["versions"][0]["author"]  # the pre-label names the version (or the atlas) that made it
    assert author == params["model_tag"] if "model_tag" in params else author.startswith("prior:")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_label.nii.gz")))

    # 2. the junior corrects the label in Slicer (here: the real label without its pancreas) and submits it
    first = erase(str(shared / "ct" / "ts_abdomen_ct_label.nii.gz"), PANCREAS, tmp_path / "first.nii.gz")
    submitted = junior.save_label(CASE, str(first), tag="final")  # the answer says what happened
    assert (submitted["submitted"], submitted["state"], submitted["round"]) == (True, "in_review", 1), submitted
    assert sorted(submitted["with"]) == ["sen1", "sen2", "sen3"]
    assert api(server, people["jun"], "GET", f"/cases/{CASE}").json()["state"] == "in_review"
    assert not (sample_studies / "labels" / "final" / f"{CASE}.nii.gz").exists()  # not final: not reviewed

    # 3. one senior asks for changes on the pancreas, at a point; the other two approve
    z, y, x = np.argwhere(reference == PANCREAS).mean(0).round().astype(int)
    point_world = list(
        sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct.nii.gz")).TransformIndexToPhysicalPoint(
            [int(x), int(y), int(z)]
        )
    )
    vote = {
        "organ": "pancreas",
        "decision": "changes_requested",
        "comment": "pancreas missing entirely",
        "point_world": point_world,
        "point_voxel": [int(x), int(y), int(z)],
    }
    for name, votes in (("sen1", [vote]), ("sen2", []), ("sen3", [])):
        queue = api(server, people[name], "GET", "/queue").json()["cases"]
        assert CASE in [c["case_id"] for c in queue]
        reply = api(server, people[name], "POST", f"/cases/{CASE}/reviews", json={"votes": votes, "default": "approve"})
        assert reply.status_code == 200, reply.text

    # 4. the junior sees the comment, with its point, and fixes the pancreas
    case = api(server, people["jun"], "GET", f"/cases/{CASE}").json()
    assert case["state"] == "with_junior" and case["round"] == 2
    (comment,) = case["feedback"]["pancreas"]
    assert comment["text"] == "pancreas missing entirely" and comment["reviewer"] == "sen1"
    assert comment["point_voxel"] == vote["point_voxel"] and comment["point_world"] == pytest.approx(point_world)
    # MONAI Label's Slicer Reviewer module reads this from the label info
    meta = admin.datastore()["objects"][CASE]["labels"]["working"]["info"]["segmentationMeta"]
    assert meta["status"] == "flagged" and "pancreas missing entirely" in meta["comment"]
    sample = junior.next_sample("review_queue", {})
    assert sample["id"] == CASE and sample["feedback"]["round"] == 1
    (pancreas,) = sample["feedback"]["organs"]  # the seniors' feedback comes with Next Sample
    assert pancreas["decisions"] == {"sen1": "changes_requested"}
    assert pancreas["comments"][0]["text"] == "pancreas missing entirely"
    assert pancreas["comments"][0]["point_voxel"] == vote["point_voxel"]
    junior.save_label(CASE, str(shared / "ct" / "ts_abdomen_ct_label.nii.gz"), tag="final")

    # 5. round 2 reviews what changed: every untouched organ's approvals carried over, the pancreas voted again
    carried = api(server, people["boss"], "GET", f"/cases/{CASE}").json()["carried"]
    assert len(carried) == 14 and "pancreas" not in carried
    assert all(sorted(names) == ["sen1", "sen2", "sen3"] for names in carried.values()), carried
    for name in ("sen1", "sen2", "sen3"):
        reply = api(server, people[name], "POST", f"/cases/{CASE}/reviews", json={"default": "approve"})
        assert reply.status_code == 200, reply.text
    wait_state(server, people["boss"], CASE, "final")

    # 6. final: published to the datastore with provenance, in the training data, every step in the history
    listing = admin.datastore()["objects"][CASE]["labels"]
    assert listing["final"]["info"]["workflow"] == "amos-label consensus"
    assert listing["final"]["info"]["segmentationMeta"]["status"] == "approved"
    final = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_studies / "labels" / "final" / f"{CASE}.nii.gz")))
    assert np.array_equal(final, reference)  # its training: the next test (one training checks both cases)
    printed = cli("case-history", CASE, "--studies", str(sample_studies))
    for step in ("register", "pre-label", "route", "submit", "review", "changes", "return", "consensus", "finalise"):
        assert f" {step} " in printed, step


def test_a_final_save_without_consensus_does_not_train(server, sample_studies, shared, people, tmp_path):
    """A junior's 'final' save is a working label until consensus: the next training leaves it out, and takes the
    consensus final of the review run above."""
    admin = login(server.url, tmp_path, "boss", people["boss"])
    admin.upload_image(str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"), image_id="unreviewed_ct")
    admin.infer("unet", "unreviewed_ct", {})
    junior = login(server.url, tmp_path, "jun", people["jun"])
    junior.save_label("unreviewed_ct", str(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz"), tag="final")
    assert not (sample_studies / "labels" / "final" / "unreviewed_ct.nii.gz").exists()
    assert (sample_studies / "labels" / "working" / "unreviewed_ct.nii.gz").exists()
    status = train(admin, "unet", {"max_epochs": 1, "iterations_per_epoch": 1, "val_interval": 1})
    assert status["status"] == "DONE", server.tail()
    meta_dir = max((sample_studies / ".amoslabel" / "models" / "unet").glob("v*"))
    meta = json.loads((meta_dir / "meta.json").read_text())
    assert "unreviewed_ct" not in meta["training_cases"] + meta["validation_cases"]
    assert CASE in meta["training_cases"] + meta["validation_cases"]
    # an admin saving 'final' from a viewer is refused too: final labels come from consensus
    boss_viewer = login(server.url, tmp_path, "boss", people["boss"])
    with pytest.raises(MONAILabelClientException) as err:
        boss_viewer.save_label("unreviewed_ct", str(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz"), tag="final")
    assert status_of(err.value) == 403


def test_an_empty_next_sample_says_why_and_refusals_keep_the_state_in_a_field(server, people, tmp_path):
    admin = login(server.url, tmp_path, "boss", people["boss"])
    empty = admin.next_sample("review_queue", {})  # nothing is escalated: nothing for an admin
    assert "id" not in empty and empty["reason"] == "none_escalated", empty
    assert "No case waits for an admin" in empty["detail"] and empty["cases"]
    # the case is final (the first test): a senior's claim is refused in plain words, the state in a field
    refused = api(server, people["sen1"], "POST", f"/cases/{CASE}/claim")
    assert refused.status_code == 409 and refused.json() == {
        "detail": "This case is final: its label is decided. Reviewers vote while a case is with the reviewers.",
        "state": "final",
    }
    # through MONAI Label's own endpoint too: who may save before what was sent (a broken file on a final case)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"broken")
    saved = requests.put(
        f"{server.url}/datastore/label",
        params={"image": CASE, "tag": "final"},
        files={"label": ("broken.nii.gz", broken.read_bytes())},
        headers={"Authorization": f"Bearer {people['jun']}"},
        timeout=60,
    )
    assert saved.status_code == 409 and saved.json()["state"] == "final", saved.text


def test_tokens_and_roles_on_the_api(server, people):
    assert api(server, None, "GET", "/queue").status_code == 401
    assert api(server, "amos_XXXXXXXXXXXX_" + "y" * 43, "GET", "/queue").status_code == 401
    assert api(server, "not-a-token", "GET", "/me").status_code == 401
    me = api(server, people["jun"], "GET", "/me").json()
    assert me == {"name": "jun", "role": "junior", "id": me["id"], "pseudonym": f"junior #{me['id']}"}
    assert api(server, people["jun"], "POST", f"/cases/{CASE}/reviews", json={"default": "approve"}).status_code == 403
    assert api(server, people["sen1"], "POST", "/users", json={"name": "eve", "role": "admin"}).status_code == 403
    assert api(server, people["sen1"], "GET", "/users").status_code == 403
    made = api(server, people["boss"], "POST", "/users", json={"name": "jun2", "role": "junior"})
    assert made.status_code == 201 and api(server, made.json()["token"], "GET", "/me").json()["name"] == "jun2"
    revoked = api(server, people["boss"], "DELETE", "/users/jun2/tokens")
    assert revoked.json() == {"revoked": 1}
    assert api(server, made.json()["token"], "GET", "/me").status_code == 401
    assert api(server, people["boss"], "GET", "/cases/..%2Fetc").status_code in (400, 404)
    assert api(
        server,
        people["boss"],
        "POST",
        "/cases/x/reviews",
        data="x" * (2 << 20),
        headers={"Content-Type": "application/json"},
    ).status_code in (401, 413)
    spec = requests.get(f"{server.url}/review/api/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.") and "/api/cases/{case_id}/reviews" in spec["paths"]
    assert server.alive()
