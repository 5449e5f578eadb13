"""The reviewer queue pages in a real browser (Debian's chromium, headless, driven by playwright) against a real
server: a junior submits, a senior asks for changes with a comment at a point, the junior's open queue updates by
itself, the junior fixes and resubmits, three seniors approve, the case page shows it final. Screenshots of the
queue, the case page and the overview go to test-output/web/. Also: a comment with markup renders as text, a form
without its CSRF token is refused and changes nothing, and a junior cannot open the overview."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import requests
import SimpleITK as sitk

from amoslabel.workspace import Workspace
from models.versions import ModelStore
from tests.conftest import CHROMIUM_FLAGS, OUTPUT, ServerProcess
from tests.conftest import login as viewer_login
from tests.review.conftest import add_users

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-test.txt")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CASE = "web_ct"
PANCREAS = 10
NEW = "web_mr"  # uploaded at the end
LIVE = "live_ct"  # uploaded by the live-state test
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> pancreas tail cut off'
FLAGS = CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def web(shared, tmp_path_factory):
    """A server of its own (one scan, routing to its one junior), its users and a browser."""
    studies = tmp_path_factory.mktemp("web-studies")
    (studies / f"{CASE}.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    tokens = add_users(
        studies, [("ana", "junior"), ("sam", "senior"), ("sol", "senior"), ("sue", "senior"), ("ada", "admin")]
    )
    # retraining after every new consensus final, one short unet run (checked at the end of the round trip); no click
    # model, which would retrain too (its training is tested in tests/app/test_clicks.py)
    conf = {"preset": "cpu-fast", "models": "unet", "clicks": "false", "retrain_after_finals": "1", "max_epochs": "1"}
    server = ServerProcess(studies, tmp_path_factory.mktemp("web-server"), conf | {"iterations_per_epoch": "2"})
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/system-packages.sh)")
    try:
        server.wait_ready()
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            yield server, tokens, browser, studies
            browser.close()
    finally:
        server.stop()


def login(browser, server, token):
    # bypass_csp: the pages' Content-Security-Policy would also stop a smuggled script; switched off here so that
    # the markup test below proves the escaping itself (and playwright's own evaluation needs it)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.goto(f"{server.url}/review/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(re.compile(r".*/review/$"))
    return page


def vote(page, server, default, organ=None, decision=None, comment="", point=""):
    page.goto(f"{server.url}/review/cases/{CASE}")
    if page.locator("#claim").count():
        page.click("#claim")
    if organ:
        page.select_option(f"#vote_{organ}", decision)
        page.fill(f"#comment_{organ}", comment)
        page.fill(f"#point_{organ}", point)
    page.select_option("#default", default)
    page.click("#send-votes")
    page.wait_for_load_state()


def shot(page, name):
    folder = OUTPUT / "web"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_review_round_trip_in_the_browser(web, shared, tmp_path):
    server, tokens, browser, studies = web
    client = viewer_login(server.url, tmp_path, "ada", tokens["ada"])
    client.infer("unet", CASE, {})  # no trained model yet: the atlas prior pre-labels, and the case goes to ana

    junior = login(browser, server, tokens["ana"])
    row = junior.locator(f"tr[data-case='{CASE}']")
    assert row.count() == 1 and "with junior" in row.inner_text()
    shot(junior, "queue-junior")
    junior.click(f"a:text('{CASE}')")
    for view in ("axial", "coronal", "sagittal"):  # server-rendered previews arrived and decoded
        junior.wait_for_function(f"document.querySelector(\"img[data-view='{view}']\")?.naturalWidth > 0")
    junior.click("#submit")
    junior.wait_for_url(re.compile(r".*/review/$"))
    assert junior.locator(f"tr[data-case='{CASE}']").count() == 0  # with the reviewers now
    junior.evaluate("window.__still_this_page = true")

    # a senior asks for changes on the pancreas, at a point of the scan, with markup in the comment
    image = sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"))
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    point = ", ".join(f"{v:.1f}" for v in centre)
    sam = login(browser, server, tokens["sam"])
    assert sam.locator(f"tr[data-case='{CASE}']").count() == 1
    vote(sam, server, "approve", PANCREAS, "changes_requested", XSS, point)
    pancreas = sam.locator("tr[data-organ='pancreas']")
    assert "changes requested" in pancreas.inner_text()
    assert XSS in pancreas.locator(".comment .text").inner_text()  # shown as text ...
    assert sam.evaluate("window.__xss") is None  # ... and never run
    shot(sam, "case-changes-requested")

    assert (
        "default-src 'self'"
        in requests.get(f"{server.url}/review/login", timeout=30).headers["Content-Security-Policy"]
    )

    # CSRF: the same session cookie without the form's token changes nothing
    cookies = {c["name"]: c["value"] for c in sam.context.cookies()}
    for form in ({}, {"csrf_token": "forged"}):
        reply = requests.post(
            f"{server.url}/review/cases/{CASE}/review", data={**form, "default": "approve"}, cookies=cookies, timeout=30
        )
        assert reply.status_code == 400 and "security token" in reply.text
    assert "changes requested" in sam.locator("tr[data-organ='pancreas']").inner_text()

    for name in ("sol", "sue"):
        vote(login(browser, server, tokens[name]), server, "approve")

    # the junior's open queue shows the case back, without a reload
    junior.wait_for_selector(f"tr[data-case='{CASE}']", timeout=30000)
    assert junior.evaluate("window.__still_this_page") is True
    assert "with junior" in junior.locator(f"tr[data-case='{CASE}']").inner_text()
    junior.click(f"a:text('{CASE}')")
    comment = junior.locator("tr[data-organ='pancreas'] .comment")
    assert XSS in comment.locator(".text").inner_text()
    comment.locator("a.point").click()  # the viewer and the previews move to the point, in place
    junior.wait_for_url(re.compile(r".*[?&]at="))
    # the previews follow the point (without JavaScript the link reloads the page at it)
    junior.wait_for_function("document.querySelector(\"img[data-view='axial']\")?.naturalWidth > 0")
    assert "at=" in junior.locator("img[data-view='axial']").get_attribute("src")
    junior.click("#submit")
    junior.wait_for_url(re.compile(r".*/review/$"))

    # round 2, resubmitted unchanged: sol's and sue's approvals carry over (nothing of theirs changed, no form for
    # them); sam's one decision is the pancreas they asked about. sam's page follows the case to final by itself.
    sol = login(browser, server, tokens["sol"])
    sol.goto(f"{server.url}/review/cases/{CASE}")
    assert sol.locator("#vote-form").count() == 0
    assert "carried over" in sol.locator("tr[data-organ='liver']").inner_text()
    last = login(browser, server, tokens["sam"])
    last.goto(f"{server.url}/review/cases/{CASE}")
    assert last.locator("#vote-form tbody tr:not(.carried)").count() == 1  # the pancreas alone waits for sam
    vote(last, server, "approve")
    last.wait_for_selector("#case-state[data-state='final']", timeout=60000)
    shot(last, "case-final")

    admin = login(browser, server, tokens["ada"])
    admin.goto(f"{server.url}/review/overview")
    for img in admin.locator(".overview img").all():
        img.scroll_into_view_if_needed()
    admin.wait_for_function("[...document.querySelectorAll('.overview img')].every(i => i.naturalWidth > 0)")
    assert "final" in admin.locator("table").first.inner_text()
    shot(admin, "overview")

    # the background scorer (atlas prior as its member: no network is trained here) saved the case's attention map
    # and gave the case a priority with its reason: the toggle overlays it
    for _ in range(90):
        admin.goto(f"{server.url}/review/cases/{CASE}")
        if admin.locator("#attention-toggle").count():
            break
        admin.wait_for_timeout(2000)
    admin.check("#attention-toggle")
    admin.wait_for_function(
        "[...document.querySelectorAll('img.preview')].every(i => i.src.includes('overlay=attention') && i.complete"
        " && i.naturalWidth > 0)"
    )
    shot(admin, "case-attention")
    detail = requests.get(
        f"{server.url}/review/api/cases/{CASE}", headers={"Authorization": f"Bearer {tokens['ada']}"}, timeout=30
    ).json()
    assert "attention" in detail["priority_reason"]  # scored (the prior alone flags little: no network to disagree)

    # a junior's session cannot open the overview
    refused = junior.goto(f"{server.url}/review/overview")
    assert refused.status == 403

    # retraining.after_new_finals = 1: the final label started a training run by itself; it published unet v1,
    # trained on this case. A scan uploaded meanwhile is scored in the background, and scored again with v1 as a
    # member once v1 exists (final cases are not scored: there is nothing left to choose them for)
    client.upload_image(str(shared / "mr/ts_abdomen_mr_small.nii.gz"), NEW)
    store = ModelStore(Workspace(studies).models(), "unet")
    database = Workspace(studies).review_db
    members = {}
    for _ in range(150):
        if store.champion() is not None:
            with sqlite3.connect(database) as db:
                row = db.execute("SELECT members FROM case_scores WHERE case_id = ?", (NEW,)).fetchone()
            members = json.loads(row[0]) if row else {}
            if "unet" in members:
                break
        time.sleep(2)
    champion = store.champion()
    assert champion is not None, "no training started after the final label:\n" + server.tail()
    assert CASE in champion.meta["training_cases"]
    assert members.get("unet") == champion.number, members


def test_a_case_page_follows_a_change_made_before_its_first_poll(web, shared, tmp_path):
    """The page polls a stamp of the case's history; the stamp it was rendered with is its first, so a change that
    lands between rendering and the first poll still updates the page (the last vote's finalising did, and the page
    stayed at ``consensus``)."""
    server, tokens, browser, studies = web
    client = viewer_login(server.url, tmp_path, "ada", tokens["ada"])
    client.upload_image(str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"), LIVE)
    client.infer("unet", LIVE, {})  # pre-labelled: to ana, the one junior
    junior = login(browser, server, tokens["ana"])
    moved = []

    def submit_then_poll(route):
        if not moved:  # the junior submits (from another tab) before this page's first look at the stamp
            reply = requests.post(
                f"{server.url}/review/api/cases/{LIVE}/submit",
                headers={"Authorization": f"Bearer {tokens['ana']}"},
                timeout=60,
            )
            moved.append(reply.status_code)
        route.continue_()

    junior.route(re.compile(rf".*/review/cases/{LIVE}/live$"), submit_then_poll)
    junior.goto(f"{server.url}/review/cases/{LIVE}")  # rendered with the case with ana
    junior.wait_for_selector("#case-state[data-state='in_review']", timeout=30000)
    assert moved == [200]
