"""The case page's slice viewer (NiiVue, served by the server, under the pages' real Content-Security-Policy) in
Debian's headless Chromium against a real server: it loads the label version under review and the attention map,
scrolls, toggles organs, and a click sets the comment point, which the vote then carries in mm and in voxels, both
the clicked voxel's. Screenshots go to test-output/ohif/ with the other viewers'."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from scipy import ndimage

from tests.conftest import CHROMIUM_FLAGS, OUTPUT, ServerProcess
from tests.conftest import login as viewer_login
from tests.review.conftest import add_users

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-test.txt")
CASE = "viewer_ct"
PANCREAS = 10
ROOT = Path(__file__).resolve().parents[3]
SHOTS = OUTPUT / "ohif"
TILES = """() => { const s = window.devicePixelRatio || 1; const r = nv.canvas.getBoundingClientRect(); const out = {};
  for (const t of nv.screenSlices) { if (t.axCorSag > 2) continue; const [L, T, W, H] = t.leftTopWidthHeight;
    out[t.axCorSag] = [r.left + L / s, r.top + T / s, W / s, H / s]; }
  return out; }"""
CROSSHAIR = "() => Array.from(nv.frac2vox(nv.scene.crosshairPos))"


@pytest.fixture(scope="module")
def case_in_review(shared, tmp_path_factory):
    """A server with one scan, its attention map (a heat around the organs, as the scorer saves it), pre-labelled,
    submitted by the junior and routed to the one senior."""
    fetched = subprocess.run([str(ROOT / "scripts" / "fetch-niivue.sh")], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, f"scripts/fetch-niivue.sh failed (make test runs it first):\n{fetched.stderr}"
    studies = tmp_path_factory.mktemp("viewer-studies")
    scan = shared / "ct" / "ts_abdomen_ct_small.nii.gz"
    (studies / f"{CASE}.nii.gz").symlink_to(scan)
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz"))) > 0
    heat = np.clip(14 - 2 * ndimage.distance_transform_edt(~organs), 0, 14).astype(np.uint8) * ~organs  # levels 0-14
    attention = sitk.GetImageFromArray(heat)
    attention.CopyInformation(sitk.ReadImage(str(scan)))
    (studies / "labels" / "attention").mkdir(parents=True)
    sitk.WriteImage(attention, str(studies / "labels" / "attention" / f"{CASE}.nii.gz"))
    tokens = add_users(studies, [("ana", "junior"), ("sam", "senior"), ("ada", "admin")])
    # no background scorer: it would replace this attention map by its own (all zero with no trained network)
    conf = {"preset": "cpu-fast", "models": "unet", "active_learning": "false"}
    server = ServerProcess(studies, tmp_path_factory.mktemp("viewer-server"), conf)
    try:
        server.wait_ready()
        viewer_login(server.url, studies, "ada", tokens["ada"]).infer("unet", CASE, {})  # the atlas prior
        api = lambda name, method, path, **kw: requests.request(  # noqa: E731
            method,
            f"{server.url}/review/api{path}",
            headers={"Authorization": f"Bearer {tokens[name]}"},
            timeout=60,
            **kw,
        )
        assert api("ana", "POST", f"/cases/{CASE}/submit").ok
        yield server, tokens, api, scan, studies
    finally:
        server.stop()


def test_the_slice_viewer_places_the_comment_point(case_in_review):
    server, tokens, api, scan, studies = case_in_review
    detail = api("sam", "GET", f"/cases/{CASE}").json()
    assert detail["state"] == "in_review"
    SHOTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_FLAGS
        )
        page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()  # the real CSP: no bypass
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.goto(f"{server.url}/review/login")
        page.fill("#username", "sam")
        page.fill("#token", tokens["sam"])
        page.click("#login")
        page.wait_for_url(f"{server.url}/review/")
        page.goto(f"{server.url}/review/cases/{CASE}")
        if page.locator("#claim").count():
            page.click("#claim")
        page.wait_for_selector("#viewer[data-ready]", state="attached", timeout=120000)
        assert page.get_attribute("#viewer", "data-ready") == "1", page.get_attribute("#viewer", "data-error")
        assert page.locator("#toggle-attention").count() == 1
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(_version_path(studies, detail["current_version"]))))
        shown = {
            int(v) for v in page.locator("#organ-toggles input").evaluate_all("els => els.map(e => e.dataset.organ)")
        }
        assert shown == {int(v) for v in np.unique(label) if v}  # one toggle per organ of the version under review
        page.locator("#viewer").screenshot(path=str(SHOTS / "slice-viewer-1-loaded.png"))

        # scroll: real keys on the canvas move the axial slice
        k0 = page.evaluate(CROSSHAIR)[2]
        page.focus("#nv-canvas")
        for _ in range(4):
            page.keyboard.press("PageUp")
        assert page.evaluate(CROSSHAIR)[2] == k0 + 4
        page.mouse.move(*_centre(page.evaluate(TILES)["0"]))
        page.mouse.wheel(0, 100)
        page.wait_for_timeout(300)
        assert page.evaluate(CROSSHAIR)[2] != k0 + 4  # the wheel over the axial tile too
        page.locator("#viewer").screenshot(path=str(SHOTS / "slice-viewer-2-scrolled.png"))

        # a click in the axial tile sets the pancreas comment's point
        page.select_option("#point-organ", str(PANCREAS))
        left, top, width, height = page.evaluate(TILES)["0"]
        page.mouse.click(left + 0.55 * width, top + 0.5 * height)
        page.wait_for_selector("#picked[data-count='1']", state="attached", timeout=30000)  # (no eval: the CSP)
        picked = json.loads(page.get_attribute("#picked", "data-json"))
        field = [float(v) for v in page.input_value(f"#point_{PANCREAS}").split(",")]
        assert np.allclose(field, picked["mm"], atol=1e-6)  # the form's point is the click's
        image = sitk.ReadImage(str(scan))
        assert list(image.TransformPhysicalPointToIndex(picked["mm"])) == picked["voxel"]  # ITK agrees
        centre = np.array(image.TransformIndexToPhysicalPoint(picked["voxel"]))
        assert np.abs(centre - picked["mm"]).max() < 1e-2  # the click snapped to that voxel's centre

        # the attention map and organs one by one, off and on: each changes the picture
        canvas = page.locator("#nv-canvas")
        with_all = canvas.screenshot()
        page.uncheck("#toggle-attention")
        page.wait_for_timeout(300)
        no_attention = canvas.screenshot()
        first = page.locator("#organ-toggles input").first
        first.uncheck()
        page.wait_for_timeout(300)
        page.locator("#viewer").screenshot(path=str(SHOTS / "slice-viewer-3-organ-and-attention-off.png"))
        no_organ = canvas.screenshot()
        assert _changed(with_all, no_attention) > 0.002 and _changed(no_attention, no_organ) > 0.002
        first.check()
        page.check("#toggle-attention")

        page.fill(f"#comment_{PANCREAS}", "tail cut off here")
        page.select_option(f"#vote_{PANCREAS}", "changes_requested")
        page.select_option("#default", "approve")
        page.click("#send-votes")
        page.wait_for_load_state()
        browser.close()
    errors = [line for line in console if line.startswith(("pageerror", "error"))]
    assert not errors, errors

    comments = api("sam", "GET", f"/cases/{CASE}").json()["comments"]
    (comment,) = [c for c in comments if c["organ"] == PANCREAS]
    assert np.allclose(comment["point_world"], picked["mm"], atol=1e-3)
    assert comment["point_voxel"] == picked["voxel"]


def _changed(a: bytes, b: bytes) -> float:
    """The share of pixels that differ between two screenshots."""
    import io

    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), dtype=np.int16) for p in (a, b))
    return float((np.abs(x - y).sum(axis=2) > 30).mean())


def _centre(tile):
    left, top, width, height = tile
    return left + width / 2, top + height / 2


def _version_path(studies, version_id):
    import sqlite3

    from amoslabel.workspace import Workspace

    with sqlite3.connect(Workspace(studies).review_db) as db:
        return db.execute("SELECT path FROM label_versions WHERE id = ?", (version_id,)).fetchone()[0]
