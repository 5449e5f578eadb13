"""`make run`'s first start, as a newcomer meets it: the run command prints working credentials, 3D Slicer's client
logs in with them, every role has work at once, the README's "Your first case" goes from Next Sample to final as
written (a junior in Slicer's client class, the seniors in Chromium), and Ctrl-C ends it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from playwright.sync_api import sync_playwright

from amoslabel.config import load_config
from amoslabel.server.first_start import first_start
from review.auth import Principal
from review.queries import queue
from review.service import ReviewService
from tests.conftest import CHROMIUM_FLAGS, ROOT, free_port, login, page_session

FIRST_CASE = "ts_abdomen_ct_small"  # the README's "Your first case"
SENIORS = ("senior1", "senior2", "senior3")
SPLEEN = 1


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


@dataclass
class Demo:
    process: subprocess.Popen
    url: str
    printed: str
    credentials: Dict[str, str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`make run`'s command, in a session of its own as a terminal runs it (Ctrl-C goes to the whole group)."""
    workspace = tmp_path_factory.mktemp("first-start")
    port = free_port()
    command = [sys.executable, "-m", "amoslabel", "serve", "--port", str(port), "--workspace", str(workspace)]
    command += ["--conf", "preset", "cpu-fast"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        printed = _wait_for_banner(process)
        credentials = dict(re.findall(r"^ {4}(\w+) +(?:admin|junior|senior) +(\S+)$", printed, re.MULTILINE))
        yield Demo(process, f"http://127.0.0.1:{port}", printed, credentials)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)


def test_the_run_command_prints_working_credentials_and_every_role_has_work(demo, tmp_path):
    printed, credentials, url = demo.printed, demo.credentials, demo.url
    assert set(credentials) == {"admin", "junior", *SENIORS}, printed
    assert "3D Slicer" in printed and url in printed
    assert requests.get(f"{url}/info/", timeout=30).status_code == 401  # auth is on

    junior = login(url, tmp_path, "junior", credentials["junior"], client_id="user-xyz")  # Slicer's default id
    assert junior.next_sample("review_queue", {})["id"] == FIRST_CASE  # pre-labelled, routed to them
    senior = login(url, tmp_path, "senior1", credentials["senior1"])
    assert senior.next_sample("review_queue", {})["id"] == "ts_ct_series"  # submitted by the demo junior
    admin = login(url, tmp_path, "admin", credentials["admin"])
    finals = [i for i, e in admin.datastore()["objects"].items() if "final" in e.get("labels", {})]
    assert sorted(finals) == ["ts_abdomen_ct", "ts_abdomen_mr_small"]  # training data
    page = page_session(url, "senior2", credentials["senior2"])  # the review pages take the same name and password
    assert "ts_ct_series" in page.get(f"{url}/review/", timeout=30).text


