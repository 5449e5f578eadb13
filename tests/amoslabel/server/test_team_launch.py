"""``serve-team`` as a team starts it on its own pre-labelled scans: ``--labels-as prelabel``, two app servers on a
private PostgreSQL behind HAProxy, and the juniors' Next Sample handing the pre-labels out through the balancer. And
``serve``/``serve-team`` given a studies folder imported already: served where it is, nothing imported again."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from amoslabel.server.launch import prepare_studies
from tests.amoslabel.server.test_first_start import _wait_for_banner
from tests.conftest import ROOT, amoslabel_command, free_port, login

SCAN = "ct/ts_abdomen_ct_small"


def prelabelled_folder(shared: Path, root: Path, cases) -> Path:
    """A plain NIfTI folder as a team brings it: each scan with its label beside it (``case_label.nii.gz``)."""
    folder = root / "scans"
    folder.mkdir()
    for case in cases:
        (folder / f"{case}.nii.gz").symlink_to(shared / f"{SCAN}.nii.gz")
        (folder / f"{case}_label.nii.gz").symlink_to(shared / f"{SCAN}_label.nii.gz")
    return folder


def test_a_team_starts_on_prelabelled_scans_and_the_juniors_get_them_through_haproxy(shared, tmp_path):
    workspace = Path(tempfile.mkdtemp(prefix="amos-team-run-"))
    workspace.chmod(0o755)  # the private PostgreSQL runs as the postgres user below it
    scans = prelabelled_folder(shared, tmp_path, ["liver_a", "liver_b"])
    port = free_port()
    command = [sys.executable, "-m", "amoslabel", "serve-team", str(scans), "--labels-as", "prelabel"]
    command += ["--servers", "2", "--review-workers", "0", "--port", str(port), "--workspace", str(workspace)]
    command += ["--conf", "preset", "cpu-fast", "--conf", "active_learning", "false"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = _wait_for_banner(process)
        password = re.search(r"^ {4}admin +admin +(\S+)$", printed, re.MULTILINE).group(1)
        url = f"http://127.0.0.1:{port}"  # HAProxy
        assert "2 app servers" in printed and url in printed
        admin = login(url, tmp_path, "admin", password)
        finals = [i for i, e in admin.datastore()["objects"].items() if "final" in e.get("labels", {})]
        assert finals == []  # nothing came in as training data

        token = requests.post(f"{url}/auth/token", data={"username": "admin", "password": password}, timeout=30)
        as_admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
        handed = {}
        for junior in ("junior1", "junior2"):  # the admin adds the juniors, as the README says
            made = requests.post(
                f"{url}/review/api/users", json={"name": junior, "role": "junior"}, headers=as_admin, timeout=30
            )
            assert made.status_code == 201, made.text
            secret = made.json()["token"]
            sample = login(url, tmp_path, junior, secret).next_sample("review_queue", {})
            case = requests.get(
                f"{url}/review/api/cases/{sample.get('id')}", headers={"Authorization": f"Bearer {secret}"}, timeout=30
            ).json()
            assert case["state"] == "with_junior" and case["versions"][0]["kind"] == "prelabel", case
            handed[junior] = sample["id"]
        assert sorted(handed.values()) == ["liver_a", "liver_b"]  # each junior got a pre-labelled scan of their own
    finally:
        process.terminate()
        process.wait(120)


def test_an_imported_folder_is_served_where_it_is(shared, tmp_path):
    from amoslabel.data.importer import import_source

    studies = tmp_path / "studies"
    import_source(prelabelled_folder(shared, tmp_path, ["liver_a"]), studies, "prelabel", link_images=True)
    before = sorted(p.relative_to(studies) for p in studies.rglob("*"))
    workspace = tmp_path / "workspace"
    assert prepare_studies(str(studies), workspace, "final") == str(studies.resolve())
    assert not workspace.exists()  # no copy
    assert sorted(p.relative_to(studies) for p in studies.rglob("*")) == before  # nothing imported again


def test_labels_as_takes_final_or_prelabel_only():
    for command in ("serve", "serve-team"):
        done = amoslabel_command(command, "--labels-as", "draft")
        assert done.returncode == 2 and "invalid choice: 'draft'" in done.stderr, done.stderr
