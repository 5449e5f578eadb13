"""Driving the real OHIF viewer (3.13.2, headless Chromium) in tests: what a user does with the mouse, and where
on the scan it lands.

OHIF exposes cornerstone3D and its services on ``window``; the tests use them only to *read* where things are
(canvas pixel <-> patient mm, the active segment), never to edit: every edit is a real pointer event on the canvas.
Found by exploring the prebuilt viewer; selectors are its ``data-cy`` attributes.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

WORLD_TO_PAGE = """(points) => {
  const v = window.cornerstone.getEnabledElements()[0].viewport;
  const r = v.canvas.getBoundingClientRect();
  return points.map(p => { const c = v.worldToCanvas(p); return [r.left + c[0], r.top + c[1]]; });
}"""
VIEWPORT_POSITION = """() => {
  const v = window.cornerstone.getEnabledElements()[0].viewport;
  return window.cornerstone.metaData.get('imagePlaneModule', v.getCurrentImageId()).imagePositionPatient;
}"""
ACTIVE_SEGMENT = """() => { const s = window.services; const v = s.viewportGridService.getActiveViewportId();
  const seg = s.segmentationService.getActiveSegment(v); return seg ? seg.label : null; }"""
BRUSH_MM = 5.0


def dismiss_banners(page) -> None:
    """The investigational-use banner and, in the basic viewer, the first-visit tour."""
    for text in ("Confirm and hide", "Skip all"):
        with contextlib.suppress(Exception):
            page.get_by_text(text).first.click(timeout=3000)


def wait_for_ct(page, slices: int, timeout_ms: int = 90000) -> None:
    page.wait_for_function(
        f"document.querySelector('[data-cy=viewport-pane]')?.innerText.includes('(1/{slices})')", timeout=timeout_ms
    )


def open_seg(page, description: str, timeout_ms: int = 90000) -> List[str]:
    """Double-click the SEG series named ``description`` in the study browser; returns its segments' names."""
    page.locator("[data-cy=studyBrowser-panel]").get_by_text(description).first.dblclick()
    page.wait_for_selector("[data-cy=data-row-title]", timeout=timeout_ms)
    return page.locator("[data-cy=data-row-title]").all_inner_texts()


def make_active(page, segment: str, tries: int = 30) -> None:
    """Click the segment's row until it is the active one (a click during hydration is often undone)."""
    for _ in range(tries):
        if page.evaluate(ACTIVE_SEGMENT) == segment:
            return
        page.locator("[data-cy=data-row]", has_text=segment).first.click()
        time.sleep(0.5)
    raise AssertionError(f"OHIF: could not make {segment!r} the active segment")


def choose_tool(page, tool: str, radius_mm: float = BRUSH_MM) -> None:
    """``Brush`` or ``Eraser``, with its radius (mm; the field appears once the tool is chosen)."""
    page.click(f"[data-cy={tool}-btn]")
    field = page.locator(f"[data-cy={tool.lower()}-radius] input[type=number]")
    field.fill(f"{radius_mm:g}")
    field.press("Enter")


def stroke(page, world_points: Sequence[Sequence[float]]) -> List[List[float]]:
    """Press, drag through ``world_points`` (patient mm, LPS) and release, with real pointer events."""
    points = page.evaluate(WORLD_TO_PAGE, [list(map(float, p)) for p in world_points])
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=2)
    page.mouse.up()
    return points


def _choose_export_dicom_seg(page, attempts: int = 3) -> None:
    """The panel's menu, Export, DICOM SEG. Under load the Export submenu can close while the pointer travels to its
    item (a CI run saw "<html> intercepts pointer events", then the item detached): open the menu again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        page.click("[data-cy=segmentation-collapsed-more-btn-Labelmap]")
        page.get_by_role("menuitem", name="Export").click()
        try:
            page.get_by_role("menuitem", name="DICOM SEG").click(timeout=20000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
            page.keyboard.press("Escape")


NOT_LOADED = "Ensure the referenced series is fully loaded"  # OHIF's refusal to store before its prefetch is done


def store_segmentation(page, timeout_s: float = 120.0, picture: Optional[Path] = None) -> str:
    """OHIF's own store: the panel's menu, Export, DICOM SEG, then Save in its dialog. Returns the notice that
    tells the outcome; ``picture``: a screenshot the moment it shows (OHIF's own notices soon stack over it).

    OHIF itself refuses to build the SEG while the scan's slices are still loading into its cache (a full run on a
    slowed machine once stored before that: "Referenced source image not in cache"); then, as a user would, this
    waits and stores again (twice at most). Nothing reached the server: the outcome is still the server's."""
    for attempt in range(3):
        outcome = _store_once(page, timeout_s, picture)
        if NOT_LOADED not in outcome or attempt == 2:
            return outcome
        page.keyboard.press("Escape")
        deadline = time.time() + 60  # its notice gone (else the next attempt would read it again), the slices loading
        while time.time() < deadline and any(
            NOT_LOADED in t for t in page.locator("[data-sonner-toast]").all_inner_texts()
        ):
            time.sleep(1)
        time.sleep(5)
    raise AssertionError("unreachable")


