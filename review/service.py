"""The review service the app runs: store, accounts, workflow, background finalising, and the viewer bridge.

The bridge is how 3D Slicer and OHIF take part without a plugin change:

* **Next Sample** (``POST /activelearning/review_queue`` with the plugin's ``client_id``) returns that user's next
  case, claimed for them (:class:`ReviewQueueStrategy`).
* **Saving a label** (``PUT /datastore/label``) becomes a label version by the user named by ``client_id``:
  a junior's save with tag ``final`` (Slicer's "Submit Label") records the version and submits it; any other tag
  (e.g. ``draft``) records a version only; a reviewer's save records their edited label for fusion. A save by
  anyone without an active assignment on that case is refused (403) and nothing is stored.
* A pre-label (``/infer`` on a case, or a save with tag ``original``) is recorded as the case's model pre-label.
* Only consensus-final labels are published to the datastore as ``final`` (with provenance), so the datastore's
  ``final`` never holds an unreviewed label; the newest working version is the datastore's ``working`` label.

The service reads and tells the datastore through :class:`CaseFiles`, attached by the app; without one (the command
line, tests on a bare store) the workflow runs alone.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Protocol, Set

import SimpleITK as sitk
from sqlalchemy import select
from monailabel.interfaces.tasks.strategy import Strategy

from amoslabel.cluster.leadership import LeaderJobs, leadership_for
from amoslabel.data.locations import results_folder
from amoslabel.config import AppConfig
from amoslabel.dicom.naming import SegKind, seg_uids
from amoslabel.data.tags import ATTENTION_TAG, FINAL_TAG, KEPT_AS_VERSION, ORIGINAL_TAG, WORKING_TAG
from amoslabel.errors import Conflict, Unprocessable
from amoslabel.volume import Geometry, check_on_grid, read_label, read_label_on_grid
from amoslabel.workspace import Workspace
from models.click_request import CLICK_RESULT, WHOLE_LABEL_KEY
from review import audit
from review.auth import Accounts, Forbidden, Principal
from review.blinding import REVIEWER_EDIT, blind_round
from review.empty_queue import why_nothing_waits
from review.feedback import closed_round, round_feedback
from review.logins import LoginThrottle
from review.queries import case_detail, next_case
from review.save_answers import newest_version_by, save_answer
from review.schema import Case, LabelVersion
from review.votes import is_point
from review.store import ReviewStore, database_url
from review.undo import step_to_restore
from review.workflow import Workflow

log = logging.getLogger(__name__)
_ID_LIKE = re.compile(r"[0-9.]{1,128}")  # a DICOM UID (a DICOMweb datastore's case id)
FINALISE_SWEEP_S = 1.0  # the leader finalises cases another server's vote brought to consensus within about this
QUEUED_TRUST_S = 300.0  # a case queued for the finaliser longer than this is the sweep's again
SETTLED_S = 2.0  # ... once they have been in consensus this long (the voting leader's own finaliser goes first)
LEASE_SWEEP_S = 10.0  # how often lapsed leases are expired (a queue already treats a lapsed lease as none)
IMPORTED_PRELABEL = "import"  # the "model" of a pre-label that came with its scan


class CaseFiles(Protocol):
    """What the review workflow reads and tells of a case's files; the app's datastore implements it."""

    label_saver: Any
    label_save_check: Any
    image_added: Any
    leads: Any

    def list_images(self) -> List[str]: ...

    def image_file(self, case_id: str) -> Optional[str]: ...

    def label_file(self, case_id: str, tag: str) -> Optional[str]: ...

    def modality_code(self, case_id: str) -> str: ...

    def study_uid(self, case_id: str) -> Optional[str]: ...

    def flag_working(self, case_id: str, meta: Dict[str, Any]) -> None: ...

    def publish_final(self, case_id: str, version_file: Path, info: Dict[str, Any]) -> Optional[str]: ...

    def prelabel_recorded(self, case_id: str, label_file: str, model_tag: str, version: int) -> None: ...

    def link_label(self, case_id: str, version_file: Path, tag: str, info: Dict[str, Any]) -> str: ...

    def version_for_readers(self, notice: Dict[str, Any]) -> None: ...

    def seg_series(self, case_id: str) -> Set[str]: ...

    def cases_of_study(self, study_uid: str) -> List[str]: ...

    def withdraw_image(self, case_id: str) -> Optional[Path]: ...

    def purge_withdrawn(self, case_id: str) -> int: ...


class ReviewService:
    """Everything the review workflow needs, built once per app."""

    def __init__(self, config: AppConfig, studies: str):
        self.workspace = Workspace(Path(studies))
        self.max_voxels = config.storage.max_image_voxels
        self.auth_settings = config.auth  # the web pages' cookie, the login throttle's limits
        url = config.review.database or database_url(studies)
        self.store = ReviewStore(url, self.workspace.label_versions)
        throttle = LoginThrottle(self.store, config.auth.login_free_failures, config.auth.login_max_delay_s)
        self.accounts = Accounts(self.store, config.auth.access_token_hours, throttle)
        self.workflow = Workflow(self.store, config.review, self._published)
        self._finaliser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finalise")
        # cases queued on that finaliser, and when: the leader's sweep leaves them to it (fusing one twice, when the
        # queue runs behind under a busy review, cost a tenth of the server's CPU) unless queued QUEUED_TRUST_S ago
        self._queued: Dict[str, float] = {}
        # the team's background work runs on one server, its leader (the sole server on SQLite)
        self.leadership = leadership_for(url)
        self.background = LeaderJobs(self.leadership)
        self.background.add("finalise cases in consensus", FINALISE_SWEEP_S, self._finalise_settled)
        self.background.add("expire leases", LEASE_SWEEP_S, self.workflow.expire_leases)
        self.files: Optional[CaseFiles] = None
        self.ohif_viewer: Optional[str] = None  # the OHIF viewer's URL when a DICOMweb datastore is in use
        # what an admin should know about the machine's helpers (a quality estimator that does not load): shown on
        # the overview page; set by the layers above (strategies), which review does not import
        self.notices: Dict[str, str] = {}
        self.final_listeners: List[Callable[[], None]] = []  # told after each final is published (retraining)
        self.new_case_listeners: List[Callable[[str], None]] = []  # told when a scan becomes a case (scoring)

    # -- the datastore --------------------------------------------------------------------------------------------
    def attach(self, files: CaseFiles, ohif_viewer: Optional[str] = None) -> None:
        """Take part in the datastore's saves and uploads, and read case files from it."""
        self.files = files
        self.ohif_viewer = ohif_viewer
        files.label_saver = self.save_from_viewer
        files.label_save_check = self.check_viewer_save
        files.image_added = self.image_added
        files.leads = self.leadership.is_leader
        self.workflow.version_listeners.append(files.version_for_readers)

    def image_file(self, case_id: str) -> Optional[str]:
        return self.files.image_file(case_id) if self.files else None

    def attention_file(self, case_id: str) -> Optional[str]:
        return self.files.label_file(case_id, ATTENTION_TAG) if self.files else None

    def modality_of(self, case_id: str) -> str:
        """The case's DICOM modality code (``CT`` or ``MR``); ``CT`` when nothing says otherwise."""
        return self.files.modality_code(case_id) if self.files else "CT"

    def ohif_link(self, case_id: str) -> Optional[str]:
        """Where OHIF shows this case with the version a reader should look at (the final, else the current
        version: submitted, a draft, or the pre-label) as an overlay, when a DICOMweb datastore and OHIF are in use.

        The SEG of that version is found by its UIDs (:func:`amoslabel.dicom.naming.seg_uids`) among the study's
        series; without one (a version saved from Slicer as a draft) the study opens on the scan alone.
        """
        study = self.files.study_uid(case_id) if self.ohif_viewer and self.files else None
        if not study:
            return None
        with self.store.read() as s:
            case = s.get(Case, case_id)
            version = (case.final_version or case.current_version) if case else None
        stored = self.files.seg_series(case_id) if version else set()
        kinds = (SegKind.FINAL, SegKind.SUBMITTED, SegKind.DRAFT, SegKind.PRELABEL)
        seg = next((uid for uid in (seg_uids(case_id, version, k)[0] for k in kinds) if uid in stored), None)
        return ohif_viewer_url(self.ohif_viewer, study, case_id, seg)

    def read_case_label(self, case_id: str, path: str | Path, name: str = "label") -> sitk.Image:
        """An uploaded label for a case, read and on its scan's exact grid; the header's grid is checked before any
        voxel is read (:func:`amoslabel.volume.read_label_on_grid`). Unchecked against a scan not on this server."""
        image = self.image_file(case_id)
        if image:
            return read_label_on_grid(image, path, self.max_voxels, name)
        return read_label(path, self.max_voxels, name)

    def check_label_grid(self, case_id: str, label: sitk.Image) -> sitk.Image:
        """``label`` on its case's exact scan grid; refused (422) when it is not on that grid. Unchecked when the
        scan is not on this server."""
        image = self.image_file(case_id)
        return check_on_grid(image, label, f"label for {case_id}") if image else label

    def hidden_seg_series(self, who: Principal, study_uid: str) -> Set[str]:
        """The SEG series of a study that ``who`` must not see now: the other seniors' edits of a round that is
        blind to them (:mod:`review.blinding`); what a DICOM viewer lists and retrieves is filtered by it."""
        if who.role != "senior" or self.files is None or not _ID_LIKE.fullmatch(study_uid or ""):
            return set()
        hidden: Set[str] = set()
        with self.store.read() as s:
            for case_id in self.files.cases_of_study(study_uid):
                case = s.get(Case, case_id)
                blind = blind_round(s, case, who) if case is not None else None
                if blind is None:
                    continue
                edits = s.execute(
                    select(LabelVersion.id, LabelVersion.author_user_id).where(
                        LabelVersion.case_id == case_id,
                        LabelVersion.round == blind.round,
                        LabelVersion.kind == REVIEWER_EDIT,
                        LabelVersion.author_user_id != who.id,
                    )
                ).all()
                hidden |= {seg_uids(case_id, version_id, SegKind.REVIEWER_EDIT)[0] for version_id, _ in edits}
        return hidden

    def anchor_points(self, case_id: str, votes: List[Any]) -> List[Any]:
        """Votes whose comment point is given in mm (``point_world``, LPS) also get its voxel of the case's scan
        (``point_voxel``, the file's i, j, k, as ITK and the slice viewer count): a reader's click is kept both
        ways. A point outside the scan is refused (422); the scan is read for its header only. A malformed point is
        left to :func:`review.votes.parse_vote`, which says what is wrong with it."""

        def unanchored(vote: Any) -> bool:
            return isinstance(vote, dict) and is_point(vote.get("point_world")) and vote.get("point_voxel") is None

        image = self.image_file(case_id)
        if not image or not any(unanchored(v) for v in votes):
            return votes
        grid = Geometry.of_file(image)
        out = []
        for vote in votes:
            if unanchored(vote):
                index = grid.index_of(vote["point_world"])
                if index is None:
                    where = ", ".join(f"{v:g}" for v in vote["point_world"])
                    raise Unprocessable(f"the point {where} mm is outside the scan")
                vote = {**vote, "point_voxel": list(index)}
            out.append(vote)
        return out

    def sync_cases(self) -> None:
        """Every datastore image is a case. A new case with a label imported as final is final; one with a label
        imported as a pre-label (``import --labels-as prelabel``: tag ``original``) is pre-labelled, and routed.
        Cases left in consensus by a previous run are finalised."""
        if self.files is None:
            return
        with self.leadership.exclusively("amoslabel:sync-cases"):  # servers of a team starting together
            for image_id in self.workflow.register_cases(self.files.list_images()):
                final = self.files.label_file(image_id, FINAL_TAG)
                prelabel = None if final else self.files.label_file(image_id, ORIGINAL_TAG)
                if final:
                    self.workflow.import_final(image_id, final, "the datastore's final label at start-up")
                elif prelabel:
                    self.workflow.record_prelabel(image_id, prelabel, IMPORTED_PRELABEL, {"source": "import"})
        if self.leadership.is_leader():
            recovered = self.workflow.recover()
            if recovered:
                log.info(f"review: finalised {recovered} case(s) left in consensus by a previous run")

    def start_background(self) -> None:
        """Take part in leading the team's background work (the server process only; see
        :mod:`amoslabel.cluster.leadership`)."""
        self.leadership.start()
        self.background.start()
        log.info(f"review: background work by the team's leader ({self.leadership.description})")

    def stop_background(self) -> None:
        self.background.stop()
        self.leadership.stop()

    def _finalise_settled(self) -> int:
        """The leader's sweep: finalise cases that have been in consensus a while (voted on another server, or left
        by a server that died before finalising)."""
        return self.workflow.recover(settled_s=SETTLED_S, queued=self._in_queue)

    def _in_queue(self, case_id: str) -> bool:
        """Whether the case waits on this process's finaliser, queued recently enough to leave it there (a finaliser
        stuck on one case must not keep the others in consensus)."""
        return time.monotonic() - self._queued.get(case_id, -math.inf) < QUEUED_TRUST_S

    def image_added(self, case_id: str) -> None:
        """A new scan is a new case at once: routable, and scored without waiting."""
        self.workflow.register_case(case_id)
        for listener in self.new_case_listeners:
            listener(case_id)

    def record_inference(self, request: Dict[str, Any], result: Dict[str, Any]) -> None:
        """After ``/infer`` on a case: audit who opened the scan through a viewer; a case's first pre-label starts
        its workflow (Slicer's auto-segmentation, or the server's own) and goes to the datastore's viewers. A click's
        answer is saved as the user's version; refused, its file in the answers' folder goes with the refusal."""
        params = result.get("params") or {}
        whole = params.pop(WHOLE_LABEL_KEY, None)  # a server's path: never in the answer
        if whole and Path(whole).resolve().parent != results_folder().resolve():
            # only an infer task writes this key, into the answers' folder; anything else is not ours to read or delete
            log.warning(f"ignored a whole label file outside the answers' folder: {str(whole)[:200]!r}")
            whole = None
        try:
            self._record_inference(request, result, params, whole)
        except BaseException:
            answer = result.get("file")
            if answer and Path(answer).resolve().parent == results_folder().resolve():
                Path(answer).unlink(missing_ok=True)  # refused: the answer never leaves, and is not kept either
            raise
        finally:
            if whole:
                Path(whole).unlink(missing_ok=True)

    def _record_inference(
        self, request: Dict[str, Any], result: Dict[str, Any], params: Dict[str, Any], whole: Optional[str]
    ) -> None:
        case_id = request.get("case_id")
        if not case_id:
            return
        if params.get("interaction") == CLICK_RESULT and result.get("file"):
            saved = whole or result["file"]
            params["label_version"] = self.save_click(request.get("client_id"), case_id, saved, params)
            return
        if request.get("client_id"):
            model = request.get("requested_model") or request.get("model")
            self.workflow.record_opened(str(request["client_id"]), case_id, f"viewer /infer/{model}")
        if result.get("file") and self.workflow.register_case(case_id) == "new":
            self.store_prelabel(case_id, result["file"], result.get("params") or {})

    def store_prelabel(self, case_id: str, label_file: str, params: Dict[str, Any]) -> int:
        """A model's pre-label of a case as a new label version, with the infer task's result as its provenance
        (``params``: model, version, tag, preset, preprocessing ...); the datastore's viewers are told. The one path
        by which a server's ``/infer`` and a cohort run (:mod:`cohort`) store a pre-label. Returns the version id.

        Raises:
            Conflict: the case is past pre-labelling (with a junior, in review, final).
        """
        tag = params.get("model_tag") or f"{params.get('model')}:v{params.get('model_version')}"
        version = self.workflow.record_prelabel(case_id, label_file, tag, {"params": params})
        if self.files is not None:
            self.files.prelabel_recorded(case_id, label_file, tag, version)
        return version

    def record_download(self, who: str, case_id: str, what: str) -> None:
        """Audit a download of a case's scan or label through the server (``what``: ``image``, ``label final``...)."""
        self.workflow.record_opened(who, case_id, f"download {what}", action="download")

    def record_dicomweb_read(self, who: str, uid: str) -> None:
        """Audit a read through a DICOMweb proxy; ``uid`` is the series (a DICOMweb case's id) or study it asked
        for. A series that is a case, or a study that holds cases, goes in the history of those cases."""
        with self.store.write() as s:
            case = s.get(Case, uid) if _ID_LIKE.fullmatch(uid) else None
            cases = [case.id] if case else [c for c in self._cases_of_study(uid) if s.get(Case, c) is not None]
            for case_id in cases or [None]:
                audit.record(s, case_id, who, "dicomweb_read", None, None, f"DICOMweb read of {uid}")

    def _cases_of_study(self, uid: str) -> List[str]:
        return self.files.cases_of_study(uid) if self.files is not None and _ID_LIKE.fullmatch(uid) else []

    def _published(self, case_id: str, version_file: Path, info: Dict[str, Any]) -> None:
        if self.files is not None:
            self.files.publish_final(case_id, version_file, info)
        for listener in self.final_listeners:
            listener()

    # -- withdrawal ---------------------------------------------------------------------------------------------
    def withdraw(self, who: Principal, case_id: str, reason: str) -> Dict[str, Any]:
        """Withdraw a case (admin): out of every queue, scoring and training; its scan and labels leave the
        datastore for an archive (``.amoslabel/withdrawn/<case>/``). Nothing is deleted; :meth:`purge` deletes."""
        summary = self.workflow.withdraw(who, case_id, reason)
        archive = self.files.withdraw_image(case_id) if self.files is not None else None
        if archive is not None:
            with self.store.write() as s:
                audit.record(s, case_id, who.name, "archive", "withdrawn", "withdrawn", f"scan and labels in {archive}")
        return {**summary, "archive": str(archive) if archive else None}

    def purge(self, who: Principal, case_id: str) -> Dict[str, Any]:
        """Delete what a withdrawn case left (admin): its archived scan and labels, its label versions and its
        import record. Its rows and history stay, as the record that it existed and was purged."""
        who.require("admin")
        summary = case_detail(self.workflow, case_id, who)
        if summary["state"] != "withdrawn":
            raise Conflict(f"case {case_id!r} is {summary['state']}: only a withdrawn case is purged")
        versions = self.store.versions.root / case_id
        deleted = sum(1 for p in versions.glob("*") if p.is_file()) if versions.is_dir() else 0
        shutil.rmtree(versions, ignore_errors=True)
        deleted += self.files.purge_withdrawn(case_id) if self.files is not None else 0
        with self.store.write() as s:
            audit.record(s, case_id, who.name, "purge", "withdrawn", "withdrawn", f"{deleted} file(s) deleted")
        return {"case_id": case_id, "deleted_files": deleted}

    # -- after a review -------------------------------------------------------------------------------------------
    def after_review(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        """Queue finalising when a review brought the case to consensus (the vote answers at once); tell the
        viewers' label info when it went back to the junior."""
        if summary.get("state") == "consensus" and self.leadership.is_leader():  # else the leader's sweep does it
            case_id = summary["case_id"]
            self._queued[case_id] = time.monotonic()
            try:
                self._finaliser.submit(self._finalise, case_id)
            except RuntimeError:  # the executor is shut down (the server stopping): the sweep or a restart does it
                self._queued.pop(case_id, None)
                raise
        elif summary.get("state") in ("with_junior", "escalated") and self.files is not None:
            detail = case_detail(self.workflow, summary["case_id"], Principal(0, "system", "admin"))
            lines = [
                f"{organ}: {c['reviewer']}: {c['text']}" for organ, items in detail["feedback"].items() for c in items
            ]
            self.files.flag_working(
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
        except Exception:  # logged; the case stays in consensus, for the leader's sweep (and recover() at start-up)
            log.exception("finalising %s failed", case_id)
        finally:
            self._queued.pop(case_id, None)

    def wait_idle(self) -> None:
        """Block until queued finalising is done (tests, shutdown)."""
        self._finaliser.submit(lambda: None).result()

    # -- viewers ---------------------------------------------------------------------------------------------------
    def principal_for_client(self, client_id: Any) -> Principal:
        """The user a viewer request names in ``client_id`` (see the README on what that identifies)."""
        if not isinstance(client_id, str) or not client_id:
            raise Forbidden("this request names no user: set the client id in the viewer to your AMOS Label user")
        principal = self.accounts.by_name(client_id)
        if principal is None:
            raise Forbidden(f"client id {client_id[:64]!r} is not an AMOS Label user")
        return principal

    def check_viewer_save(self, image_id: str, tag: str, info: Dict[str, Any]) -> Optional[Principal]:
        """Who saves ``tag`` on ``image_id`` from a viewer, and whether they may: the datastore asks before it reads
        the file (ownership before content). None for a model's pre-label (tag ``original``).

        Raises:
            Forbidden: an admin's ``final``, the workflow's own tag, or a user without a lease on the case.
        """
        if tag == ORIGINAL_TAG:
            return None
        if tag == WORKING_TAG:
            raise Forbidden(
                f"the tag {WORKING_TAG!r} is written by the workflow only: save with `final` or a draft tag"
            )
        who = self.principal_for_client(info.get("client_id") or info.get("user"))
        self.workflow.register_case(image_id)
        if tag == FINAL_TAG and who.role == "admin":
            raise Forbidden("a final label comes from consensus, not from a save: admins resolve escalated cases")
        self.workflow.check_may_save(who, image_id)
        return who

    def save_answer(self, client_id: Any, case_id: str) -> Dict[str, Any]:
        """What a user's save just did (:mod:`review.save_answers`): version, submitted, state, round, who has it."""
        who = self.principal_for_client(client_id)
        with self.store.read() as s:
            case = s.get(Case, case_id)
            if case is None:
                return {}
            return save_answer(s, case, who, newest_version_by(s, case_id, who))

    def nothing_waits(self, client_id: Any) -> Dict[str, Any]:
        """Next Sample's answer when the user's queue is empty: why, and what to do (:mod:`review.empty_queue`)."""
        who = self.principal_for_client(client_id)
        with self.store.read() as s:
            return why_nothing_waits(s, who)

    def feedback(self, case_id: str) -> Optional[Dict[str, Any]]:
        """The seniors' feedback the junior of a case sent back works on (:func:`review.feedback.round_feedback`)."""
        with self.store.read() as s:
            case = s.get(Case, case_id)
            return round_feedback(s, case) if case is not None else None

    def save_from_viewer(self, image_id: str, label: sitk.Image, tag: str, info: Dict[str, Any]):
        """The datastore's save hook: a checked label, written once into the version store when the workflow takes
        it. Returns that version's file (the datastore links its label to it), ``KEPT_AS_VERSION`` for a reviewer's
        edit, or None to let the datastore store the save as it is."""
        if tag == ORIGINAL_TAG:
            # the exact version that made it ("unet:v3"; the prior's tag names its atlas), so it can be replayed
            params = info.get("params") if isinstance(info.get("params"), dict) else {}
            model = str(params.get("model_tag") or info.get("model") or "model")
            if self.workflow.register_case(image_id) not in ("new", "prelabelled"):
                return None  # a pre-label no longer replaces the case's label; MONAI Label keeps it as 'original'
            stored = self.store.versions.put(image_id, label)
            self.workflow.record_prelabel(image_id, stored.path, model, {"params": info.get("params")})
            return stored.path
        who = self.check_viewer_save(image_id, tag, info)
        stored = self.store.versions.put(image_id, label)
        self.workflow.save_version(who, image_id, stored.path, submit=(tag == FINAL_TAG and who.role == "junior"))
        # a junior's save is the case's working label; a reviewer's edit stays a version (see _save_edit)
        return stored.path if who.role == "junior" else KEPT_AS_VERSION

    def save_click(self, client_id: Any, case_id: str, label_file: str, params: Dict[str, Any]) -> int:
        """A click-refined label (:mod:`models.click_task`) as a label version by the user who clicked, kept as the
        datastore's ``working`` label like any viewer save. Returns the version id.

        Raises:
            Forbidden: the user may not save this case's label now (not its junior or one of its reviewers).
        """
        who = self.principal_for_client(client_id)
        asked = ("engine", "model", "network_from", "organs", "clicks", "foreground", "box_ijk", "strokes")
        info = {"via": "clicks", "clicks": {k: params[k] for k in asked if params.get(k)}}
        return self._save_edit(who, case_id, str(label_file), info)  # an NRRD answer: the store converts it

    def current_label_file(self, case_id: str, user: str) -> Optional[str]:
        """The label a user's next click starts from: the newest version this user saved in the case's current
        round, else the case's current label (the pre-label or the junior's), else None."""
        principal = self.accounts.by_name(user) if user else None
        with self.store.read() as s:
            case = s.get(Case, case_id)
            if case is None:
                return None
            if principal is not None:
                own = s.execute(
                    select(LabelVersion.path)
                    .where(LabelVersion.case_id == case_id, LabelVersion.author_user_id == principal.id)
                    .where(LabelVersion.round == case.round)
                    .order_by(LabelVersion.id.desc())
                    .limit(1)
                ).scalar()
                if own:
                    return own
            current = s.get(LabelVersion, case.current_version) if case.current_version else None
            return current.path if current else None

    def _save_edit(self, who: Principal, case_id: str, label: Any, info: Dict[str, Any]) -> int:
        """A user's label as a version (a junior's draft; a reviewer's edit). A junior's draft is also the datastore's
        ``working`` label, what a viewer loads for the case; a reviewer's edit is not: the other seniors load the
        submitted version they review, and never another reader's edit of the round (they vote blind,
        :mod:`review.blinding`)."""
        version_id = self.workflow.save_version(who, case_id, label, info=info)
        if self.files is not None and who.role == "junior":
            with self.store.read() as s:
                path = Path(s.get(LabelVersion, version_id).path)
            self.files.link_label(case_id, path, WORKING_TAG, {"client_id": who.name, "version": version_id})
        return version_id

    def step(self, who: Principal, case_id: str, action: str) -> Dict[str, Any]:
        """Undo or redo ``who``'s last label change on a case in this round (:mod:`review.undo`): a new version of
        theirs with the restored step's file, kept as any save of theirs is (a junior's is the ``working`` label).

        Returns:
            What the save did (:meth:`save_answer`), with ``restored``: the version whose label is back.
        """
        self.workflow.check_may_save(who, case_id)  # someone else's case is a 403, not "nothing to undo"
        with self.store.read() as s:
            case = s.get(Case, case_id)
            restored = step_to_restore(s, case, who, action)
            path, restored_id = Path(restored.path), restored.id
        self._save_edit(who, case_id, path, {"via": action, "undo_step": {"action": action, "restores": restored_id}})
        return {**self.save_answer(who.name, case_id), "restored": restored_id}

    def save_from_dicomweb(self, who: Principal, case_id: str, label: sitk.Image) -> Dict[str, Any]:
        """A segmentation stored from a DICOM viewer (OHIF's STOW-RS), already read onto its series' grid: a label
        version by ``who`` (a junior's draft, which the case page's *Submit for review* hands on; a reviewer's edit,
        which consensus fuses), kept as the datastore's ``working`` label like any viewer save.

        Returns:
            ``{"case_id", "version", "round", "kind", "author"}``: what the stored SEG is named after.
        """
        label = self.check_label_grid(case_id, label)
        version_id = self._save_edit(who, case_id, label, {"via": "dicomweb", "seg_stored": True})
        with self.store.read() as s:
            round_ = s.get(LabelVersion, version_id).round
        kind = SegKind.DRAFT if who.role == "junior" else SegKind.REVIEWER_EDIT
        return {"case_id": case_id, "version": version_id, "round": round_, "kind": kind, "author": who.pseudonym}


def ohif_viewer_url(viewer: str, study_uid: str, series_uid: str, seg_series_uid: Optional[str]) -> str:
    """OHIF's segmentation mode on one study, showing the scan's series and, if given, one SEG series on it."""
    series = series_uid + (f",{seg_series_uid}" if seg_series_uid else "")
    return f"{viewer.rstrip('/')}/segmentation?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series}"


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
        sample = {"id": claimed["case_id"], "state": claimed["state"], "round": claimed["round"]}
        sent_back = closed_round(SimpleNamespace(state=claimed["state"], round=claimed["round"])) is not None
        feedback = self.service.feedback(claimed["case_id"]) if sent_back else None  # a read only when there is some
        if feedback:  # a case sent back: what the seniors asked, per organ, with their points
            sample["feedback"] = feedback
        return sample
