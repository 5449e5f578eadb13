"""The review service the app runs: store, accounts, workflow, background finalising, and the viewer bridge.

The bridge is how 3D Slicer and OHIF take part without a plugin change:

* **Next Sample** (``POST /activelearning/review_queue`` with the plugin's ``client_id``) returns that user's next
  case, claimed for them (:class:`ReviewQueueStrategy`).
* **Saving a label** (``PUT /datastore/label``) becomes a label version by the user named by ``client_id``:
  a junior's save with tag ``final`` (Slicer's "Submit Label") records the version and submits it; any other tag
  (e.g. ``draft``) records a version only; a reviewer's save records their edited label for fusion. A save by
  anyone without an active assignment on that case is refused (403) and nothing is stored.
* A pre-label saved by ``/infer`` (tag ``original``) is recorded as the case's model pre-label.
* Only consensus-final labels are published to the datastore as ``final`` (with provenance), so the datastore's
  ``final`` never holds an unreviewed label; the newest working version is kept under the tag ``working``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from monailabel.interfaces.tasks.strategy import Strategy

from amoslabel.config import AppConfig
from amoslabel.errors import InputError, Unprocessable
from amoslabel.volume import Geometry, read_header
from review.auth import Accounts, Forbidden, Principal
from review.queries import case_detail, next_case
from review.store import ReviewStore, database_url
from review.workflow import Workflow

log = logging.getLogger(__name__)

WORKING_TAG = "working"
ORIGINAL_TAG = "original"
FINAL_TAG = "final"


class ReviewService:
    """Everything the review workflow needs, built once per app."""

    def __init__(self, config: AppConfig, studies: str, publisher: Optional[Callable[[str, Path, Dict], None]] = None):
        url = config.review.database or database_url(studies)
        self.store = ReviewStore(url, Path(studies) / ".amoslabel" / "label-versions")
        self.accounts = Accounts(self.store)
        self.workflow = Workflow(self.store, config.review, publisher)
        self._finaliser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finalise")
        self._lock = threading.Lock()
        # called with (case id, segmentationMeta) when reviewers send a case back: the app puts it in the
        # datastore label info that MONAI Label's Slicer Reviewer module reads
        self.on_flagged: Optional[Callable[[str, Dict[str, Any]], None]] = None
        self.workspace = Path(studies) / ".amoslabel"
        # what the web pages need from the app's datastore (set by the app; None where it has none)
        self.locate_image: Optional[Callable[[str], Optional[str]]] = None
        self.locate_attention: Optional[Callable[[str], Optional[str]]] = None
        self.modality_of: Optional[Callable[[str], str]] = None
        self.ohif_viewer: Optional[str] = None  # the OHIF viewer's URL when a DICOMweb datastore is in use
        self.study_of: Optional[Callable[[str], Optional[str]]] = None  # a case's StudyInstanceUID (DICOMweb)

    def ohif_link(self, case_id: str) -> Optional[str]:
        """Where OHIF shows this case (a DICOMweb datastore names cases by SeriesInstanceUID), if it is in use."""
        study = self.study_of(case_id) if self.ohif_viewer and self.study_of else None
        if not study:
            return None
        return f"{self.ohif_viewer.rstrip('/')}/viewer?StudyInstanceUIDs={study}&SeriesInstanceUIDs={case_id}"

    def check_label_grid(self, case_id: str, label) -> None:
        """Refuse (422) a label that is not on its case's scan grid, when the app knows the scan."""
        image = self.locate_image(case_id) if self.locate_image else None
        if image:
            reason = Geometry.of(read_header(image)).mismatch(Geometry.of(label))
            if reason:
                raise Unprocessable(f"label for {case_id}: {reason}; a label must be on its image's grid")

    def after_review(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        """Queue finalising when a review brought the case to consensus (the vote answers at once); tell the
        viewers' label info when it went back to the junior."""
        if summary.get("state") == "consensus":
            self._finaliser.submit(self._finalise, summary["case_id"])
        elif summary.get("state") in ("with_junior", "escalated") and self.on_flagged is not None:
            detail = case_detail(self.workflow, summary["case_id"], Principal(0, "system", "admin"))
            lines = [
                f"{organ}: {c['reviewer']}: {c['text']}" for organ, items in detail["feedback"].items() for c in items
            ]
            self.on_flagged(
                summary["case_id"],
                {
                    "status": "flagged",
                    "level": "changes requested" if summary["state"] == "with_junior" else "escalated",
                    "comment": "\n".join(lines) or "changes requested",
                    "editTime": int(time.time()),
                },
            )
        return summary

    def _finalise(self, case_id: str) -> None:
        try:
            self.workflow.finalise(case_id)
        except Exception:  # logged; the case stays in consensus and recover() retries at start-up
            log.exception("finalising %s failed", case_id)

    def wait_idle(self) -> None:
        """Block until queued finalising is done (tests, shutdown)."""
        self._finaliser.submit(lambda: None).result()

    def principal_for_client(self, client_id: Any) -> Principal:
        """The user a viewer request names in ``client_id`` (see the README on what that identifies)."""
        if not isinstance(client_id, str) or not client_id:
            raise Forbidden("this request names no user: set the client id in the viewer to your AMOS Label user")
        principal = self.accounts.by_name(client_id)
        if principal is None:
            raise Forbidden(f"client id {client_id[:64]!r} is not an AMOS Label user")
        return principal

    def save_from_viewer(self, image_id: str, label_file: str, tag: str, info: Dict[str, Any]) -> Optional[str]:
        """The datastore's save hook. Returns the label id when the workflow took the save, None to let it pass."""
        if tag == ORIGINAL_TAG:
            # the exact version that made it ("unet:v3"; the prior's tag names its atlas), so it can be replayed
            params = info.get("params") if isinstance(info.get("params"), dict) else {}
            model = str(params.get("model_tag") or info.get("model") or "model")
            state = self.workflow.register_case(image_id)
            if state in ("new", "prelabelled"):
                self.workflow.record_prelabel(image_id, label_file, model, {"params": info.get("params")})
            return None  # the pre-label is also kept under 'original', as MONAI Label does
        if tag == WORKING_TAG:
            raise InputError(f"the tag {WORKING_TAG!r} is written by the workflow only", status=403)
        who = self.principal_for_client(info.get("client_id") or info.get("user"))
        self.workflow.register_case(image_id)
        if tag == FINAL_TAG and who.role == "admin":
            raise Forbidden("a final label comes from consensus, not from a save: admins resolve escalated cases")
        self.workflow.save_version(who, image_id, label_file, submit=(tag == FINAL_TAG and who.role == "junior"))
        return image_id


class ReviewQueueStrategy(Strategy):
    """Next Sample from the review queues: the user's next case as their role sees it, claimed for them."""

    NAME = "review_queue"

    def __init__(self, service: ReviewService):
        super().__init__("The next case of your review queue (junior or senior), claimed for you")
        self.service = service

    def __call__(self, request: Dict[str, Any], datastore) -> Optional[Dict[str, Any]]:
        who = self.service.principal_for_client(request.get("client_id"))
        claimed = next_case(self.service.workflow, who)
        if claimed is None:
            return None
        return {"id": claimed["case_id"], "state": claimed["state"], "round": claimed["round"]}