def _store_once(page, timeout_s: float, picture: Optional[Path]) -> str:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator("[role=dialog]").first
    # OHIF builds the SEG before it asks: seconds on software WebGL, minutes when the other test workers saturate the
    # two cores (a team of servers under 50 users). A full run once saw no dialog at all after the menu's click (the
    # same test alone: 11 s): the export is chosen once more after two minutes.
    for attempt in range(2):
        _choose_export_dicom_seg(page)
        try:
            dialog.wait_for(timeout=120000)
            break
        except PlaywrightTimeout:
            if attempt == 1:
                raise
            page.keyboard.press("Escape")
    dialog.locator("[data-cy=input-dialog-save-button] button").click()
    deadline, seen = time.time() + timeout_s, []
    while time.time() < deadline:
        for text in page.locator("[data-sonner-toast]").all_inner_texts():
            if text not in seen:
                seen.append(text)
        outcome = [
            t
            for t in seen
            if "saved successfully" in t or "request failed" in t or re.search(r"\b[45]\d\d: ", t) or NOT_LOADED in t
        ]
        if outcome:
            if picture is not None:
                page.screenshot(path=str(picture))
            return outcome[0]
        time.sleep(0.2)
    return "no outcome; toasts: " + " | ".join(seen)


def stroke_plan(label: sitk.Image, ct: sitk.Image, k: int) -> Tuple[list, list, int]:
    """World points (LPS mm) on grid slice ``k``: a 24 mm line in body tissue at least 20 mm from any organ (to
    paint), and a 16 mm line across the spleen, else the largest organ but the liver (to erase); and that organ."""
    from scipy import ndimage

    labels = sitk.GetArrayFromImage(label)[k]
    hu = sitk.GetArrayFromImage(ct)[k]
    spacing = label.GetSpacing()[:2][::-1]  # (row, column)
    body = ndimage.binary_fill_holes(hu > -300)
    free = (ndimage.distance_transform_edt(labels == 0, sampling=spacing) > 20) & (
        ndimage.distance_transform_edt(body, sampling=spacing) > 20
    )
    run = int(round(24 / spacing[1]))
    room = ndimage.binary_erosion(free, structure=np.ones((max(int(12 / spacing[0]), 1), run)))
    rows, cols = np.nonzero(room)
    assert len(rows), "no room to paint on this slice"
    c = np.argmin((rows - labels.shape[0] / 2) ** 2 + (cols - labels.shape[1] / 2) ** 2)
    r0, c0 = int(rows[c]), int(cols[c])
    paint = [(c0 - run / 2 + t * run / 5, r0) for t in range(6)]
    organs = [int(v) for v in np.unique(labels) if v not in (0, 6)]
    target = 1 if 1 in organs else max(organs, key=lambda v: int((labels == v).sum()))
    rr, cc = np.nonzero(labels == target)
    half = int(round(8 / spacing[1]))
    erase = [(cc.mean() - half + t * half / 2, rr.mean()) for t in range(5)]

    def world(points):
        return [list(label.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k)))) for x, y in points]

    return world(paint), world(erase), target


def distance_to_polyline(points_mm: np.ndarray, line_mm: Sequence[Sequence[float]]) -> np.ndarray:
    """Each point's distance (mm) to the polyline through ``line_mm``."""
    line = np.asarray(line_mm, dtype=float)
    best = np.full(len(points_mm), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((points_mm - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points_mm - (a + t[:, None] * ab), axis=1))
    return best


def voxel_centres(image: sitk.Image, indices_kji: np.ndarray) -> np.ndarray:
    """Patient positions (mm) of voxels given as numpy (k, j, i) indices."""
    return np.array([image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for k, j, i in indices_kji])
