"""OHIF as a full client of a real server on a real Orthanc, inside the private network namespace (conftest.py).

The viewer is served on its own port (:mod:`amoslabel.dicom.ohif`) with ``/dicom-web`` forwarded to the server's
``/dicom-web`` (:mod:`amoslabel.server.viewer_dicomweb`) with the browser's review session. Checked here without a
browser: who may read and store through it, what a store becomes (a label version by the logged-in user, a SEG
named after it in Orthanc), what is refused (and that nothing is stored then), and that each version a reader needs
reaches Orthanc as a SEG. ``test_ohif_browser.py`` does the same with the real viewer in Chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk

from amoslabel.data.dicomweb import write_coded_seg
from amoslabel.data.locations import cache_root
from amoslabel.dicom.naming import PRELABEL_PREFIX, SegKind, seg_uids
from amoslabel.dicom.orthanc import OrthancProcess, count_instances, fetch_series, qido, value, write_config
from amoslabel.dicom.seg import read_seg
from amoslabel.dicom.send import send_to_dicomweb
from amoslabel.dicom.stow import write_stow
from amoslabel.server.dicomweb_launch import OHIF_URL_ENV
from amoslabel.server.viewer_dicomweb import SAVED_HEADER
from tests.conftest import CHROMIUM_FLAGS, NO_SCORER, OUTPUT, ServerProcess, free_port, login
from tests.dicomweb.conftest import series_label_on
from tests.dicomweb.ohif_driver import (
    BRUSH_MM,
    VIEWPORT_POSITION,
    choose_tool,
    dismiss_banners,
    distance_to_polyline,
    make_active,
    open_seg,
    store_segmentation,
    stroke,
    stroke_plan,
    voxel_centres,
    wait_for_ct,
)
from amoslabel.config import load_config
from review.schema import Case, LabelVersion, User
from review.service import ReviewService
from tests.review.conftest import add_users

PEOPLE = [("jun", "junior"), ("jun2", "junior"), ("sen1", "senior"), ("sen2", "senior"), ("boss", "admin")]
SERIES_DESCRIPTION = "0008103E"


class Site:
    """Orthanc, the server on its DICOMweb root, the OHIF viewer's port in front of the server, and the team."""

    def __init__(self, orthanc, server, ohif, tokens, case, study, root, unlabelled):
        self.orthanc, self.server, self.ohif, self.tokens = orthanc, server, ohif, tokens
        self.case, self.study, self.root = case, study, root
        self.unlabelled = unlabelled  # a second series, never pre-labelled: (study, series)

    def session(self, name: str) -> requests.Session:
        """A browser's session: logged in on the review login page; the cookie then goes to the viewer's port."""
        http = requests.Session()
        page = http.get(f"{self.server.url}/review/login", timeout=30).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form = {"username": name, "token": self.tokens[name], "csrf_token": csrf}
        assert http.post(f"{self.server.url}/review/login", data=form, timeout=30).ok
        assert "amos_review" in http.cookies
        return http

    def api(self, name: str, method: str, path: str, **kwargs):
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return requests.request(method, f"{self.server.url}/review/api{path}", headers=headers, timeout=60, **kwargs)

    def versions(self):
        return self.api("boss", "GET", f"/cases/{self.case}").json()["versions"]

    def segs(self):
        return {
            value(s, "0020000E"): str(value(s, SERIES_DESCRIPTION))
            for s in qido(self.orthanc.dicomweb, "series", Modality="SEG")
        }