def _seniors_vote_in_chromium(demo: Demo, sent_back: Dict[str, tuple]) -> None:
    """Each senior as the README's script says: log in on the review pages, open the case from the queue, decide
    (``sent_back``: the organ, comment and point a senior asks changes for), everything else approved, send."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            for senior in SENIORS:
                page = browser.new_context().new_page()
                page.goto(f"{demo.url}/review/login")
                page.fill("#username", senior)
                page.fill("#token", demo.credentials[senior])
                page.click("#login")
                page.wait_for_url(f"{demo.url}/review/")
                page.click(f"a:text-is('{FIRST_CASE}')")
                page.wait_for_selector("#vote-form")
                if senior in sent_back:
                    organ, comment, point = sent_back[senior]
                    page.select_option(f"#vote_{organ}", "changes_requested")
                    page.fill(f"#comment_{organ}", comment)
                    page.fill(f"#point_{organ}", ", ".join(f"{v:.1f}" for v in point))
                page.select_option("#default", "approve")
                page.click("#send-votes")
                page.wait_for_load_state()
                assert page.locator("#vote-form").count() == 0, page.content()[:2000]  # every organ decided
                page.context.close()
        finally:
            browser.close()


def _review_api(demo: Demo, who: str, path: str):
    """``GET /review/api<path>`` as ``who`` (logged in with their password, as Slicer does)."""
    form = {"username": who, "password": demo.credentials[who]}
    token = requests.post(f"{demo.url}/auth/token", data=form, timeout=30).json()["access_token"]
    reply = requests.get(f"{demo.url}/review/api{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.ok, reply.text
    return reply.json()


def test_your_first_case_goes_from_next_sample_to_final_as_the_readme_says(demo, tmp_path):
    junior = login(demo.url, tmp_path, "junior", demo.credentials["junior"], client_id="user-xyz")
    admin = login(demo.url, tmp_path, "admin", demo.credentials["admin"])
    sample = junior.next_sample("review_queue", {})
    assert sample["id"] == FIRST_CASE and "feedback" not in sample, str(sample)  # a first round: nothing asked yet
    prelabel = sitk.ReadImage(junior.download_label(FIRST_CASE, "original"))
    voxels = sitk.GetArrayFromImage(prelabel)

    # the junior corrects and presses Submit Label (a save with the tag `final`)
    corrected = tmp_path / "corrected.nii.gz"
    edited = voxels.copy()
    spleen = np.argwhere(edited == SPLEEN)
    edited[tuple(spleen[: len(spleen) // 3].T)] = 0  # a slip: part of the spleen erased
    _write_like(edited, prelabel, corrected)
    draft = junior.save_label(FIRST_CASE, str(corrected), tag="draft")
    assert draft["submitted"] is False and draft["state"] == "with_junior" and draft["with"] == ["junior"], draft
    answer = junior.save_label(FIRST_CASE, str(corrected))
    assert answer["submitted"] is True and answer["state"] == "in_review" and answer["round"] == 1, answer
    assert sorted(answer["with"]) == list(SENIORS) and "Submitted version" in answer["message"]
    assert answer["version"] > draft["version"]

    # the seniors in Chromium: senior1 asks for the spleen at a point inside it
    index = [int(v) for v in spleen[len(spleen) // 2][::-1]]  # numpy z,y,x -> ITK i,j,k
    point = prelabel.TransformIndexToPhysicalPoint(index)
    comment = "the upper pole of the spleen is missing"
    _seniors_vote_in_chromium(demo, {"senior1": (SPLEEN, comment, point)})
    assert _review_api(demo, "admin", f"/cases/{FIRST_CASE}")["state"] == "with_junior"

    # sent back: the junior's queue says so first, and Next Sample carries the feedback
    (row,) = [r for r in _review_api(demo, "junior", "/queue")["cases"] if r["case_id"] == FIRST_CASE]
    assert row["why"] == "sent back: spleen (senior1)", row
    back = junior.next_sample("review_queue", {})
    assert back["id"] == FIRST_CASE and back["round"] == 2
    (organ,) = back["feedback"]["organs"]
    assert organ["organ_name"] == "spleen" and organ["decisions"] == {"senior1": "changes_requested"}
    (note,) = organ["comments"]
    assert note["by"] == "senior1" and note["text"] == comment
    assert np.allclose(note["point_mm"], point, atol=0.1) and note["point_voxel"] == index

    # the fix, submitted again; every senior approves; the case becomes final (in the background)
    _write_like(voxels, prelabel, corrected)
    again = junior.save_label(FIRST_CASE, str(corrected))
    assert again["submitted"] is True and again["state"] == "in_review" and again["round"] == 2, again
    _seniors_vote_in_chromium(demo, {})
    deadline = time.time() + 60
    while "final" not in admin.datastore()["objects"][FIRST_CASE].get("labels", {}):
        assert time.time() < deadline, "the consensus label was not published as final"
        time.sleep(0.5)


def _write_like(array: np.ndarray, like: sitk.Image, path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))


def test_ctrl_c_ends_the_run_command_cleanly(demo):
    """Ctrl-C in a terminal: SIGINT to the whole group; a clean shutdown exits 0 (make said "Error 241")."""
    os.killpg(demo.process.pid, signal.SIGINT)
    rest = demo.process.communicate(timeout=120)[0]
    assert demo.process.returncode == 0, rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]


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
