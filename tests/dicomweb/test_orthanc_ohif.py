"""A real Orthanc (DICOMweb plugin) inside a private network namespace, fed with the real DICOM series, answering
the requests the OHIF viewer makes; then the real OHIF viewer in headless Chromium showing a CT and its liver SEG.
Screenshots go to test-output/ohif/."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from amoslabel.dicom import orthanc as o
from tests.conftest import CHROMIUM_FLAGS, OUTPUT, free_port
from tests.dicomweb.conftest import series_label_on

UNCOMPRESSED = "ts_ct_series_uncompressed"
J2K = "ts_ct_series_j2k"
SMALL = "dcmqi_ct_3slice"
SEG = "dcmqi_ct_3slice_liver_seg.dcm"
OCTETS = 'multipart/related; type="application/octet-stream"'


def uids(path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def first(folder):
    return sorted(folder.iterdir())[0]


def multipart_parts(reply) -> list[bytes]:
    """The bodies of a multipart/related answer (a WADO-RS frame retrieve)."""
    ctype = reply.headers["Content-Type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = [p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary=")][0]
    parts = []
    for chunk in reply.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))
    return parts


def test_orthanc_is_private(orthanc, netns):
    config = json.loads(orthanc.config_path.read_text())
    assert config["RemoteAccessAllowed"] is False and config["DicomServerEnabled"] is False
    assert config["AuthenticationEnabled"] is False and "Host" not in config["DicomWeb"]
    assert str(orthanc.config_path.parent) in config["StorageDirectory"]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]  # nothing but loopback in here
    assert o.session().get(f"{orthanc.url}/system", timeout=10).json()["Version"].startswith("1.")

    def knock():  # from the machine's real namespace, the same port is closed
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", orthanc.port), timeout=2)
        return os.readlink("/proc/thread-self/ns/net")

    assert netns.outside(knock) != netns.id


def test_upload_and_the_requests_ohif_makes(orthanc, shared):
    web, dicom = orthanc.dicomweb, shared / "dicom"
    before = o.count_instances(orthanc.url)
    assert len(set(o.upload_series(orthanc.url, dicom / UNCOMPRESSED))) == 20
    study, series, _ = uids(first(dicom / UNCOMPRESSED))
    assert study in o.list_studies(web)
    assert o.list_series(web, study) == [{"uid": series, "modality": "CT", "instances": 20}]

    # The JPEG 2000 copy carries the same study and series UIDs but its own SOP UIDs (a quirk of this data):
    # Orthanc files it into the same series, which then holds 40 instances.
    j2k_ids = o.upload_series(orthanc.url, dicom / J2K)
    assert len(set(j2k_ids)) == 20 and o.list_series(web, study)[0]["instances"] == 40
    assert o.upload_series(orthanc.url, dicom / J2K) == j2k_ids  # a second upload is "AlreadyStored", no copies

    small = o.upload_series(orthanc.url, dicom / SMALL) + o.upload_series(orthanc.url, dicom / SEG)
    assert len(set(small)) == 4
    assert o.count_instances(orthanc.url) == before + 44
    small_study, ct_series, ct_sop = uids(first(dicom / SMALL))
    _, seg_series, seg_sop = uids(dicom / SEG)

    # what OHIF asks, in its order: the study list (fuzzy, with a limit), the series, their metadata, a frame
    found = o.qido(web, "studies", limit=101, offset=0, fuzzymatching="true", includefield="00081030,00080060")
    assert {o.value(s, o.STUDY_UID) for s in found} >= {study, small_study}
    assert sorted((s["modality"], s["instances"]) for s in o.list_series(web, small_study)) == [("CT", 3), ("SEG", 1)]
    ct_meta = o.series_metadata(web, small_study, ct_series)
    assert sorted(o.value(m, o.SOP_UID) for m in ct_meta) == sorted(uids(f)[2] for f in (dicom / SMALL).iterdir())
    assert all(o.value(m, "00280010") == 512 and o.value(m, "00280011") == 512 for m in ct_meta)  # rows, columns
    seg_meta = o.series_metadata(web, small_study, seg_series)
    assert len(seg_meta) == 1 and o.value(seg_meta[0], o.SOP_UID) == seg_sop
    assert o.value(seg_meta[0], o.MODALITY) == "SEG" and o.value(seg_meta[0], "00280008") in (3, "3")  # frames
    segment = o.value(seg_meta[0], "00620002")  # SegmentSequence: OHIF reads the segment labels from here
    assert o.value(segment, "00620005") == "Liver"
    referenced = o.value(seg_meta[0], "00081115")  # ReferencedSeriesSequence points at the CT
    assert o.value(referenced, o.SERIES_UID) == ct_series

    frame = o.session().get(
        f"{web}/studies/{small_study}/series/{ct_series}/instances/{ct_sop}/frames/1",
        headers={"Accept": f"{OCTETS}; transfer-syntax=*"},
        timeout=60,
    )
    assert frame.status_code == 200, frame.text[:300]
    assert [len(p) for p in multipart_parts(frame)] == [512 * 512 * 2]  # one 16-bit frame, as stored

    # A JPEG 2000 frame with "transfer-syntax=*" (what OHIF's image loader asks for): the stored codestream,
    # decoded in the browser by OHIF's wasm decoders. Debian's Orthanc cannot transcode JPEG 2000 ("Not
    # implemented yet: Cannot transcode image", HTTP 500 for a plain octet-stream request), so clients must
    # accept the stored syntax: thumbnails too, hence thumbnailRendering "wadors" in amoslabel.ohif.
    _, _, j2k_sop = uids(first(dicom / J2K))
    url = f"{web}/studies/{study}/series/{series}/instances/{j2k_sop}/frames/1"
    stored = multipart_parts(o.session().get(url, headers={"Accept": f"{OCTETS}; transfer-syntax=*"}, timeout=60))
    assert len(stored) == 1 and stored[0][:4] == b"\xff\x4f\xff\x51"  # JPEG 2000 codestream: SOC, SIZ markers


def test_wado_rs_fetch_round_trip(orthanc, shared, tmp_path):
    dicom = shared / "dicom"
    o.upload_series(orthanc.url, dicom / SMALL)
    study, series, _ = uids(first(dicom / SMALL))
    files = o.fetch_series(orthanc.dicomweb, study, series, tmp_path)
    assert sorted(p.name for p in files) == sorted(f"{uids(f)[2]}.dcm" for f in (dicom / SMALL).iterdir())
    original = pydicom.dcmread(str(first(dicom / SMALL)))
    fetched = pydicom.dcmread(str(tmp_path / f"{original.SOPInstanceUID}.dcm"))
    assert (fetched.pixel_array == original.pixel_array).all()


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_corrupt_upload_is_refused_and_stores_nothing(orthanc, shared, tmp_path, kind):
    source = first(shared / "dicom" / UNCOMPRESSED).read_bytes()
    bad = tmp_path / f"{kind}.dcm"
    bad.write_bytes(source[: len(source) // 2] if kind == "truncated" else os.urandom(64 * 1024))
    before = o.count_instances(orthanc.url)
    with pytest.raises(o.UploadError, match=f"refused {bad}"):
        o.upload_file(orthanc.url, bad)
    assert o.count_instances(orthanc.url) == before


def test_upload_of_an_empty_folder_names_it(orthanc, tmp_path):
    with pytest.raises(o.UploadError, match=str(tmp_path)):
        o.upload_series(orthanc.url, tmp_path)


def test_ohif_server_serves_the_app_and_proxies_dicomweb(orthanc, ohif_dist, shared):
    """Without a browser: app-config.js, the SPA fallback, and /dicom-web answered by Orthanc on the same origin."""
    from amoslabel.dicom.ohif import OhifServer, app_config

    assert "oidc" not in app_config() and "'/dicom-web'" in app_config()
    explicit = app_config(f"{orthanc.dicomweb}/")
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f'"{key}": "{orthanc.dicomweb}"' in explicit
    for setting in ('"imageRendering": "wadors"', '"thumbnailRendering": "wadors"', '"dicomUploadEnabled": false'):
        assert setting in explicit
    o.upload_series(orthanc.url, shared / "dicom" / SMALL)
    study, _, _ = uids(first(shared / "dicom" / SMALL))
    server = OhifServer(orthanc.url, ohif_dist, credentials=False).start()  # open: this namespace only
    try:
        http = o.session()
        page = http.get(server.viewer_url(study), timeout=30)
        assert page.ok and "<title>OHIF Viewer</title>" in page.text  # index.html for an app route
        assert "window.config" in http.get(f"{server.url}/app-config.js", timeout=30).text
        assert http.get(f"{server.url}/no-such-bundle.js", timeout=30).status_code == 404
        proxied = http.get(f"{server.url}/dicom-web/studies/{study}/series", timeout=30)
        direct = o.qido(orthanc.dicomweb, f"studies/{study}/series")
        assert proxied.ok and [o.value(s, o.SERIES_UID) for s in proxied.json()] == [
            o.value(s, o.SERIES_UID) for s in direct
        ]
        # With DicomWeb "Host" unset, Orthanc builds RetrieveURL from the forwarded Host header: the proxy's
        # origin, port included, so whatever OHIF follows stays same-origin.
        assert o.value(proxied.json()[0], "00081190").startswith(f"{server.url}/dicom-web/studies/{study}/series/")
        assert o.value(direct[0], "00081190").startswith(f"{orthanc.dicomweb}/studies/{study}/series/")
        assert proxied.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.stop()


# ---- the real OHIF viewer, headless Chromium, reading this Orthanc through amoslabel.dicom.ohif's proxy ----

FLAGS = CHROMIUM_FLAGS  # WebGL still works: Chromium falls back to SwiftShader
SHOTS = OUTPUT / "ohif"


@pytest.fixture(scope="module")
def viewer(netns, ohif_dist, tmp_path_factory):
    """A fresh Orthanc of its own, OHIF served in front of it, and Debian's Chromium; console lines collected."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-test.txt")
    from amoslabel.dicom.ohif import OhifServer

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} is missing: `make test` installs Debian's chromium (scripts/system-packages.sh)")
    folder = tmp_path_factory.mktemp("ohif-orthanc")
    store = o.OrthancProcess(o.write_config(folder, free_port()))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        store.wait_ready()
        server = OhifServer(store.url, ohif_dist, log_path=SHOTS / "ohif-requests.log", credentials=False).start()
        console: list[str] = []
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            yield store, server, browser, console
            browser.close()
        server.stop()
    finally:
        store.stop()
        (SHOTS / "console.log").write_text("\n".join(console))