@pytest.fixture(scope="module")
def site(netns, shared, ohif_dist, tmp_path_factory):
    from amoslabel.dicom.ohif import OhifServer

    tmp = tmp_path_factory.mktemp("ohif-client")
    orthanc = OrthancProcess(write_config(tmp / "orthanc", free_port()))
    orthanc.wait_ready()
    (sent,) = send_to_dicomweb(shared / "dicom" / "ts_ct_series_uncompressed", orthanc.url, tmp / "importer")
    (other,) = send_to_dicomweb(shared / "dicom" / "chaos_ct_series", orthanc.url, tmp / "importer")
    cache = tmp / "cache"
    root = cache_root(orthanc.dicomweb, str(cache))
    root.mkdir(parents=True)
    tokens = add_users(root, PEOPLE)
    ohif_port = free_port()
    os.environ["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(cache)
    env = {OHIF_URL_ENV: f"http://127.0.0.1:{ohif_port}"}
    server = ServerProcess(orthanc.dicomweb, tmp, {"preset": "cpu-fast", **NO_SCORER}, env=env)
    ohif = OhifServer(server.url, ohif_dist, port=ohif_port, credentials=True).start()
    try:
        server.wait_ready()
        admin = login(server.url, tmp, "boss", tokens["boss"])
        admin.infer("unet", sent.series_uid, {})  # the atlas prior's pre-label: nothing is trained
        junior = login(server.url, tmp, "jun", tokens["jun"])
        assert junior.next_sample("review_queue", {})["id"] == sent.series_uid
        unlabelled = (other.study_uid, other.series_uid)
        yield Site(orthanc, server, ohif, tokens, sent.series_uid, sent.study_uid, root, unlabelled)
    finally:
        os.environ.pop("MONAI_LABEL_DICOMWEB_CACHE_PATH", None)
        ohif.stop()
        server.stop()
        orthanc.stop()


SHOTS = OUTPUT / "ohif"


class Browser:
    """Debian's Chromium, one context per user, each logged in on the review login page (its session cookie is
    then sent to the viewer's port too)."""

    def __init__(self, chromium, site: Site):
        self.chromium, self.site, self.console = chromium, site, []

    def page(self, name: str):
        context = self.chromium.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: self.console.append(f"{name} {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"{name} pageerror: {e}"))
        page.goto(f"{self.site.server.url}/review/login")
        page.fill("#username", name)
        page.fill("#token", self.site.tokens[name])
        page.click("#login")
        page.wait_for_url(f"{self.site.server.url}/review/", timeout=30000)
        return page


@pytest.fixture(scope="module")
def browser(site):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-test.txt")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_FLAGS
        )
        driver = Browser(chromium, site)
        try:
            yield driver
        finally:
            chromium.close()
            (SHOTS / "client-console.log").write_text("\n".join(driver.console))


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _version_file(site: Site, index: int) -> str:
    """The file of the case's ``index``-th label version (the store's rows name it)."""
    import sqlite3

    from amoslabel.workspace import Workspace

    with sqlite3.connect(Workspace(site.root).review_db) as db:
        rows = db.execute("SELECT path FROM label_versions WHERE case_id = ? ORDER BY id", (site.case,)).fetchall()
    return rows[index][0]


def viewer_seg(site: Site, label: sitk.Image, tmp_path, name="viewer.dcm") -> pydicom.Dataset:
    """A SEG as a viewer would store it: on the case's series, with a description the user typed."""
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    path = write_coded_seg(str(tmp_path / "label.nii.gz"), site.root / site.case, tmp_path / name, "Jane's fix", False)
    return pydicom.dcmread(path)


def store(site: Site, http, instances, same_origin: bool = True):
    body, content_type = write_stow(instances)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if same_origin:
        headers["Sec-Fetch-Site"] = "same-origin"  # what a browser adds to the viewer's own request
    return http.post(f"{site.ohif.url}/dicom-web/studies", data=body, headers=headers, timeout=300)


def edited(site: Site, shared) -> sitk.Image:
    """The real label of the series, with a block of liver erased and a block of spleen painted outside any organ."""
    image = sitk.ReadImage(str(site.root / f"{site.case}.nii.gz"))
    label = series_label_on(image, shared)
    array = sitk.GetArrayFromImage(label)
    k = int(np.argmax((array == 6).sum(axis=(1, 2))))
    liver = np.argwhere(array[k] == 6)
    j, i = liver[len(liver) // 2]
    array[k, j - 5 : j + 5, i - 5 : i + 5][array[k, j - 5 : j + 5, i - 5 : i + 5] == 6] = 0
    array[k, 5:15, 5:15] = 1  # a corner of the field of view: air, no organ
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def test_reads_through_the_viewer_need_the_session_and_are_audited(site):
    series = f"{site.ohif.url}/dicom-web/studies/{site.study}/series"
    refused = requests.get(series, timeout=30)
    assert refused.status_code == 401 and b"0020000E" not in refused.content
    forged = requests.get(series, headers={"Cookie": "amos_review=forged"}, timeout=30)
    assert forged.status_code == 401
    reader = site.session("sen1")
    listed = reader.get(series, timeout=30)
    assert listed.ok and site.case in listed.text
    # retrieve URLs point back at the viewer's origin, so whatever OHIF follows goes through the gate too
    assert value(listed.json()[0], "00081190").startswith(f"{site.ohif.url}/dicom-web/")
    bearer = {"Authorization": f"Bearer {site.tokens['sen2']}"}
    assert requests.get(series, headers=bearer, timeout=30).ok
    history = site.api("boss", "GET", f"/cases/{site.case}/history").json()["events"]
    reads = {(e["actor"], e["reason"]) for e in history if e["action"] == "dicomweb_read"}
    assert {("sen1", f"DICOMweb read of {site.study}"), ("sen2", f"DICOMweb read of {site.study}")} <= reads


def test_refused_stores_store_nothing(site, shared, tmp_path):
    label = edited(site, shared)
    good = viewer_seg(site, label, tmp_path)
    before, versions = count_instances(site.orthanc.url), len(site.versions())

    def refused(http, instances, status, message, **kwargs):
        reply = store(site, http, instances, **kwargs)
        assert reply.status_code == status and re.search(message, reply.json()["detail"]), reply.text[:400]
        assert count_instances(site.orthanc.url) == before and len(site.versions()) == versions

    refused(requests.Session(), [good], 401, "")
    refused(site.session("jun2"), [good], 403, "jun2")  # another junior: not their case
    # nor may that junior follow the case's OHIF link (the study and version of a case not theirs)
    assert site.session("jun2").get(f"{site.server.url}/review/cases/{site.case}/ohif", timeout=30).status_code == 403
    refused(site.session("boss"), [good], 403, "needs junior or senior")
    refused(site.session("jun"), [good], 403, "page of this server", same_origin=False)  # another site's page

    unknown = viewer_seg(site, label, tmp_path, "unknown.dcm")
    unknown.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "123456789"
    refused(site.session("jun"), [unknown], 422, "none of the 15 AMOS organs")
    elsewhere = viewer_seg(site, label, tmp_path, "elsewhere.dcm")
    elsewhere.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.5"
    refused(site.session("jun"), [elsewhere], 422, "not a case of this server")
    empty = viewer_seg(site, label, tmp_path, "empty.dcm")
    empty.PixelData = bytes(len(empty.PixelData))
    refused(site.session("jun"), [empty], 422, "paints no voxel")
    ct = pydicom.dcmread(sorted((site.root / site.case).iterdir())[0])
    refused(site.session("jun"), [ct], 415, "only segmentations")
    assert site.server.alive()


def test_a_junior_corrects_the_prelabel_in_ohif_and_stores_it(site, browser, tmp_path):
    """From the queue page to OHIF, the pre-label SEG opened for editing, a region of liver painted and part of
    another organ erased with the mouse, stored with OHIF's own Export -> DICOM SEG: a draft version by the junior
    that differs from the pre-label exactly inside the brush's footprint, and a SEG named after it in Orthanc."""
    page = browser.page("jun")
    page.goto(f"{site.server.url}/review/")
    page.locator(f"tr[data-case='{site.case}'] a.ohif").click()
    page.wait_for_url(f"{site.ohif.url}/segmentation*", timeout=60000)
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=90000)
    dismiss_banners(page)
    wait_for_ct(page, 20)
    rows = open_seg(page, PRELABEL_PREFIX)
    assert "liver" in rows and len(rows) >= 5, rows
    shot(page, "junior-1-prelabel")

    prelabel = sitk.ReadImage(_version_file(site, 0))
    ct = sitk.ReadImage(str(site.root / f"{site.case}.nii.gz"))
    make_active(page, "liver")
    time.sleep(1)  # choosing a segment jumps to its centre slice
    k = prelabel.TransformPhysicalPointToIndex([float(v) for v in page.evaluate(VIEWPORT_POSITION)])[2]
    paint, erase, target = stroke_plan(prelabel, ct, k)
    choose_tool(page, "Brush")
    make_active(page, "liver")  # hydration can still reset the active segment
    stroke(page, paint)
    choose_tool(page, "Eraser")
    stroke(page, erase)
    page.evaluate("() => window.cornerstone.getEnabledElements().forEach(e => e.viewport.render())")
    time.sleep(3)  # software WebGL: let the edited labelmap be drawn before the picture
    shot(page, "junior-2-edited")
    toast = store_segmentation(page)
    shot(page, "junior-3-stored")
    assert "saved successfully" in toast, toast

    newest = site.versions()[-1]
    assert (newest["kind"], newest["author"]) == ("junior", "jun")
    before = sitk.GetArrayFromImage(prelabel)
    after = sitk.GetArrayFromImage(sitk.ReadImage(_version_file(site, -1)))
    changed = np.argwhere(before != after)
    assert len(changed) and set(changed[:, 0]) == {k}, "edits outside the slice the strokes were on"
    painted = changed[(before[tuple(changed.T)] == 0) & (after[tuple(changed.T)] == 6)]
    erased = changed[(before[tuple(changed.T)] == target) & (after[tuple(changed.T)] == 0)]
    assert len(painted) + len(erased) == len(changed), "a change that is neither the painted liver nor the erasure"
    reach = BRUSH_MM + max(prelabel.GetSpacing()[:2])  # the footprint, and a voxel that it cuts
    assert len(painted) > 50 and distance_to_polyline(voxel_centres(prelabel, painted), paint).max() <= reach
    assert len(erased) > 20 and distance_to_polyline(voxel_centres(prelabel, erased), erase).max() <= reach
    print(f"OHIF edit: {len(painted)} voxels painted liver, {len(erased)} of organ {target} erased, on slice {k}")

    # in Orthanc under the version's name: no name the user typed, a pseudonym for the author
    series_uid, _ = seg_uids(site.case, newest["id"], SegKind.DRAFT)
    pseudonym = site.api("jun", "GET", "/me").json()["pseudonym"]
    assert site.segs()[series_uid] == f"AMOS Label draft v{newest['id']} round 1 by {pseudonym}"
    files = fetch_series(site.orthanc.dicomweb, site.study, series_uid, tmp_path / "draft")
    assert np.array_equal(sitk.GetArrayFromImage(read_seg(files[0], site.root / site.case)), after)

    # submitted on the case page: the submitted version reaches Orthanc as its own SEG, for the seniors
    page.goto(f"{site.server.url}/review/cases/{site.case}")
    page.click("#submit")
    page.wait_for_url(f"{site.server.url}/review/*", timeout=30000)
    submitted, _ = seg_uids(site.case, newest["id"], SegKind.SUBMITTED)
    deadline = time.time() + 60
    while submitted not in site.segs():
        assert time.time() < deadline, "the submitted version never reached Orthanc"
        time.sleep(0.5)
    assert site.segs()[submitted] == f"AMOS Label submitted v{newest['id']} round 1 by {pseudonym}"
    page.close()


def test_a_senior_opens_the_version_under_review_from_the_case_page(site, browser):
    detail = site.api("boss", "GET", f"/cases/{site.case}").json()
    assert detail["state"] == "in_review"
    page = browser.page("sen2")
    page.goto(f"{site.server.url}/review/cases/{site.case}")
    with page.expect_popup() if page.locator("#open-ohif[target]").count() else contextlib.nullcontext():
        page.click("#open-ohif")
    page.wait_for_url(f"{site.ohif.url}/segmentation*", timeout=60000)
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=90000)
    dismiss_banners(page)
    wait_for_ct(page, 20)
    browser_text = page.locator("[data-cy=studyBrowser-panel]").inner_text()
    name = f"AMOS Label submitted v{detail['current_version']}"
    assert name in browser_text and PRELABEL_PREFIX not in browser_text, browser_text  # the one version to review
    rows = open_seg(page, name)
    assert "liver" in rows
    page.wait_for_function("(name) => document.body.innerText.includes(name)", arg=name, timeout=30000)
    time.sleep(2)
    shot(page, "senior-submitted-version")
    assert name in page.inner_text("body")
    page.close()


