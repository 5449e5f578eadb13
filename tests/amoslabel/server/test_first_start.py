"""`make run`'s first start, as a newcomer meets it: the run command prints working credentials, 3D Slicer's client
logs in with them, and every role has work at once."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import requests

from amoslabel.config import load_config
from amoslabel.server.first_start import first_start
from review.auth import Principal
from review.queries import queue
from review.service import ReviewService
from tests.conftest import ROOT, free_port, login


def _wait_for_banner(process: subprocess.Popen, timeout: float = 300) -> str:
    """What the run command printed, up to the closing line of its banner."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("the run command stopped:\n" + "".join(lines[-40:]))
        lines.append(line)
        if len([x for x in lines if x.startswith("=" * 78)]) == 2:
            return "".join(lines)
    raise AssertionError("no banner:\n" + "".join(lines[-40:]))


def test_the_run_command_prints_working_credentials_and_every_role_has_work(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "amoslabel", "serve", "--port", str(port), "--workspace", str(tmp_path)]
    command += ["--conf", "preset", "cpu-fast"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = _wait_for_banner(process)
        credentials = dict(re.findall(r"^ {4}(\w+) +(?:admin|junior|senior) +(\S+)$", printed, re.MULTILINE))
        assert set(credentials) == {"admin", "junior", "senior1", "senior2", "senior3"}, printed
        assert "3D Slicer" in printed and f"http://127.0.0.1:{port}" in printed
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/info/", timeout=30).status_code == 401  # auth is on

        junior = login(url, tmp_path, "junior", credentials["junior"], client_id="user-xyz")  # Slicer's default id
        assert junior.next_sample("review_queue", {})["id"] == "ts_abdomen_ct_small"  # pre-labelled, routed to them
        senior = login(url, tmp_path, "senior1", credentials["senior1"])
        assert senior.next_sample("review_queue", {})["id"] == "ts_ct_series"  # submitted by the demo junior
        admin = login(url, tmp_path, "admin", credentials["admin"])
        finals = [i for i, e in admin.datastore()["objects"].items() if "final" in e.get("labels", {})]
        assert sorted(finals) == ["ts_abdomen_ct", "ts_abdomen_mr_small"]  # training data
        page = requests.Session()  # the review pages take the same user name and password
        form = page.get(f"{url}/review/login", timeout=30).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        page.post(
            f"{url}/review/login",
            data={"username": "senior2", "token": credentials["senior2"], "csrf_token": csrf},
            timeout=30,
        )
        assert "ts_ct_series" in page.get(f"{url}/review/", timeout=30).text
    finally:
        process.terminate()
        process.wait(60)
    assert process.returncode is not None


def test_the_first_users_are_made_once(shared, tmp_path):
    from amoslabel.data.importer import import_source
    from amoslabel.server.first_start import DEMO_MANIFEST

    studies = tmp_path / "studies"
    import_source(DEMO_MANIFEST, studies, link_images=True, progress=False)
    config = load_config()
    made = first_start(config, studies, demo=True)
    assert [(c.name, c.role) for c in made][:2] == [("admin", "admin"), ("junior", "junior")]
    assert len({c.password for c in made}) == len(made) and all(len(c.password) >= 16 for c in made)
    assert first_start(config, studies, demo=True) == []  # a second start makes nobody and prints nothing
    service = ReviewService(config, str(studies))
    try:
        senior = service.accounts.by_name("senior3")
        assert [c["case_id"] for c in queue(service.workflow, senior)] == ["ts_ct_series"]
        assert service.accounts.login("junior", made[1].password).token
        assert queue(service.workflow, Principal(0, "nobody", "admin")) == []  # nothing escalated or stuck
    finally:
        service.store.dispose()
