"""The review service attached to a real folder datastore (no server): a viewer's save is written once, into the
version store, and the datastore's ``working`` and ``final`` labels are links to version files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.config import load_config
from amoslabel.data.backup import restore, snapshot
from amoslabel.data.datastore import AmosDatastore
from amoslabel.data.importer import import_source
from amoslabel.errors import InputError
from amoslabel.data.locations import results_folder
from amoslabel.files import file_sha256
from amoslabel.volume import read_label
from models.click_request import WHOLE_LABEL_KEY
from review.auth import Principal
from review.queries import case_detail, queue
from review.service import ReviewService
from tests.review.conftest import LABEL

CASE = "ts_abdomen_ct_small"
ADMIN = Principal(0, "system", "admin")


@pytest.fixture()
def attached(shared, tmp_path):
    """Studies with the real CT (no label), a review service on them and the datastore attached, as the app does."""
    studies, source = tmp_path / "studies", tmp_path / "scan-only"
    source.mkdir()
    (source / f"{CASE}.nii.gz").symlink_to(shared / "ct" / f"{CASE}.nii.gz")  # the scan without its label
    import_source(source, studies, link_images=True, progress=False)
    service = ReviewService(load_config(overrides={"reviewers_per_case": "1"}), str(studies))
    store = AmosDatastore(str(studies), max_voxels=10**9, max_upload_bytes=50 * 2**20)
    service.attach(store)
    service.sync_cases()
    people = {}
    for name, role in (("j1", "junior"), ("s1", "senior")):
        people[name] = service.accounts.add_user(name, role)
    return studies, service, store, people


def _edited(tmp_path: Path, organ: int) -> Path:
    label = sitk.ReadImage(str(LABEL))
    array = sitk.GetArrayFromImage(label)
    array[array == organ] = 0
    out = sitk.GetImageFromArray(array.astype(np.int16))  # a viewer may send another integer type
    out.CopyInformation(label)
    path = tmp_path / f"edit-{organ}.nii.gz"
    sitk.WriteImage(out, str(path))
    return path


def _files_under(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_a_viewer_save_is_written_once_and_working_links_to_its_version(attached, tmp_path):
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    regular_before = _files_under(studies)

    store.save_label(CASE, str(_edited(tmp_path, 6)), "draft", {"client_id": "j1"})

    new_files = _files_under(studies) - regular_before
    versions = service.workspace.label_versions / CASE
    assert [f.parent for f in new_files] == [versions], new_files  # one new file: the version
    version = next(iter(new_files))
    assert version.name == f"{file_sha256(version)}.nii.gz"
    assert not list(service.workspace.scratch.iterdir())  # no scratch copy left behind
    working = studies / "labels" / "working" / f"{CASE}.nii.gz"
    assert working.is_symlink() and not os.path.isabs(os.readlink(working))
    assert working.resolve() == version.resolve()
    assert store.get_label_info(CASE, "working")["sha256"] == file_sha256(version)
    stored = sitk.ReadImage(str(working))
    assert stored.GetPixelID() == sitk.sitkUInt8  # checked and stored as uint8 on the scan's grid
    assert not (sitk.GetArrayViewFromImage(stored) == 6).any()
    detail_version = service.workflow.store.versions.put(CASE, version)  # already in the store: no copy
    assert detail_version.path == version and _files_under(studies) - regular_before == {version}


def test_submit_review_and_final_link_to_the_consensus_version(attached, tmp_path):
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    store.save_label(CASE, str(_edited(tmp_path, 1)), "final", {"client_id": "j1"})  # Slicer's Submit Label
    senior: Principal = people["s1"]
    service.after_review(service.workflow.review(senior, CASE, [], default="approve"))
    service.wait_idle()
    final = studies / "labels" / "final" / f"{CASE}.nii.gz"
    assert final.is_symlink()
    final_version = service.workflow.final_labels()[0]["label"]
    assert final.resolve() == Path(final_version).resolve()
    assert store.get_label_info(CASE, "final")["sha256"] == file_sha256(final_version)

    # a snapshot keeps the datastore's links as links (their targets are in it); a restore brings them back
    manifest = snapshot(studies, tmp_path / "snap", progress=False)
    links = {e["path"]: e["link"] for e in manifest["files"] if "link" in e}
    assert {f"labels/final/{CASE}.nii.gz", f"labels/working/{CASE}.nii.gz"} <= set(links)
    restored = tmp_path / "restored"
    restore(tmp_path / "snap", restored, progress=False)
    copy = restored / "labels" / "final" / f"{CASE}.nii.gz"
    assert copy.is_symlink() and copy.resolve().is_relative_to(restored.resolve())
    assert file_sha256(copy) == file_sha256(final)
    link = tmp_path / "snap" / "labels" / "final" / f"{CASE}.nii.gz"
    link.unlink()
    link.symlink_to("../../nowhere.nii.gz")
    with pytest.raises(InputError, match="broken"):  # a link that leads elsewhere: nothing is restored
        restore(tmp_path / "snap", tmp_path / "again", progress=False)
    assert not (tmp_path / "again").exists()


def test_the_leaders_sweep_leaves_a_case_queued_for_the_finaliser_to_it(attached, tmp_path, monkeypatch):
    """Under a busy review the finaliser's queue runs behind; the sweep (cases in consensus a while) then leaves the
    queued ones to it rather than fusing them a second time, unless they have waited there too long (a finaliser
    stuck on one case must not keep the others in consensus)."""
    studies, service, store, people = attached
    monkeypatch.setattr("review.service.SETTLED_S", 0.0)
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    store.save_label(CASE, str(_edited(tmp_path, 1)), "final", {"client_id": "j1"})
    gate = threading.Event()
    service._finaliser.submit(gate.wait, 60)  # the finaliser busy with earlier cases
    try:
        service.after_review(service.workflow.review(people["s1"], CASE, [], default="approve"))
        assert service._finalise_settled() == 0  # queued: left to the finaliser
        assert case_detail(service.workflow, CASE, ADMIN)["state"] == "consensus"
        monkeypatch.setattr("review.service.QUEUED_TRUST_S", 0.0)  # queued too long: the finaliser seems stuck
        assert service._finalise_settled() == 1
        assert case_detail(service.workflow, CASE, ADMIN)["state"] == "final"
    finally:
        gate.set()
    service.wait_idle()
    assert case_detail(service.workflow, CASE, ADMIN)["state"] == "final" and not service._queued


def test_a_refused_save_writes_nothing(attached, tmp_path):
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    before = _files_under(studies)
    with pytest.raises(InputError) as refused:  # j1 holds no assignment yet
        store.save_label(CASE, str(_edited(tmp_path, 2)), "draft", {"client_id": "nobody"})
    assert refused.value.status == 403
    assert _files_under(studies) == before
    assert not (studies / "labels" / "working").exists()


def test_a_withdrawn_case_leaves_every_queue_training_and_the_datastore_and_a_purge_deletes_it(
    attached, shared, tmp_path
):
    studies, service, store, people = attached
    service.accounts.add_user("boss", "admin")
    boss = service.accounts.by_name("boss")
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    service.workflow.claim(people["j1"], CASE)
    store.save_label(CASE, str(_edited(tmp_path, 6)), "final", {"client_id": "j1"})  # submitted: in review
    source = shared / "ct" / f"{CASE}.nii.gz"
    before = source.stat().st_size
    with pytest.raises(InputError) as refused:
        service.withdraw(people["s1"], CASE, "wrong patient")
    assert refused.value.status == 403
    with pytest.raises(InputError, match="reason"):
        service.withdraw(boss, CASE, " ")

    done = service.withdraw(boss, CASE, "wrong patient")
    assert done["state"] == "withdrawn" and not done["assignees"]  # every lease ended
    assert CASE not in store.list_images() and store.is_withdrawn(CASE)
    archive = Path(done["archive"])
    scan = archive / f"{CASE}.nii.gz"
    assert scan.is_symlink() and scan.resolve() == source.resolve()  # the link moved, never its target
    working = archive / "labels" / "working" / f"{CASE}.nii.gz"
    assert working.is_symlink() and working.resolve().parent == service.workspace.label_versions / CASE
    assert queue(service.workflow, people["s1"]) == [] and service.workflow.final_labels() == []
    history = [e["action"] for e in history_of(service, CASE)]
    assert history[-2:] == ["withdraw", "archive"]
    assert service.withdraw(boss, CASE, "again")["state"] == "withdrawn"  # withdrawing again changes nothing

    purged = service.purge(boss, CASE)
    assert purged["deleted_files"] >= 4  # the scan link, the working link, two versions, the case record
    assert not (service.workspace.label_versions / CASE).exists() and not scan.exists()
    assert source.stat().st_size == before  # the source scan is untouched
    assert store.is_withdrawn(CASE)  # a marker stays: a DICOMweb mirror does not fetch the series again
    assert [e["action"] for e in history_of(service, CASE)][-1] == "purge"


def history_of(service: ReviewService, case_id: str):
    from review.queries import history

    return history(service.workflow, case_id, Principal(0, "test", "admin"))


def test_a_prelabel_answered_as_nrrd_is_stored_as_nifti(attached, tmp_path):
    """Slicer and MONAI Label's OHIF panel ask for NRRD answers (result_extension .nrrd): the version store keeps
    gzipped NIfTI under <sha>.nii.gz, so the answer is converted, never copied under that name (a copied NRRD named
    .nii.gz could not be read back: the next click on the case failed)."""
    studies, service, store, people = attached
    label = sitk.ReadImage(str(LABEL))
    answer = tmp_path / "prelabel-answer.nrrd"
    sitk.WriteImage(label, str(answer))
    version = service.store_prelabel(CASE, str(answer), {"model": "unet", "model_version": 1})
    stored = Path(service.current_label_file(CASE, "j1"))
    assert stored.name.endswith(".nii.gz") and stored.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as its name says
    read_back = read_label(stored)  # the checked reader the click task uses: it refused the copied NRRD
    assert np.array_equal(sitk.GetArrayFromImage(read_back), sitk.GetArrayFromImage(label))
    assert version and stored.name.split(".")[0] == file_sha256(stored)


def test_a_whole_label_path_outside_the_answers_folder_is_neither_read_nor_deleted(attached, tmp_path):
    """Only an infer task names the whole label of a scribbles answer, in the answers' folder: a path from anywhere
    else (a client's params echoed by a task) is dropped from the answer, not saved, not deleted."""
    studies, service, store, people = attached
    victim = tmp_path / "precious.nii.gz"
    victim.write_bytes(b"not yours")
    params = {WHOLE_LABEL_KEY: str(victim), "interaction": "click"}
    service.record_inference({"case_id": CASE, "client_id": "j1"}, {"params": params, "file": None})
    assert victim.read_bytes() == b"not yours" and WHOLE_LABEL_KEY not in params


def test_a_refused_click_answer_is_not_left_in_the_answers_folder(attached, tmp_path):
    """A click by a user who may not save the case's label is refused (403) after the network answered: the answer
    never leaves the server, and its file does not stay behind in the answers' folder either."""
    studies, service, store, people = attached
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})  # with no junior yet: s1 may not save it
    results_folder().mkdir(exist_ok=True)
    answer = results_folder() / f"prelabel-refused-{os.getpid()}.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(LABEL)), str(answer))
    params = {"interaction": "click", "model": "deepedit"}
    with pytest.raises(Exception) as refused:
        service.record_inference({"case_id": CASE, "client_id": "s1"}, {"params": params, "file": str(answer)})
    assert getattr(refused.value, "status_code", None) == 403, refused.value
    assert not answer.exists()