def test_a_refused_store_shows_the_reason_in_ohif(site, browser):
    """An admin stores from OHIF (admins save no labels): OHIF's own notice shows the server's reason, and Orthanc
    and the case history are as before."""
    before, versions = count_instances(site.orthanc.url), len(site.versions())
    page = browser.page("boss")
    page.goto(f"{site.server.url}/review/cases/{site.case}/ohif")
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=90000)
    dismiss_banners(page)
    wait_for_ct(page, 20)
    open_seg(page, "AMOS Label submitted")
    outcome = store_segmentation(page, picture=SHOTS / "admin-store-refused.png")
    assert "403: store a SEG from OHIF (a label version): boss is an admin" in outcome, outcome
    assert count_instances(site.orthanc.url) == before and len(site.versions()) == versions
    page.close()


def test_a_reviewer_store_is_an_edit_and_the_case_page_opens_the_version_under_review(site, shared, tmp_path):
    """After the junior's submit (previous test): a senior's store is a reviewer edit (one SEG, named for it); the
    case page's OHIF link opens the study with the submitted version."""
    detail = site.api("boss", "GET", f"/cases/{site.case}").json()
    assert detail["state"] == "in_review"
    submitted, _ = seg_uids(site.case, detail["current_version"], SegKind.SUBMITTED)
    page = site.session("sen2").get(f"{site.server.url}/review/cases/{site.case}", timeout=60).text
    link = f"{site.ohif.url}/segmentation?StudyInstanceUIDs={site.study}&amp;SeriesInstanceUIDs={site.case},{submitted}"
    assert link in page, re.findall(r'href="([^"]*segmentation[^"]*)"', page)

    label = edited(site, shared)
    array = sitk.GetArrayFromImage(label)
    array[array == 1] = 0  # this reader removes the spleen altogether
    fixed = sitk.GetImageFromArray(array)
    fixed.CopyInformation(label)
    before = set(site.segs())
    reply = store(site, site.session("sen1"), [viewer_seg(site, fixed, tmp_path)])
    assert reply.status_code == 200, reply.text[:500]
    newest = site.versions()[-1]
    assert (newest["kind"], newest["author"]) == ("senior_edit", "sen1")
    # what the store did, beside the DICOM server's answer (its body is DICOM JSON)
    (saved,) = json.loads(reply.headers[SAVED_HEADER])
    assert (saved["version"], saved["submitted"], saved["state"]) == (newest["id"], False, "in_review"), saved
    pseudonym = site.api("sen1", "GET", "/me").json()["pseudonym"]
    time.sleep(2)  # a second SEG of the same version would come from the background sender
    added = {uid: text for uid, text in site.segs().items() if uid not in before}
    assert added == {
        seg_uids(site.case, newest["id"], SegKind.REVIEWER_EDIT)[0]: (
            f"AMOS Label reviewer edit v{newest['id']} round 1 by {pseudonym}"
        )
    }
    # seniors vote blind: sen2 has not voted in this round, so the viewer neither lists nor serves sen1's edit to them
    edit_uid = seg_uids(site.case, newest["id"], SegKind.REVIEWER_EDIT)[0]
    series = f"{site.ohif.url}/dicom-web/studies/{site.study}/series"
    seen_by = {
        name: [value(e, "0020000E") for e in site.session(name).get(series, timeout=60).json()]
        for name in ("sen2", "boss")
    }
    assert edit_uid not in seen_by["sen2"] and site.case in seen_by["sen2"], seen_by
    assert edit_uid in seen_by["boss"]
    assert site.session("sen2").get(f"{series}/{edit_uid}/metadata", timeout=60).status_code == 404
    # the author cannot review... and a store on a case one is not assigned to is refused (jun2 is no reviewer)
    assert store(site, site.session("jun"), [viewer_seg(site, fixed, tmp_path)]).status_code in (403, 409)


