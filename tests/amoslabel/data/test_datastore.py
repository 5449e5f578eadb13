"""The local datastore keeps its index through crashes and checks every upload before storing it."""

from __future__ import annotations

import json
import time
import os
import shutil

import pytest
import SimpleITK as sitk

from amoslabel.data.datastore import INDEX_FILE, AmosDatastore
from amoslabel.errors import InputError
from amoslabel.data.importer import import_source
from tests.badfiles import BAD_IMAGES, BAD_LABELS, CT, CT_LABEL


@pytest.fixture()
def studies(shared, tmp_path):
    path = tmp_path / "studies"
    import_source(shared / "ct" / "ts_abdomen_ct_small.nii.gz", path, progress=False)
    return path


def _store(path):
    return AmosDatastore(str(path), max_voxels=10**9, max_upload_bytes=50 * 2**20)


def test_index_is_rebuilt_from_files_when_unreadable(studies):
    store = _store(studies)
    assert store.datalist() and store.has_image("ts_abdomen_ct_small")
    (studies / INDEX_FILE).write_text("")  # what a crash mid-write leaves behind with MONAI Label's own store
    store = _store(studies)
    assert [d["image"].endswith("ts_abdomen_ct_small.nii.gz") for d in store.datalist()] == [True]
    assert list(studies.glob(f"{INDEX_FILE}.unreadable-*"))
    (studies / INDEX_FILE).write_text('{"objects": {"trunc')
    assert _store(studies).has_image("ts_abdomen_ct_small")


def test_index_writes_are_atomic(studies, monkeypatch):
    store = _store(studies)
    before = (studies / INDEX_FILE).read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("amoslabel.data.datastore.write_text_atomic", crash)
    store.update_image_info("ts_abdomen_ct_small", {"note": "x"})
    with pytest.raises(OSError):
        store.flush_index()
    assert (studies / INDEX_FILE).read_text() == before
    json.loads(before)


def test_image_info_survives_a_restart_without_an_index_rewrite(studies):
    store = _store(studies)
    before = (studies / INDEX_FILE).read_text()
    store.update_image_info("ts_abdomen_ct_small", {"strategy": {"review_queue": {"client_id": "jun"}}})
    assert (studies / INDEX_FILE).read_text() == before  # Next Sample no longer rewrites the whole index
    again = _store(studies)
    assert again.get_image_info("ts_abdomen_ct_small")["strategy"]["review_queue"]["client_id"] == "jun"


def test_the_image_info_without_path_is_monai_labels_less_the_path_it_resolves(studies):
    """What a viewer's Next Sample answers: MONAI Label's image info, our records' included, less the server path
    (which it never resolves); nothing for an unknown image."""
    store = _store(studies)
    store.update_image_info("ts_abdomen_ct_small", {"note": "x"})
    info = store.get_image_info("ts_abdomen_ct_small")
    assert info["path"] == os.path.realpath(studies / "ts_abdomen_ct_small.nii.gz") and info["note"] == "x"
    assert store.image_info_without_path("ts_abdomen_ct_small") == {k: v for k, v in info.items() if k != "path"}
    assert store.image_info_without_path("no_such_case") == {}


def test_delayed_index_writes_coalesce(studies, shared):
    store = AmosDatastore(str(studies), 2**31, 2**31, index_delay_s=0.3)
    label = shared / "ct" / "ts_abdomen_ct_small_label.nii.gz"
    before = (studies / INDEX_FILE).read_text()
    store.save_label("ts_abdomen_ct_small", str(label), "draft", {})
    store.save_label("ts_abdomen_ct_small", str(label), "other", {})
    assert (studies / INDEX_FILE).read_text() == before  # not yet
    time.sleep(1.0)
    index = json.loads((studies / INDEX_FILE).read_text())
    assert {"draft", "other"} <= set(index["objects"]["ts_abdomen_ct_small"]["labels"])


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_uploaded_images_store_nothing(studies, tmp_path, kind):
    store = _store(studies)
    bad = BAD_IMAGES[kind](tmp_path / f"{kind}.nii.gz")
    listing = sorted(os.listdir(studies))
    with pytest.raises(InputError) as err:
        store.add_image("new_case", str(bad), {})
    assert 400 <= err.value.status < 500
    assert sorted(os.listdir(studies)) == listing and not store.has_image("new_case")


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_labels_store_nothing_and_keep_the_stored_one(studies, tmp_path, kind):
    store = _store(studies)
    stored = studies / "labels" / "final" / "ts_abdomen_ct_small.nii.gz"
    before = stored.read_bytes()
    bad = BAD_LABELS[kind](tmp_path / f"{kind}.nii.gz")
    with pytest.raises(InputError) as err:
        store.save_label("ts_abdomen_ct_small", str(bad), "final", {})
    assert 400 <= err.value.status < 500
    assert stored.read_bytes() == before


