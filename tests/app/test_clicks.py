"""Interactive correction through the real server and the client class 3D Slicer uses: the click model trains on
the final labels (MONAI DeepEdit's simulated clicks), a junior's clicks change one organ near them, and each answer is
a label version by the junior's token; a box (Slicer's ROI) changes the organ inside it only, a lasso and a scribble
act as clicks on their voxels, and the review API's undo takes the last answer back.

The click model here has had two training steps: its network is barely trained, so these tests check what the
server guarantees whatever the network says (the click rules of models.click_merge, the saves, the refusals);
``make bench-clicks`` measures what a trained one is worth.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage

from amoslabel.config import load_config
from amoslabel.organs import ORGANS
from models.click_merge import click_box
from models.pretrained.sam2_weights import fetch_sam2
from review.schema import Case, LabelVersion, User
from review.service import ReviewService
from tests.app.test_server import status_of, train
from tests.conftest import login
from tests.review.conftest import add_users

CASE = "click_ct"
LIVER = 6


@pytest.fixture(scope="module")
def scan(shared):
    return shared / "ct" / "ts_abdomen_ct.nii.gz"


@pytest.fixture(scope="module")
def truth(shared) -> sitk.Image:
    return sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_label.nii.gz"))


@pytest.fixture(scope="module")
def trained(client):
    """The click model with one version, trained through POST /train/deepedit."""
    info = client.info()["models"]["deepedit"]
    assert info["type"] == "deepedit" and list(info["labels"]) == list(client.info()["labels"])
    status = train(client, "deepedit", {"max_epochs": 1, "iterations_per_epoch": 2, "val_interval": 1})
    assert status["status"] == "DONE", status
    return client.info()["models"]["deepedit"]


@pytest.fixture(scope="module")
def junior(server, client, sample_studies, scan, tmp_path_factory):
    """The junior the click case is with, logged in as Slicer logs in (the case is routed to the least loaded)."""
    add_users(sample_studies, [("clicker", "junior")])
    client.upload_image(str(scan), image_id=CASE)
    client.infer("prior", CASE, {})  # the first pre-label starts the case's workflow
    service = ReviewService(load_config(), str(sample_studies))
    try:
        with service.store.read() as s:
            junior_id = s.get(Case, CASE).junior_id
            name = s.get(User, junior_id).name if junior_id else "clicker"
        token = service.accounts.issue_token(name, actor="tests")
    finally:
        service.store.dispose()
    user = login(server.url, tmp_path_factory.mktemp("junior"), name, token)
    assert user.next_sample("review_queue", {})["id"] == CASE
    return name, user


def versions_of(sample_studies, case_id):
    service = ReviewService(load_config(), str(sample_studies))
    try:
        with service.store.read() as s:
            rows = s.query(LabelVersion).filter(LabelVersion.case_id == case_id).order_by(LabelVersion.id).all()
            names = {u.id: u.name for u in s.query(User).all()}
            return [(v.id, v.kind, names.get(v.author_user_id), dict(v.info or {})) for v in rows]
    finally:
        service.store.dispose()


def centre(mask: np.ndarray):
    return tuple(int(v) for v in np.argwhere(mask).mean(axis=0).round())


def ijk(zyx):
    return [int(zyx[2]), int(zyx[1]), int(zyx[0])]


def test_the_click_model_is_listed_for_slicer_and_trains_on_finals(trained, sample_studies):
    assert trained["trained"] is True and trained["serving_version"] == 1
    meta = (sample_studies / ".amoslabel" / "models" / "deepedit" / "v0001" / "meta.json").read_text()
    assert '"kind": "click"' in meta and '"guidance_labels"' in meta


def _token(sample_studies, name: str) -> str:
    service = ReviewService(load_config(), str(sample_studies))
    try:
        return service.accounts.issue_token(name, actor="tests")
    finally:
        service.store.dispose()


def test_clicks_grow_a_missed_part_and_remove_a_false_blob_and_nothing_else(
    trained, junior, truth, sample_studies, server, tmp_path
):
    name, user = junior
    reference = sitk.GetArrayFromImage(truth)
    start = reference.copy()
    liver = reference == LIVER
    hole_at = tuple(int(v) for v in np.unravel_index(ndimage.distance_transform_edt(liver).argmax(), liver.shape))
    zz, yy, xx = np.ogrid[: start.shape[0], : start.shape[1], : start.shape[2]]
    hole = liver & ((zz - hole_at[0]) ** 2 + (yy - hole_at[1]) ** 2 + (xx - hole_at[2]) ** 2 <= 4**2)
    start[hole] = 0  # a missed part inside the liver
    empty = ndimage.binary_erosion(start == 0, iterations=6) & (ndimage.distance_transform_edt(~liver) > 30)
    blob_at = tuple(int(v) for v in np.argwhere(empty)[len(np.argwhere(empty)) // 2])
    blob = np.zeros_like(liver)
    blob[tuple(slice(c - 2, c + 3) for c in blob_at)] = True
    start[blob] = LIVER  # a false blob of liver, far from it
    uploaded = sitk.GetImageFromArray(start)
    uploaded.CopyInformation(truth)
    path = tmp_path / "current.nii.gz"
    sitk.WriteImage(uploaded, str(path))
    others = (start != 0) & (start != LIVER)

    # 1. Slicer's form: the segment being edited and its landmarks; the label to correct uploaded
    result_file, params = user.infer("deepedit", CASE, {"label": "liver", "liver": [ijk(hole_at)]}, label_in=str(path))
    grown = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert params["organs"] == ["liver"] and params["started_from"] == "upload"
    assert grown[hole_at] == LIVER and (grown == LIVER).sum() > (start == LIVER).sum()
    assert np.array_equal(grown[others], start[others])  # every other organ, voxel for voxel
    assert not ((grown != start) & (grown != LIVER) & (grown != 0)).any()  # and no voxel became another organ
    changed = np.argwhere(grown != start)
    spacing = np.array(truth.GetSpacing())[::-1]
    margin = load_config().clicks.margin_mm + spacing.max()  # the box is whole voxels
    assert (np.abs(changed - hole_at) * spacing <= margin).all()  # near the click

    # 2. OHIF's form: background points only, no organ named, no upload: the server's current label (the version
    # step 1 saved) and the organ under the click
    result_file, params = user.infer("deepedit", CASE, {"background": [ijk(blob_at)]})
    cleaned = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert params["organs"] == ["liver"] and params["started_from"] == "case"
    assert not (cleaned[blob] == LIVER).any()  # the false blob, whole
    assert np.array_equal(cleaned[cleaned != grown], np.zeros((cleaned != grown).sum(), np.uint8))
    assert np.array_equal(cleaned[others], start[others])

    # each answer is a label version by the junior whose token asked, kept as the working label
    saved = [v for v in versions_of(sample_studies, CASE) if v[3].get("via") == "clicks"]
    assert [(v[0], v[1], v[2]) for v in saved] == [
        (params_id, "junior", name) for params_id in (saved[0][0], params["label_version"])
    ]
    stored = sample_studies / "labels" / "working" / f"{CASE}.nii.gz"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), cleaned)

    # 3. Slicer's SmartEdit ROI: a box around the liver (an axis in reverse order, as Slicer may send it), no clicks
    corners = np.argwhere(reference == LIVER)
    low, high = corners.min(axis=0), corners.max(axis=0)  # z, y, x
    roi = [int(high[2]), int(low[2]), int(low[1]), int(high[1]), int(low[0]), int(high[0])]
    result_file, boxed_params = user.infer("deepedit", CASE, {"label": "liver", "roi": roi})
    boxed = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert boxed_params["box_ijk"] == [[int(low[a]), int(high[a])] for a in (2, 1, 0)]
    inside = np.zeros(boxed.shape, bool)
    inside[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1] = True
    assert np.array_equal(boxed[~inside], cleaned[~inside])  # nothing outside the box
    assert np.array_equal(boxed[others], start[others])
    assert not ((boxed != cleaned) & (boxed != LIVER) & (boxed != 0)).any()

    # the box's answer undone through the review API: the label a viewer loads is the one before it, as a new version
    token = _token(sample_studies, name)
    undone = requests.post(
        f"{server.url}/review/api/cases/{CASE}/undo", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    assert undone.status_code == 200 and undone.json()["restored"] == params["label_version"], undone.text
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), cleaned)
    step = versions_of(sample_studies, CASE)[-1][3]["undo_step"]
    assert step == {"action": "undo", "restores": params["label_version"]}


def test_a_lasso_makes_its_inside_the_organ_on_its_slice_and_a_scribble_answers_too(trained, junior, sample_studies):
    name, user = junior
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_studies / "labels" / "working" / f"{CASE}.nii.gz")))
    z, y, x = free_spot(before, 1 / 2)  # a slice and a spot where the label has nothing
    corners = [[x - 3, y - 3, z], [x + 3, y - 3, z], [x + 3, y + 3, z], [x - 3, y + 3, z]]  # i, j, k on slice k = z
    result_file, params = user.infer(
        "deepedit", CASE, {"label": "liver", "lassos": [{"kind": "foreground", "points": corners}]}
    )
    after = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    inside = np.zeros(after.shape, bool)
    inside[z, y - 3 : y + 4, x - 3 : x + 4] = True
    assert params["strokes"] == [{"shape": "lasso", "kind": "foreground", "voxels": 49}]
    assert (after[inside & (before == 0)] == LIVER).all()  # the lasso's inside, where no other organ is
    assert np.array_equal(after[(before != 0) & (before != LIVER)], before[(before != 0) & (before != LIVER)])
    # a background scribble across what the lasso added takes it back at least where it runs
    line = [[x - 3, y, z], [x + 3, y, z]]
    result_file, params = user.infer(
        "deepedit", CASE, {"label": "liver", "scribbles": [{"kind": "background", "points": line}]}
    )
    cut = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert not (cut[z, y, x - 3 : x + 4] == LIVER).any() and params["strokes"][0]["voxels"] == 7
    saved = [v for v in versions_of(sample_studies, CASE) if v[3].get("via") == "clicks"]
    assert saved[-1][0] == params["label_version"] and saved[-1][2] == name
    assert saved[-1][3]["clicks"]["strokes"] == params["strokes"]  # the history says what was drawn


def test_the_sam2_engine_answers_under_the_same_rules_once_its_weights_are_fetched(
    trained, junior, sample_studies, scan, made_sam2, request
):
    """``engine: sam2`` (SAM2 with random weights here: ``made_sam2``): refused until an admin fetches the weights,
    then its answer changes the liver alone, near the click, and is the junior's version with the engine named."""
    name, user = junior
    working = sample_studies / "labels" / "working" / f"{CASE}.nii.gz"
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(working)))
    click = centre(before == LIVER)
    params = {"label": "liver", "engine": "sam2", "liver": [ijk(click)]}
    saved_before = versions_of(sample_studies, CASE)
    for asked, status, words in [(params, 409, "models fetch sam2"), ({**params, "engine": "nope"}, 400, "engine")]:
        with pytest.raises(MONAILabelClientException) as err:
            user.infer("deepedit", CASE, asked)
        assert status_of(err.value) == status and words in err.value.msg, err.value.msg
    assert versions_of(sample_studies, CASE) == saved_before  # nothing saved
    assert user.info()["models"]["deepedit"]["engines"] == {"amos": True, "sam2": False}
    # what `models fetch sam2 --from FILE.pt` does (the command itself: tests/models/pretrained/test_sam2_weights.py)
    models = sample_studies / ".amoslabel" / "models"
    fetch_sam2(models, source=made_sam2, image_size=256)
    request.addfinalizer(lambda: shutil.rmtree(models / "sam2"))  # the other tests' server has no sam2 again
    assert user.info()["models"]["deepedit"]["engines"] == {"amos": True, "sam2": True}
    with pytest.raises(MONAILabelClientException) as err:  # SAM2 needs a point on the organ, or a box
        user.infer("deepedit", CASE, {"label": "liver", "engine": "sam2", "background": [ijk(click)]})
    assert status_of(err.value) == 400 and "needs a point on the organ" in err.value.msg, err.value.msg
    result_file, answer = user.infer("deepedit", CASE, params)
    assert answer["engine"] == "sam2" and answer["network_from"] == "sam2:v1", answer
    after = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    others = (before != 0) & (before != LIVER)
    assert np.array_equal(after[others], before[others])  # never another organ's voxel
    changed = before != after
    assert set(np.unique(after[changed])) <= {0, LIVER}
    spacing = tuple(reversed(sitk.ReadImage(str(scan)).GetSpacing()))
    near = np.zeros(before.shape, bool)
    near[click_box([click], before.shape, load_config().clicks.margin_mm, spacing)] = True
    assert not (changed & ~near).any()  # only near the click
    saved = [v for v in versions_of(sample_studies, CASE) if v[3].get("via") == "clicks"]
    assert saved[-1][0] == answer["label_version"] and saved[-1][2] == name
    assert saved[-1][3]["clicks"]["engine"] == "sam2" and saved[-1][3]["clicks"]["network_from"] == "sam2:v1"