def test_monai_labels_own_ohif_panel_prelabels_a_case_under_auth(site, browser):
    """MONAI Label's OHIF build at /ohif/ with its MONAI Label panel: its requests carry no token, only the browser's
    review session (same origin); its auto-segment's pre-label starts the case's workflow as Slicer's does."""
    study, case = site.unlabelled
    assert site.api("boss", "GET", f"/cases/{case}").json()["state"] == "new"
    page = browser.page("jun2")
    page.goto(f"{site.server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=90000)
    dismiss_banners(page)
    page.locator("table.settingsTable button.actionButton").first.click()  # the panel's "connect"
    page.get_by_text("Auto-Segmentation", exact=True).wait_for(timeout=60000)
    with page.expect_response(lambda r: "/infer/" in r.url, timeout=600000) as answer:
        page.locator("button[title='Run Segmentation']").click()
    assert answer.value.status == 200, answer.value.text()[:300]
    disposition = answer.value.headers.get("content-disposition", "")
    assert ".nrrd" in disposition, disposition  # what the panel reads (it asked for result_extension .nrrd)
    page.get_by_text("Running Segmentation - Successful").first.wait_for(timeout=60000)
    time.sleep(3)
    shot(page, "monai-panel-auto-segment")
    detail = site.api("boss", "GET", f"/cases/{case}").json()
    assert detail["state"] in ("prelabelled", "with_junior")  # routed to a junior at once, by the routing setting
    assert [v["kind"] for v in detail["versions"]] == ["prelabel"]
    history = site.api("boss", "GET", f"/cases/{case}/history").json()["events"]
    assert any(e["actor"] == "jun2" and e["reason"].startswith("viewer /infer/") for e in history)
    page.close()


def test_monai_labels_ohif_panel_point_prompts_correct_the_case_as_its_junior(site, browser):
    """The panel's *Point Prompts* on the click model (type deepedit): the organ chosen in its list, a point placed
    on the canvas with the mouse, *Run*; the answer is saved as a label version by the case's junior, whose browser
    session made the request, with the point as the panel sent it (voxel indices on the scan)."""
    from bench.cohort import publish_random_unet

    study, case = site.unlabelled
    service = ReviewService(load_config(), str(site.root))
    try:
        with service.store.read() as s:
            junior = s.get(User, s.get(Case, case).junior_id).name  # routed at its pre-label (the test before)
    finally:
        service.store.dispose()
    # the click model answers on a segmentor's version (random weights here: the click rules decide what changes)
    publish_random_unet(site.root, "cpu-fast")
    before = [v["id"] for v in site.api("boss", "GET", f"/cases/{case}").json()["versions"]]
    page = browser.page(junior)
    page.goto(f"{site.server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=90000)
    dismiss_banners(page)
    page.locator("table.settingsTable button.actionButton").first.click()  # the panel's "connect"
    page.get_by_text("Point Prompts", exact=True).click()  # its tab: the probe tool becomes active
    page.locator("tr.clickable-row", has=page.get_by_text("liver", exact=True)).first.click()
    # the volume loaded (the axial viewport counts its slices) before a point can land on it; a click before
    # then places no point, and the panel fails on Run
    page.get_by_text(re.compile(r"\(\d+/78\)")).first.wait_for(timeout=120000)
    time.sleep(2)
    axial = page.locator("[data-viewport-uid=mpr-axial] canvas").first.bounding_box()  # the panel's layout is MPR
    page.mouse.click(axial["x"] + axial["width"] / 2, axial["y"] + axial["height"] / 2)  # the probe: a point
    time.sleep(1)
    with page.expect_response(lambda r: "/infer/deepedit" in r.url, timeout=600000) as answer:
        page.locator("button[title='Run PointPrompts']").click()
    assert answer.value.status == 200, answer.value.text()[:300]
    page.get_by_text("Running Inference for Point Prompts - Successful").first.wait_for(timeout=60000)
    time.sleep(3)
    shot(page, "monai-panel-point-prompt")
    versions = site.api("boss", "GET", f"/cases/{case}").json()["versions"]
    (new,) = [v for v in versions if v["id"] not in before]
    assert (new["kind"], new["author"]) == ("junior", junior)
    service = ReviewService(load_config(), str(site.root))
    try:
        with service.store.read() as s:
            info = dict(s.get(LabelVersion, new["id"]).info or {})
    finally:
        service.store.dispose()
    size = sitk.ReadImage(str(site.root / f"{case}.nii.gz")).GetSize()
    (point,) = info["clicks"]["clicks"]["liver"]  # the panel's point, voxel indices (i, j, k) on the scan
    assert info["via"] == "clicks" and all(0 <= v < n for v, n in zip(point, size)), info
    page.close()
