"""R3: a corpus of bad inputs, each through every path it can reach, on the real server: image upload (the client class
3D Slicer uses), /infer with an uploaded scan, a viewer's label save, the review API's label save, the import command,
DICOM import, ids and tags in every place they are taken, and malformed or oversized JSON.

For each: a 4xx (or, for the command, a non-zero exit) with a message, nothing stored, and the server alive. The
oblique scan is the exception that must work everywhere.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import requests
import yaml
from monailabel.client.client import MONAILabelClientException

from amoslabel.config import load_config
from review.service import ReviewService
from tests.badfiles import BAD_IDS, BAD_IMAGES, BAD_LABELS, CT, CT_LABEL, dicom_truncated_file, dicom_without_positions
from tests.badfiles import oblique as oblique_scan
from tests.app.test_server import status_of
from tests.conftest import amoslabel_command, login
from tests.reliability.conftest import TeamServer, report, start_team_server, write_config

CASE = "ct_small"  # held by j1 for the label paths; its scan is the real small CT the bad labels are made from
OUTCOMES: List[Dict] = []


@pytest.fixture(scope="module")
def bench(shared, tmp_path_factory):
    """A server whose ct_small case is with its junior, j1 (the MRI is final), and the Slicer client class logged in
    as j1 (labels, pre-labels) and as the admin boss (scan uploads are an admin's)."""
    root = tmp_path_factory.mktemp("bad-input")
    config = write_config(root, routing="pool", scoring=False)
    server = start_team_server(shared, root, config, final="mr_small")  # the prior needs one final
    service = ReviewService(load_config(config), str(server.studies))
    service.workflow.record_prelabel(CASE, CT_LABEL, "prior", {})
    service.workflow.claim(service.accounts.by_name("j1"), CASE)
    client = login(server.url, root / "client", "j1", server.tokens["j1"])
    client.admin = login(server.url, root / "client", "boss", server.tokens["boss"])
    yield server, service, client, root
    service.store.dispose()
    server.process.stop()
    refused = [o for o in OUTCOMES if o["expected"] == "refused"]
    report(
        "r3_bad_input",
        {
            "tried": len(OUTCOMES),
            "refused_as_expected": sum(1 for o in refused if o["ok"]),
            "accepted_as_expected": sum(1 for o in OUTCOMES if o["expected"] == "accepted" and o["ok"]),
            "wrong": [o for o in OUTCOMES if not o["ok"]],
            "inputs": sorted({o["input"] for o in OUTCOMES}),
            "paths": sorted({o["path"] for o in OUTCOMES}),
            "outcomes": OUTCOMES,
        },
    )


def snapshot(server: TeamServer, service: ReviewService) -> Dict:
    """What a refused request must not change: the files of the studies folder and the case's versions."""
    files = {
        str(p.relative_to(server.studies)): p.stat().st_size
        for p in server.studies.rglob("*")
        if p.is_file() and ".amoslabel" not in p.parts and p.name != "datastore_v2.json"
    }
    detail = server.api("boss", "GET", f"/cases/{CASE}").json()
    listing = server.http("boss").get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    return {
        "files": files,
        "versions": len(detail["versions"]),
        "state": detail["state"],
        "images": sorted(listing["objects"]),
    }


def record(path: str, name: str, status, message: str, expected: str = "refused") -> bool:
    if expected == "refused":
        ok = 400 <= status < 500 and bool(message)
    else:
        ok = status in (200, 0)
    OUTCOMES.append(
        {"path": path, "input": name, "status": status, "expected": expected, "ok": ok, "message": message[:160]}
    )
    return ok


def import_command(source: Path, studies: Path) -> subprocess.CompletedProcess:
    """``python -m amoslabel import SOURCE --studies STUDIES``, as a user runs it."""
    return amoslabel_command("import", source, "--studies", studies)


def _client_call(call) -> tuple:
    try:
        call()
    except MONAILabelClientException as error:
        return status_of(error), str(error.msg)
    return 200, ""


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_scan_through_upload_infer_and_import(bench, kind, tmp_path):
    server, service, client, root = bench
    bad = BAD_IMAGES[kind](tmp_path / f"{kind}.nii.gz")
    before = snapshot(server, service)
    status, message = _client_call(
        lambda: client.admin.upload_image(str(bad), image_id=f"bad_{kind.replace('-', '_')}")
    )
    assert record("PUT /datastore/image", kind, status, message), (status, message)
    status, message = _client_call(lambda: client.infer("unet", "", {}, file=str(bad)))
    assert record("POST /infer (uploaded scan)", kind, status, message), (status, message)
    studies = tmp_path / "import-studies"
    done = import_command(bad, studies)
    refused = done.returncode != 0 or "skipped 1" in done.stdout + done.stderr
    record("import command", kind, 400 if refused else 0, (done.stderr or done.stdout).strip()[-300:])
    assert refused, done.stdout + done.stderr
    assert not list(studies.glob("*.nii*")), "the import stored a bad scan"
    assert snapshot(server, service) == before
    assert server.process.alive()


def test_huge_header_is_refused_before_allocating(bench, tmp_path):
    """10^12 voxels claimed over a few bytes: refused from the header, the server's peak memory unchanged."""
    server, service, client, _ = bench
    bad = BAD_IMAGES["huge-header"](tmp_path / "huge.nii.gz")
    peak = _peak_rss_mb(server.process.process.pid)
    for _ in range(3):
        status, message = _client_call(lambda: client.admin.upload_image(str(bad), image_id="huge"))
        assert status == 413 and "voxels" in message, message
    grew = _peak_rss_mb(server.process.process.pid) - peak
    record("PUT /datastore/image (peak memory)", "huge-header", status, f"{message[:100]}; peak RSS grew {grew} MB")
    assert grew < 200, f"the server's peak memory grew by {grew} MB"


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_an_oblique_scan_works_everywhere(bench, tmp_path):
    server, service, client, _ = bench
    scan = oblique_scan(tmp_path / "oblique.nii.gz")
    status, message = _client_call(lambda: client.admin.upload_image(str(scan), image_id="oblique_ct"))
    assert record("PUT /datastore/image", "oblique", status, message, expected="accepted"), message
    label_file, params = client.infer("unet", "oblique_ct", {})
    import SimpleITK as sitk

    label, image = sitk.ReadImage(label_file), sitk.ReadImage(str(scan))
    same = (
        label.GetSize() == image.GetSize()
        and max(abs(a - b) for a, b in zip(label.GetDirection(), image.GetDirection())) < 1e-6
    )
    record("POST /infer (pre-label on its grid)", "oblique", 200 if same else 500, "", expected="accepted")
    assert same, (label.GetDirection(), image.GetDirection())
    done = import_command(scan, tmp_path / "imp")
    record("import command", "oblique", done.returncode, done.stderr[-200:], expected="accepted")
    assert done.returncode == 0 and list((tmp_path / "imp").glob("oblique*.nii.gz")), done.stderr


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_label_through_the_viewer_and_the_review_api(bench, kind, tmp_path):
    server, service, client, _ = bench
    bad = BAD_LABELS[kind](tmp_path / f"{kind}.nii.gz")
    before = snapshot(server, service)
    for tag in ("final", "draft"):
        status, message = _client_call(lambda tag=tag: client.save_label(CASE, str(bad), tag=tag))
        assert record(f"PUT /datastore/label tag={tag}", kind, status, message), (status, message)
    reply = server.api("j1", "POST", f"/cases/{CASE}/label", files={"label": ("l.nii.gz", bad.read_bytes())})
    assert record("POST /review/api/cases/{id}/label", kind, reply.status_code, reply.text), reply.text
    assert snapshot(server, service) == before
    assert server.process.alive()
    # the import command, the bad label beside the real scan it belongs to (a manifest, as a dataset would be)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"root": ".", "cases": [{"id": "case", "image": str(CT), "label": bad.name}]}))
    done = import_command(manifest, tmp_path / "imported")
    output = (done.stdout + done.stderr).strip()
    refused = done.returncode != 0 or "skipped 1" in output
    record("import command (scan + label)", kind, 400 if refused else 0, output[-300:])
    assert refused, output
    assert not list((tmp_path / "imported").glob("*.nii*")), "the import stored a case with a bad label"


@pytest.mark.parametrize("kind", sorted(BAD_IDS))
def test_bad_ids_and_tags_everywhere(bench, kind):
    server, service, client, _ = bench
    bad = BAD_IDS[kind]
    before = snapshot(server, service)
    label = CT_LABEL.read_bytes()
    attempts = {
        "PUT /datastore/image ?image=": lambda: server.http("boss").put(
            f"{server.url}/datastore/image",
            params={"image": bad},
            files={"file": ("x.nii.gz", CT_LABEL.read_bytes())},
            timeout=60,
        ),
        "PUT /datastore/label ?image=": lambda: server.http("j1").put(
            f"{server.url}/datastore/label",
            params={"image": bad, "tag": "draft"},
            data={"params": '{"client_id": "j1"}'},
            files={"label": ("l.nii.gz", label)},
            timeout=60,
        ),
        "PUT /datastore/label ?tag=": lambda: server.http("j1").put(
            f"{server.url}/datastore/label",
            params={"image": CASE, "tag": bad or "\u0000"},
            data={"params": '{"client_id": "j1"}'},
            files={"label": ("l.nii.gz", label)},
            timeout=60,
        ),
        "POST /infer ?image=": lambda: server.http("j1").post(
            f"{server.url}/infer/unet", params={"image": bad or " "}, timeout=60
        ),
        "GET /datastore/image ?image=": lambda: server.http("j1").get(
            f"{server.url}/datastore/image", params={"image": bad or " "}, timeout=60
        ),
        "review API /cases/{id}/claim": lambda: server.api(
            "j1", "POST", f"/cases/{requests.utils.quote(bad, safe='')}/claim"
        ),
        "review API POST /users name": lambda: server.api(
            "boss", "POST", "/users", json={"name": bad, "role": "junior"}
        ),
    }
    if not bad:
        del attempts["PUT /datastore/image ?image="]  # no id given: MONAI Label names the scan after its file
    for path, call in attempts.items():
        reply = call()
        assert record(path, f"id {kind}", reply.status_code, reply.text), (path, reply.status_code, reply.text[:200])
    assert snapshot(server, service) == before
    assert server.process.alive()


JSON_BODIES = {
    "2 MB body": lambda: json.dumps({"votes": [], "default": "approve", "pad": "x" * (2 << 20)}),
    "100,000 nested arrays": lambda: "[" * 100_000 + "]" * 100_000,
    "a list, not an object": lambda: "[1, 2, 3]",
    "not UTF-8": lambda: b'{"votes": "\xff\xfe"}',
    "truncated JSON": lambda: '{"votes": [{"organ": 1, "decis',
    "votes not a list": lambda: json.dumps({"votes": "approve"}),
    "organ 99": lambda: json.dumps({"votes": [{"organ": 99, "decision": "approve"}]}),
    "decision unknown": lambda: json.dumps({"votes": [{"organ": 1, "decision": "maybe"}]}),
    "NaN point": lambda: (
        '{"votes": [{"organ": 1, "decision": "changes_requested", "comment": "x", "point_world": [NaN, 1, 2]}]}'
    ),
    "comment of 100 kB": lambda: json.dumps(
        {"votes": [{"organ": 1, "decision": "changes_requested", "comment": "x" * 100_000}]}
    ),
}


def test_malformed_and_oversized_json(bench):
    server, service, _, _ = bench
    case = "json_case"
    service.workflow.record_prelabel(case, CT_LABEL, "prior", {})
    service.workflow.claim(service.accounts.by_name("j1"), case)
    service.workflow.save_version(service.accounts.by_name("j1"), case, CT_LABEL, submit=True)
    reader = next(
        a["user"] for a in server.api("boss", "GET", f"/cases/{case}").json()["assignees"] if a["duty"] == "review"
    )
    for name, make in JSON_BODIES.items():
        body = make()
        reply = server.api(
            reader, "POST", f"/cases/{case}/reviews", data=body, headers={"Content-Type": "application/json"}
        )
        assert record("POST /review/api/cases/{id}/reviews", name, reply.status_code, reply.text), (
            name,
            reply.text[:200],
        )
    big = json.dumps({"client_id": "j1", "pad": "x" * (2 << 20)})
    reply = server.http("j1").put(
        f"{server.url}/datastore/label",
        params={"image": CASE, "tag": "draft"},
        data={"params": big},
        files={"label": ("l.nii.gz", CT_LABEL.read_bytes())},
        timeout=60,
    )
    assert record("PUT /datastore/label params", "2 MB params", reply.status_code, reply.text), reply.text[:200]
    detail = server.api("boss", "GET", f"/cases/{case}").json()
    assert detail["state"] == "in_review" and not any(detail["votes"].values()), detail["votes"]
    assert server.process.alive()


@pytest.mark.parametrize("kind", ["no-position", "truncated-file"])
def test_bad_dicom_series_through_the_import_command(bench, shared, kind, tmp_path):
    make = {"no-position": dicom_without_positions, "truncated-file": dicom_truncated_file}[kind]
    series = make(shared / "dicom" / "ts_ct_series_uncompressed", tmp_path / "series")
    studies = tmp_path / "studies"
    done = import_command(series, studies)
    output = (done.stdout + done.stderr).strip()
    refused = done.returncode != 0 or "skipped 1" in output
    record("import command (DICOM)", f"DICOM {kind}", 400 if refused else 0, output[-300:])
    assert refused and "series" in output.lower(), output
    assert not list(studies.glob("*.nii*"))