@pytest.mark.parametrize("image_id", ["../escape", "a/b", "", ".hidden", "x" * 200, "name\nwith newline", "..", "é"])
def test_ids_that_are_paths_or_odd_are_refused(studies, image_id):
    store = _store(studies)
    with pytest.raises(InputError, match="not valid"):
        store.add_image(image_id or "..", str(CT), {})
    with pytest.raises(InputError):
        store.save_label(image_id or "..", str(CT_LABEL), "final", {})
    assert not (studies.parent / "escape.nii.gz").exists()


def test_label_tags_that_are_paths_are_refused(studies):
    with pytest.raises(InputError, match="tag"):
        _store(studies).save_label("ts_abdomen_ct_small", str(CT_LABEL), "../../etc", {})


def test_good_upload_and_label_round_trip(studies, tmp_path):
    store = _store(studies)
    assert store.add_image("uploaded", str(CT), {"modality": "CT"}) == "uploaded"
    assert store.records.get("uploaded")["modality"] == "ct"
    shifted = sitk.ReadImage(str(CT_LABEL))
    origin = shifted.GetOrigin()
    shifted.SetOrigin((origin[0] + 0.001, origin[1], origin[2]))  # within tolerance: stored on the exact grid
    sitk.WriteImage(shifted, str(tmp_path / "l.nii.gz"))
    store.save_label("uploaded", str(tmp_path / "l.nii.gz"), "final", {"user": "junior1"})
    saved = sitk.ReadImage(str(studies / "labels" / "final" / "uploaded.nii.gz"))
    assert saved.GetOrigin() == sitk.ReadImage(str(CT)).GetOrigin()
    assert len(_store(studies).datalist()) == 2  # survives a restart
    shutil.rmtree(studies / ".amoslabel" / "tmp")


def test_a_linked_scan_and_the_workflow_labels_are_never_removed(shared, tmp_path):
    """MONAI Label's removal deletes the target of a linked scan (the source dataset); ours refuses, and removes
    only a label the workflow does not own. The scan links to a private copy, never to ../shared/data."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(CT, source / "linked_ct.nii.gz")
    studies = tmp_path / "linked-studies"
    import_source(source / "linked_ct.nii.gz", studies, link_images=True, progress=False)
    assert (studies / "linked_ct.nii.gz").is_symlink()
    store = _store(studies)
    for tag in ("final", "draft"):
        store.save_label("linked_ct", str(CT_LABEL), tag, {})
    with pytest.raises(InputError) as err:
        store.remove_image("linked_ct")
    assert err.value.status == 403 and "review case" in str(err.value)
    for tag in ("final", "working", "original"):
        with pytest.raises(InputError) as err:
            store.remove_label("linked_ct", tag)
        assert err.value.status == 403
    with pytest.raises(InputError) as err:
        store.remove_image("../linked_ct")
    assert err.value.status == 400
    store.remove_label("linked_ct", "draft")
    assert (source / "linked_ct.nii.gz").is_file() and store.has_image("linked_ct")
    assert store.get_label_uri("linked_ct", "final") and not store.get_label_uri("linked_ct", "draft")
    assert not _store(studies).get_label_uri("linked_ct", "draft")  # the index forgot it too


def test_a_scan_and_a_label_another_server_added_are_found_on_a_miss(studies, tmp_path):
    """Two servers of a team on one studies folder, each with its own index in memory: what one adds, the other finds
    when a request names it (without writing the index, which stays the adding server's)."""
    first, second = _store(studies), _store(studies)
    first.add_image("new_case", str(CT), {})
    version = tmp_path / ("a" * 64 + ".nii.gz")
    shutil.copy(CT_LABEL, version)
    first.link_label("new_case", version, "working", {})
    first.flush_index()
    index_before = (studies / INDEX_FILE).read_bytes()
    assert "new_case" not in second._datastore.objects  # the second server's index does not have it yet
    assert second.has_image("new_case") and second.image_file("new_case") == first.image_file("new_case")
    assert second.get_image_info("new_case")
    assert second.get_label_uri("new_case", "working") == str(version.resolve())
    assert second.label_file("new_case", "working") == str(version.resolve())
    assert (studies / INDEX_FILE).read_bytes() == index_before  # the second server wrote nothing
    for bad in ("../new_case", "nope"):
        assert not second.has_image(bad)
