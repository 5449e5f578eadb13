"""The case page's slice viewer: NiiVue (WebGL, BSD-2-Clause) in the browser, fed by the server, no CDN.

The browser gets the case's scan, the label version under review and the attention map (when the case has one) as
NIfTI files from the routes below, and NiiVue's ES module bundle from ``/review/vendor/niivue.js``
(``scripts/fetch-niivue.sh`` keeps it in ``.cache/niivue``; ``make run`` and ``make test`` fetch it once). Without
the bundle the page says so and keeps its server-rendered previews. The viewer itself is
``static/slice-viewer.js``: three planes at one scale, laid out (row, column or grid) and the canvas shaped so that
they fill it, thin scans as well as thick ones; organs toggled one by one, in the organ table's colours; the
attention map as a heat overlay, off until asked for; a click that places a comment's point (mm, LPS) for the organ
chosen beside it; and the comments' point links, which move the crosshair to their point without a reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from flask import Blueprint, abort, send_file

from amoslabel.ids import check_id
from amoslabel.organs import ORGANS
from amoslabel.workspace import PROJECT_ROOT
from review.auth import Principal
from review.queries import case_detail, version_file

if TYPE_CHECKING:
    from review.web.pages import PageContext

NIIVUE_CACHE = PROJECT_ROOT / ".cache" / "niivue"  # where scripts/fetch-niivue.sh keeps it
NIIVUE_FILE = "niivue.esm.js"
VOLUMES = ("scan", "label", "attention")


def niivue_bundle() -> Optional[Path]:
    """The NiiVue bundle ``scripts/fetch-niivue.sh`` fetched (the newest, should there be several versions), or None.

    Only looked up: fetching is the make targets' job, never a request's (it would wait on npm)."""
    found = sorted(NIIVUE_CACHE.glob(f"*/{NIIVUE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def organ_colours() -> List[Dict[str, Any]]:
    """Each organ's id, name and display colour: the organ table's, as in the previews and our DICOM SEGs."""
    return [{"id": o.id, "name": o.name.replace("_", " "), "rgb": list(o.rgb)} for o in ORGANS]


def register(pages: Blueprint, context: "PageContext") -> None:
    """The NiiVue bundle and a case's volumes for the slice viewer."""
    workflow = context.workflow

    @pages.get("/vendor/niivue.js")
    @context.logged_in
    def niivue(who: Principal):
        bundle = niivue_bundle()
        if bundle is None:
            abort(404)
        return send_file(bundle, mimetype="text/javascript", max_age=86400)

    @pages.get("/cases/<case_id>/volume/<what>")
    @context.logged_in
    def volume(who: Principal, case_id: str, what: str):
        detail = case_detail(workflow, check_id(case_id, "case id"), who)  # visibility check
        path = _volume_file(context, case_id, detail, what)
        if path is None:
            abort(404)
        return send_file(path, mimetype="application/octet-stream", max_age=0)


def _volume_file(context: "PageContext", case_id: str, detail: Dict[str, Any], what: str) -> Optional[str]:
    service = context.service
    if what == "scan":
        path = service.image_file(case_id)
    elif what == "label":
        path = version_file(context.workflow, detail.get("current_version"))
    elif what == "attention":
        path = service.attention_file(case_id)
    else:
        return None
    return str(path) if path and Path(path).is_file() else None


def _file_name(what: str, path: str) -> str:
    """A name whose extension tells NiiVue the file's format (``scan.nii.gz``)."""
    name = Path(path).name
    return what + (".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix)


def viewer_data(context: "PageContext", case_id: str, detail: Dict[str, Any]) -> Dict[str, Any]:
    """What the case page's template needs for the viewer: each volume there is, with a name that gives its format."""
    volumes = {}
    for what in VOLUMES:
        path = _volume_file(context, case_id, detail, what)
        if path:
            volumes[what] = _file_name(what, path)
    return {
        "viewer_volumes": volumes,
        "organ_colours": organ_colours(),
        "viewer_available": niivue_bundle() is not None,
        "modality": context.service.modality_of(case_id),
    }
