"""The AMOS workflow on an Orthanc DICOMweb datastore, all inside the private network namespace (conftest.py).

A real DICOM CT series, given planted patient identifiers, is checked, de-identified and uploaded; a real MONAI Label
server runs on ``--studies <orthanc>/dicom-web``; the pre-label goes back to Orthanc as a coded DICOM SEG; the
junior saves through the Slicer client; three seniors approve through the review API; the final label is stored in
Orthanc as DICOM SEG naming its label version, and reads back equal to the consensus label map. No planted
identifier appears in Orthanc, the JSON API, the queue page or the server log. A series with corrupt pixel data is
refused with a clear error and nothing of it is stored.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk

from amoslabel.dicom.seg import ORGAN_CODES, read_seg
from amoslabel.dicom.deidentify import UID_MAP, private_folder
from amoslabel.dicom.send import send_to_dicomweb
from amoslabel.data.locations import cache_root
from amoslabel.dicom.naming import FINAL_PREFIX, PRELABEL_PREFIX
from amoslabel.errors import InputError
from amoslabel.dicom.orthanc import OrthancProcess, count_instances, fetch_series, qido, value, write_config
from tests.conftest import NO_SCORER, ServerProcess, free_port, login
from tests.dicomweb.conftest import series_label_on
from tests.review.conftest import add_users

PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-4451-PHI",
    "PatientBirthDate": "19610203",
    "InstitutionName": "St Elsewhere General",
    "AccessionNumber": "ACC998877",
    "ReferringPhysicianName": "House^Gregory",
}
PEOPLE = [("jun", "junior"), ("sen1", "senior"), ("sen2", "senior"), ("sen3", "senior"), ("boss", "admin")]
SERIES_DESCRIPTION = "0008103E"


def _with_phi(source, target):
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        for keyword, text in PHI.items():
            setattr(ds, keyword, text)
        ds.save_as(target / path.name)
    return target


def api(url, token, method, path, **kwargs):
    return requests.request(
        method, f"{url}/review/api{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
    )


@pytest.fixture(scope="module")
def site(netns, shared, tmp_path_factory):
    """An Orthanc of its own with the de-identified series, and a MONAI Label server on its DICOMweb root."""
    tmp = tmp_path_factory.mktemp("dicomweb-site")
    orthanc = OrthancProcess(write_config(tmp / "orthanc", free_port()))
    orthanc.wait_ready()
    series = _with_phi(shared / "dicom" / "ts_ct_series_uncompressed", tmp / "incoming" / "ct")
    sent = send_to_dicomweb(series, orthanc.url, tmp / "importer")
    cache = tmp / "cache"
    root = cache_root(orthanc.dicomweb, str(cache))
    root.mkdir(parents=True)
    tokens = add_users(root, PEOPLE)
    os.environ["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(cache)
    server = ServerProcess(orthanc.dicomweb, tmp, {"preset": "cpu-fast", **NO_SCORER})
    try:
        server.wait_ready()
        yield orthanc, server, tokens, sent[0], root, tmp
    finally:
        os.environ.pop("MONAI_LABEL_DICOMWEB_CACHE_PATH", None)
        server.stop()
        orthanc.stop()


def _segs(orthanc, prefix):
    found = qido(orthanc.dicomweb, "series", Modality="SEG")
    return [s for s in found if str(value(s, SERIES_DESCRIPTION)).startswith(prefix)]


def test_the_review_workflow_runs_on_orthanc(site, shared, tmp_path):
    orthanc, server, tokens, sent, root, tmp = site
    case = sent.series_uid
    admin = login(server.url, tmp_path, "boss", tokens["boss"])
    assert case in admin.datastore()["objects"]  # the de-identified series is a case, under its new UID

    # pre-label (the atlas prior: nothing is trained) -> a coded SEG in Orthanc that OHIF lists
    admin.infer("unet", case, {})
    (prelabel,) = _segs(orthanc, PRELABEL_PREFIX)
    reply = server.http.post(
        f"{server.url}/infer/unet",
        params={"image": case, "output": "dicom_seg"},
        data={"params": '{"label_info": [{"name": "organs"}]}'},
        timeout=600,
    )
    assert reply.status_code == 200, reply.text[:500]
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(reply.content))
    known = {(c.type.value, c.type.scheme) for c in ORGAN_CODES}
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in seg.SegmentSequence]
    coded = {(t.CodeValue, t.CodingSchemeDesignator) for t in types}
    assert coded <= known and len(coded) > 3, coded  # organs coded as themselves (MONAI Label codes all as spleen)

    # the junior corrects it in Slicer: the real label of this series, put on the series' grid by physical position
    image = sitk.ReadImage(str(root / f"{case}.nii.gz"))
    truth = series_label_on(image, shared)
    sitk.WriteImage(truth, str(tmp_path / "junior.nii.gz"))
    junior = login(server.url, tmp_path, "jun", tokens["jun"])
    assert junior.next_sample("review_queue", {})["id"] == case
    junior.save_label(case, str(tmp_path / "junior.nii.gz"), tag="final")

    for name in ("sen1", "sen2", "sen3"):
        reply = api(server.url, tokens[name], "POST", f"/cases/{case}/reviews", json={"default": "approve"})
        assert reply.status_code == 200, reply.text
    deadline = time.time() + 120
    while api(server.url, tokens["boss"], "GET", f"/cases/{case}").json()["state"] != "final":
        assert time.time() < deadline, server.tail()
        time.sleep(0.5)

    # the final SEG in Orthanc names its version and reads back equal to the consensus label map
    for _ in range(60):
        finals = _segs(orthanc, FINAL_PREFIX)
        if finals:
            break
        time.sleep(1)
    (final_seg,) = finals
    detail = api(server.url, tokens["boss"], "GET", f"/cases/{case}").json()
    assert re.search(rf"v{detail['final_version']}\b", value(final_seg, SERIES_DESCRIPTION))
    files = fetch_series(orthanc.dicomweb, sent.study_uid, value(final_seg, "0020000E"), tmp_path / "final-seg")
    back = sitk.GetArrayFromImage(read_seg(files[0], root / case))
    consensus = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labels" / "final" / f"{case}.nii.gz")))
    assert back.shape == consensus.shape and np.array_equal(back, consensus)
    assert np.array_equal(consensus, sitk.GetArrayFromImage(truth))

    # no planted identifier anywhere a user or a log can see; the private map keeps the way back
    queue_page = requests.Session()
    login_page = queue_page.get(f"{server.url}/review/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page)
    form = {"token": tokens["boss"], **({"csrf_token": csrf.group(1)} if csrf else {})}
    queue_page.post(f"{server.url}/review/login", data=form, timeout=30)
    seen = {
        "queue page": queue_page.get(f"{server.url}/review/", timeout=30).text,
        "case page": queue_page.get(f"{server.url}/review/cases/{case}", timeout=30).text,
        "JSON API": api(server.url, tokens["boss"], "GET", f"/cases/{case}").text
        + api(server.url, tokens["boss"], "GET", "/queue").text,
        "server log": server.tail(100000),
        "Orthanc": str(qido(orthanc.dicomweb, "studies")) + str(qido(orthanc.dicomweb, "series")),
        "stored DICOM": b"".join(p.read_bytes() for p in (root / case).iterdir()).decode("latin-1"),
    }
    assert case in seen["case page"]  # the pages themselves, not the login form
    for where, text in seen.items():
        for keyword, planted in PHI.items():
            assert planted.split("^")[0] not in text, f"{keyword} in the {where}"
    with sqlite3.connect(private_folder(tmp / "importer") / UID_MAP) as db:
        assert db.execute("SELECT COUNT(*) FROM uids WHERE new = ?", (case,)).fetchone()[0] == 1

    # the audit log records who opened the scan, and through what
    history = api(server.url, tokens["boss"], "GET", f"/cases/{case}/history").json()
    opened = {(e["actor"], e["reason"]) for e in history["events"] if e["action"] == "open"}
    assert {("boss", "viewer /infer/unet"), ("boss", "review API"), ("boss", "review page")} <= opened


def test_a_series_with_corrupt_pixel_data_is_refused_and_nothing_is_stored(site, shared, tmp_path):
    orthanc, _, _, _, _, tmp = site
    broken = tmp_path / "broken"
    shutil.copytree(shared / "dicom" / "ts_ct_series_uncompressed", broken)
    victim = sorted(broken.iterdir())[7]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # a well-formed file whose pixels are a third missing
    ds.save_as(victim)
    before = count_instances(orthanc.url)
    with sqlite3.connect(private_folder(tmp / "importer") / UID_MAP) as db:
        mapped = db.execute("SELECT COUNT(*) FROM uids").fetchone()[0]
    with pytest.raises(InputError, match="broken"):
        send_to_dicomweb(broken, orthanc.url, tmp / "importer")
    assert count_instances(orthanc.url) == before
    with sqlite3.connect(private_folder(tmp / "importer") / UID_MAP) as db:
        assert db.execute("SELECT COUNT(*) FROM uids").fetchone()[0] == mapped