def open_viewer(viewer, study_uid: str):
    store, server, browser, console = viewer
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(server.viewer_url(study_uid))
    page.wait_for_selector("[data-cy=study-browser-thumbnail]", timeout=60000)
    for text in ("Skip all", "Confirm and hide"):  # the first-visit tour and the investigational-use banner
        with contextlib.suppress(Exception):
            page.get_by_text(text).first.click(timeout=5000)
    return page


def colour_stats(page) -> tuple[float, float]:
    """(share of clearly coloured pixels, grey-level std) in the viewport: CT is grey, a SEG overlay is not."""
    import io

    import numpy as np
    from PIL import Image

    shot = page.locator("[data-cy=viewport-pane]").first.screenshot()
    rgb = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 30  # blended orange over grey: about 45-60
    return float(coloured.mean()), float(rgb.mean(axis=2).std())


def wait_for(page, check, what: str, console: list[str], timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    page.screenshot(path=str(SHOTS / "failure.png"))
    errors = "\n".join(line for line in console if line.startswith(("error", "pageerror")))[-3000:]
    pytest.fail(f"OHIF: {what} within {timeout}s; console errors:\n{errors}")


def test_ohif_shows_the_ct_and_its_liver_seg(viewer, shared):
    store, server, browser, console = viewer
    dicom = shared / "dicom"
    o.upload_series(store.url, dicom / SMALL)
    o.upload_series(store.url, dicom / SEG)
    study, _, _ = uids(dicom / SEG)
    started = time.time()
    page = open_viewer(viewer, study)
    browser_text = page.locator("[data-cy=studyBrowser-panel]").inner_text()
    assert "SEG" in browser_text and "Liver Segmentation" in browser_text, browser_text

    # the CT is drawn: the overlay counts its 3 images and the viewport holds a real grey-level picture
    wait_for(page, lambda: "(1/3)" in page.locator("[data-cy=viewport-pane]").inner_text(), "no CT image", console)
    _, spread = wait_for(page, lambda: (s := colour_stats(page))[1] > 30 and s, "a blank viewport", console)
    page.screenshot(path=str(SHOTS / "ct.png"))
    print(f"CT shown {time.time() - started:.1f}s after opening the viewer (grey std {spread:.0f})")

    # the SEG: double-click in the study browser (no "open it?" prompt: disableConfirmationPrompts), then the panel
    # lists its segment
    page.get_by_text("Liver Segmentation").first.dblclick()
    if page.locator("[data-cy=data-row-title]").count() == 0:
        page.click("[data-cy=panelSegmentation-btn]")
    row = wait_for(page, lambda: page.locator("[data-cy=data-row-title]").all_inner_texts(), "no segment", console)
    assert row == ["Liver"], row
    coloured, _ = wait_for(page, lambda: (s := colour_stats(page))[0] > 0.05 and s, "no liver overlay", console)
    page.screenshot(path=str(SHOTS / "ct-liver-seg.png"))
    print(f"liver overlay covers {coloured:.0%} of the viewport, {time.time() - started:.1f}s after opening")
    assert not [line for line in console if line.startswith("pageerror")]


def test_ohif_decodes_jpeg2000_in_the_browser(viewer, shared):
    """Debian's Orthanc cannot transcode JPEG 2000; OHIF gets the codestream and decodes it itself (wasm)."""
    store, server, browser, console = viewer
    o.upload_series(store.url, shared / "dicom" / J2K)
    study, _, _ = uids(first(shared / "dicom" / J2K))
    page = open_viewer(viewer, study)
    wait_for(page, lambda: "(1/20)" in page.locator("[data-cy=viewport-pane]").inner_text(), "no J2K image", console)
    wait_for(page, lambda: colour_stats(page)[1] > 30, "a blank JPEG 2000 viewport", console)
    page.screenshot(path=str(SHOTS / "ct-jpeg2000.png"))


def test_ohif_lists_and_shows_our_prelabel_seg(viewer, shared, tmp_path):
    """Our SEG writer's output (what the server stores for a pre-label) on a de-identified series, in real OHIF."""
    import SimpleITK as sitk

    from amoslabel.dicom.series import read_series
    from amoslabel.dicom.send import send_to_dicomweb
    from amoslabel.data.dicomweb import write_coded_seg
    from amoslabel.dicom.naming import PRELABEL_PREFIX

    store, server, browser, console = viewer
    (sent,) = send_to_dicomweb(shared / "dicom" / "ts_ct_series_uncompressed", store.url, tmp_path / "importer")
    series = tmp_path / "series"
    o.fetch_series(store.dicomweb, sent.study_uid, sent.series_uid, series)
    grid = read_series(series)
    label = series_label_on(grid, shared)
    sitk.WriteImage(label, str(tmp_path / "prelabel.nii.gz"))
    description = f"{PRELABEL_PREFIX} prior:test"
    seg = write_coded_seg(str(tmp_path / "prelabel.nii.gz"), series, tmp_path / "seg.dcm", description, True)
    o.upload_series(store.url, seg)

    page = open_viewer(viewer, sent.study_uid)
    assert PRELABEL_PREFIX in page.locator("[data-cy=studyBrowser-panel]").inner_text()
    wait_for(page, lambda: "(1/20)" in page.locator("[data-cy=viewport-pane]").inner_text(), "no CT image", console)
    page.get_by_text(PRELABEL_PREFIX).first.dblclick()
    if page.locator("[data-cy=data-row-title]").count() == 0:
        page.click("[data-cy=panelSegmentation-btn]")
    rows = wait_for(page, lambda: page.locator("[data-cy=data-row-title]").all_inner_texts(), "no segment", console)
    expected = ["spleen", "liver", "stomach", "aorta", "inferior vena cava", "pancreas", "right adrenal gland"]
    assert sorted(rows) == sorted(expected), rows
    wait_for(page, lambda: colour_stats(page)[0] > 0.01, "no pre-label overlay", console)
    page.screenshot(path=str(SHOTS / "ct-prelabel-seg.png"))
    assert not [line for line in console if line.startswith("pageerror")]