def test_slicers_scribbles_correct_the_selected_organ_and_the_whole_label_is_saved(
    trained, junior, client, sample_studies, truth, tmp_path
):
    name, user = junior
    assert client.info()["models"]["deepedit_scribbles"]["type"] == "scribbles"  # what Slicer's section lists
    stored = sample_studies / "labels" / "working" / f"{CASE}.nii.gz"
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(stored)))
    # Slicer's export of its editor: a value per segment in its order (the organs, last first), then the scribble
    # layers (16 foreground, 17 background)
    order = [o for o in reversed(ORGANS)]
    exported = np.zeros(before.shape, np.uint8)
    for value, organ in enumerate(order, start=1):
        exported[before == organ.id] = value
    z, y, x = free_spot(before, 1 / 3)
    exported[z, y, x - 3 : x + 4] = 16
    image = sitk.GetImageFromArray(exported)
    image.CopyInformation(truth)
    path = tmp_path / "scribbles.nrrd"
    sitk.WriteImage(image, str(path))
    info = [{"name": o.name, "id": value} for value, o in enumerate(order, start=1)]
    info += [{"name": "foreground_scribbles", "id": 16}, {"name": "background_scribbles", "id": 17}]
    params = {"label_info": info, "selected_label_name": "liver", "roi": [], "result_extension": ".nrrd"}
    result_file, answer = user.infer("deepedit_scribbles", CASE, params, label_in=str(path))
    only = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert set(np.unique(only)) <= {0, LIVER} and (only[z, y, x - 3 : x + 4] == LIVER).all()  # the liver alone
    assert "whole_label_file" not in answer and answer["strokes"] == [
        {"shape": "scribble", "kind": "foreground", "voxels": 7}
    ]
    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(stored)))  # the user's version: every organ, the liver's new
    assert np.array_equal(whole == LIVER, only == LIVER)
    assert np.array_equal(whole[(before != 0) & (before != LIVER)], before[(before != 0) & (before != LIVER)])
    saved = [v for v in versions_of(sample_studies, CASE) if v[3].get("via") == "clicks"]
    assert saved[-1][0] == answer["label_version"] and saved[-1][2] == name
    exported[exported >= 16] = 0  # no scribble painted: refused, nothing saved
    unpainted = sitk.GetImageFromArray(exported)
    unpainted.CopyInformation(truth)
    sitk.WriteImage(unpainted, str(path))
    with pytest.raises(MONAILabelClientException) as err:
        user.infer("deepedit_scribbles", CASE, params, label_in=str(path))
    assert status_of(err.value) == 400 and "no scribbles" in err.value.msg, err.value.msg
    assert versions_of(sample_studies, CASE)[-1][0] == saved[-1][0]


def test_bad_clicks_are_refused_and_nothing_is_saved(trained, junior, client, server, shared, sample_studies):
    name, user = junior
    before = versions_of(sample_studies, CASE)
    off_grid = str(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz")
    cases = [
        ({"label": "liver", "liver": [[9999, 5, 5]]}, None, 422, "outside the image"),
        ({"label": "liver", "liver": [[-1, 5, 5]]}, None, 422, "outside the image"),
        ({"label": "tumour", "tumour": [[5, 5, 5]]}, None, 400, "unknown organ"),
        ({"label": "liver", "liver": [["a", 5, 5]]}, None, 400, "three voxel indices"),
        ({"label": "liver"}, None, 400, "no clicks"),
        ({"roi": [1, 5, 1, 5, 1, 5]}, None, 400, "needs the organ"),
        ({"label": "liver", "roi": [9000, 9100, 1, 5, 1, 5]}, None, 422, "outside the image"),
        (
            {"label": "liver", "scribbles": [{"kind": "foreground", "points": [[1, 1, 1], [5, 5, 5]]}]},
            None,
            400,
            "one slice",
        ),
        (
            {"label": "liver", "lassos": [{"kind": "foreground", "points": [[1, 1, 1], [1, 9000, 1], [1, 5, 5]]}]},
            None,
            422,
            "outside",
        ),
        ({"label": "liver", "liver": [[50, 50, 50]]}, off_grid, 422, "grid"),
        ({"label": "liver", "liver": [[50, 50, 50]], "current_label_file": "/etc/passwd"}, None, None, None),
        ({"label": "liver", "liver": [[50, 50, 50]], "whole_label_file": "/etc/passwd"}, None, None, None),
    ]
    for params, label_in, expected, words in cases:
        if expected is None:  # a client cannot name a file for the server to read: the key is dropped
            _, answer = user.infer("deepedit", CASE, params)
            assert answer["started_from"] == "case" and "whole_label_file" not in answer
            assert Path("/etc/passwd").is_file()
            before = versions_of(sample_studies, CASE)
            continue
        with pytest.raises(MONAILabelClientException) as err:
            user.infer("deepedit", CASE, params, label_in=label_in)
        assert status_of(err.value) == expected and words in err.value.msg, err.value.msg
    # the admin is not the case's junior: a click it asks for is not saved as anybody's
    with pytest.raises(MONAILabelClientException) as err:
        client.infer("deepedit", CASE, {"label": "liver", "liver": [[50, 50, 50]]})
    assert status_of(err.value) == 403
    # MONAI Label's whole-slide routes would take params unchecked (a path, another user's client_id): not served
    token = _token(sample_studies, name)
    for route in ("wsi", "wsi_v2"):
        refused = requests.post(
            f"{server.url}/infer/{route}/deepedit?image={CASE}",
            headers={"Authorization": f"Bearer {token}"},
            json={"level": 0, "params": {"label": "liver", "liver": [[50, 50, 50]], "client_id": "someone"}},
            timeout=60,
        )
        assert refused.status_code == 404 and "POST /infer/{model}" in refused.json()["detail"], refused.text
    assert versions_of(sample_studies, CASE) == before
    assert server.alive()


def free_spot(label: np.ndarray, share: float, margin: int = 3) -> tuple:
    """A voxel (z, y, x) where ``label`` has nothing, at ``share`` of such voxels in order, at least ``margin`` voxels
    from the scan's sides in x and y: a stroke of ``margin`` voxels around it stays inside the scan (which voxel is
    free depends on the labels earlier tests saved; one near the side once cut a 7-voxel scribble to 5)."""
    free = np.argwhere(label == 0)
    _, height, width = label.shape
    inside = (
        (free[:, 1] >= margin) & (free[:, 1] < height - margin) & (free[:, 2] >= margin) & (free[:, 2] < width - margin)
    )
    free = free[inside]
    return tuple(int(v) for v in free[int(len(free) * share)])
