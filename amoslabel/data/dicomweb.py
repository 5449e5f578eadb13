"""A DICOMweb server (Orthanc) as the studies source, with the review workflow unchanged.

``--studies http://127.0.0.1:8042/dicom-web`` makes this the datastore. It is an :class:`AmosDatastore` over a local
working folder that mirrors the server: each CT or MR series found over QIDO-RS is fetched once over WADO-RS, kept
as its DICOM files (``<root>/<SeriesInstanceUID>/``) and converted to NIfTI with :func:`read_series` (the same
geometry checks as an import), under the SeriesInstanceUID as case id. Everything the workflow does (saves,
versions, routing, consensus) then runs exactly as on a folder of NIfTI files. What goes back to the server, as DICOM
SEG with coded organs (:mod:`amoslabel.dicom.seg`), is every version a reader needs in OHIF, named and numbered by
:mod:`amoslabel.dicom.naming` ("AMOS Label submitted v12 round 2 by junior #4"): each case's first pre-label, each
round's submitted version, reviewers' edits and every consensus-final label (drafts stored from OHIF itself come
through the server's STOW-RS endpoint, :mod:`amoslabel.server.viewer_dicomweb`). A SEG that cannot be uploaded is
kept in ``pending-seg/`` and sent again at the next sync, never dropped.

MONAI Label's own ``DICOMWebDatastore`` is not used: it codes every segment as spleen, counts any SEG on the server
as a final label (so a pre-label would count as ground truth), and has no place for the workflow's checks.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Set, Tuple

import pydicom
import SimpleITK as sitk
from filelock import FileLock
from dicomweb_client.api import DICOMwebClient

from amoslabel.data.datastore import AmosDatastore
from amoslabel.dicom.series import read_series, series_headers
from amoslabel.dicom.naming import PRELABEL_PREFIX, SegKind, seg_description, seg_uids
from amoslabel.dicom.seg import write_seg
from amoslabel.errors import InputError
from amoslabel.volume import write_image
from amoslabel.workspace import Workspace

logger = logging.getLogger(__name__)

IMAGE_MODALITIES = ("CT", "MR")
_MODALITY, _STUDY_UID, _SERIES_UID, _DESCRIPTION = "00080060", "0020000D", "0020000E", "0008103E"


def _value(entry: Dict[str, Any], tag: str) -> Optional[str]:
    values = entry.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


class AmosDicomWebDatastore(AmosDatastore):
    """An :class:`AmosDatastore` mirroring the CT and MR series of a DICOMweb server; labels go back as DICOM SEG."""

    def __init__(self, url: str, root: Path, sync_interval_s: float = 30.0, **kwargs):
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(url=self.url)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pending = Workspace(self.root).pending_seg
        self.sync_interval_s = sync_interval_s
        self._synced_at = 0.0
        self._sync_lock = threading.Lock()
        self.studies_of: Dict[str, str] = {}  # series uid -> study uid
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seg-send")  # versions for readers
        super().__init__(str(self.root), **kwargs)
        self.sync(force=True)

    def name(self) -> str:
        return self.url

    # -- mirroring the server -----------------------------------------------------------------------------------
    def remote_series(self) -> List[Dict[str, str]]:
        """CT and MR series on the server (QIDO-RS), with their study and modality."""
        found = []
        for entry in self.client.search_for_series():
            modality = _value(entry, _MODALITY)
            series, study = _value(entry, _SERIES_UID), _value(entry, _STUDY_UID)
            if modality in IMAGE_MODALITIES and series and study:
                found.append({"series": series, "study": study, "modality": modality})
        return found

    def sync(self, force: bool = False) -> int:
        """Fetch series that are new on the server, and resend SEGs that could not be sent. Returns how many new.

        In a team, only the leader syncs periodically (the others find what it fetched in the shared working folder,
        :meth:`has_image`); the start-up sync of every server takes a file lock on the working folder, so two
        processes never fetch into it at once."""
        if not force and (time.monotonic() - self._synced_at < self.sync_interval_s or not self.leads()):
            return 0
        with self._sync_lock, FileLock(self.root / ".sync.lock"):
            self._synced_at = time.monotonic()
            added = 0
            for entry in self.remote_series():
                self.studies_of[entry["series"]] = entry["study"]
                if self.has_image(entry["series"]) or self.is_withdrawn(entry["series"]):
                    continue
                try:
                    self._fetch(entry)
                    added += 1
                except Exception as e:  # one bad series must not hide the others; it is tried again next sync
                    logger.error("DICOMweb: series %s not imported: %s", entry["series"], e)
            self._resend_pending()
        if added:
            logger.info("DICOMweb: %d new series from %s", added, self.url)
        return added

    def _fetch(self, entry: Dict[str, str]) -> None:
        series = entry["series"]
        folder = self.root / series
        scratch = Workspace(self.root).scratch
        staging = scratch / f"fetch-{series}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for ds in self.client.retrieve_series(entry["study"], series):
            ds.save_as(staging / f"{ds.SOPInstanceUID}.dcm", write_like_original=False)
        image = read_series(staging)  # the import's checks: missing slices, mixed series, missing positions
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        nifti = scratch / f"{series}.nii.gz"
        write_image(image, nifti)
        try:
            self.add_image(series, str(nifti), {"modality": "mri" if entry["modality"] == "MR" else "ct"})
        finally:
            nifti.unlink(missing_ok=True)
        self.records.update(series, {"source": "dicomweb", "study_uid": entry["study"], "server": self.url})

    def list_images(self) -> List[str]:
        self.sync()
        return super().list_images()

    def study_uid(self, image_id: str) -> Optional[str]:
        return self.records.get(image_id).get("study_uid")

    # -- labels back to the server ----------------------------------------------------------------------------------
    def publish_final(self, image_id: str, version_file, info: Dict[str, Any]) -> Optional[str]:
        saved = super().publish_final(image_id, version_file, info)
        # the label version (review history) and round it came from: the SEG names exactly what was approved
        try:
            self.send_seg(image_id, str(version_file), SegKind.FINAL, info.get("version"), info.get("round"))
        except Exception:  # the final stands (store, datastore, training); only Orthanc's copy is missing
            logger.exception("DICOMweb: the final label of %s could not be written as DICOM SEG", image_id)
        return saved

    def prelabel_recorded(self, image_id: str, label_file: str, model_tag: str, version: int) -> None:
        """OHIF shows the case's first pre-label from the DICOMweb server: send it as a SEG there."""
        try:
            self.send_seg(image_id, label_file, SegKind.PRELABEL, version, 1, author=model_tag)
        except Exception:  # the viewer still gets its pre-label; only OHIF's copy is missing
            logger.exception(f"{image_id}: the pre-label could not be stored as DICOM SEG")

    def version_for_readers(self, notice: Dict[str, Any]) -> None:
        """A submitted version or a reviewer's edit goes to the server as a SEG, in the background (a submit answers
        at once). A reviewer's edit stored from a DICOM viewer is there already (its own SEG, renamed); a draft stored
        from the viewer and then submitted gets its *submitted* SEG here."""
        if notice["kind"] != "submitted" and notice.get("info", {}).get("seg_stored"):
            return  # a reviewer's edit stored from the viewer: its own SEG is there, under this version's name
        self._sender.submit(self._send_notice, notice)

    def _send_notice(self, notice: Dict[str, Any]) -> None:
        kind = SegKind.SUBMITTED if notice["kind"] == "submitted" else SegKind.REVIEWER_EDIT
        try:
            self.send_seg(notice["case_id"], notice["path"], kind, notice["version"], notice["round"], notice["author"])
        except Exception:  # the version stands in the workflow; only the DICOM server's copy is missing
            logger.exception(
                "DICOMweb: %s v%s of %s not written as DICOM SEG", kind.value, notice["version"], notice["case_id"]
            )

    def wait_sent(self) -> None:
        """Block until every SEG queued so far was sent (or kept for the next sync)."""
        self._sender.submit(lambda: None).result()

    def cases_of_study(self, study_uid: str) -> List[str]:
        """The cases (series) of a study, as the last sync found them."""
        return [
            series for series, study in list(self.studies_of.items()) if study == study_uid and self.has_image(series)
        ]

    def seg_series(self, image_id: str) -> Set[str]:
        """The SeriesInstanceUIDs of the SEGs the server holds in the case's study (QIDO-RS)."""
        study = self.study_uid(image_id)
        if not study:
            return set()
        found = self.client.search_for_series(study, search_filters={"Modality": "SEG"})
        return {uid for uid in (_value(entry, _SERIES_UID) for entry in found) if uid}

    def send_seg(
        self,
        image_id: str,
        label_file: str,
        kind: SegKind,
        version: Optional[int],
        round_: Optional[int],
        author: Optional[str] = None,
    ) -> Optional[Path]:
        """Write a label version as DICOM SEG on its source series, named by :mod:`amoslabel.dicom.naming`, and store
        it on the server (STOW-RS). Returns the kept file when the server could not take it (sent at the next sync).
        """
        series_dir = self.series_folder(image_id)
        if not series_dir.is_dir():
            raise InputError(f"{image_id}: not a series from {self.url}", status=404)
        self.pending.mkdir(parents=True, exist_ok=True)
        out = self.pending / f"{image_id}-{time.monotonic_ns()}.dcm"
        description = seg_description(kind, version, round_, author)
        uids = seg_uids(image_id, version, kind) if version is not None else None
        write_coded_seg(label_file, series_dir, out, description, kind == SegKind.PRELABEL, uids)
        try:
            self.client.store_instances([pydicom.dcmread(out)])
        except Exception as e:  # the server is down: keep the SEG and send it at the next sync
            logger.error("DICOMweb: %s for %s kept in %s, not sent: %s", description, image_id, self.pending, e)
            return out
        out.unlink()
        logger.info("DICOMweb: stored %r for %s", description, image_id)
        return None

    def series_folder(self, image_id: str) -> Path:
        """The folder of a case's DICOM files (its series, as fetched from the server)."""
        return self.root / image_id

    def keep_for_resend(self, ds: pydicom.Dataset) -> Path:
        """Keep a SEG the server did not take; the next sync sends it."""
        self.pending.mkdir(parents=True, exist_ok=True)
        out = self.pending / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(str(out), write_like_original=False)
        return out

    def _resend_pending(self) -> None:
        for path in sorted(self.pending.glob("*.dcm")) if self.pending.is_dir() else []:
            try:
                self.client.store_instances([pydicom.dcmread(path)])
                path.unlink()
                logger.info("DICOMweb: sent kept SEG %s", path.name)
            except Exception as e:
                logger.warning("DICOMweb: kept SEG %s still not sent: %s", path.name, e)
                return


def write_coded_seg(
    label_file: str,
    series_dir: Path,
    out: Path,
    description: str,
    automatic: bool,
    uids: Optional[Tuple[str, str]] = None,
) -> Path:
    """The label as a DICOM SEG on its series; label 15 coded from the series' PatientSex (its region if unknown)."""
    sex = str(next(iter(series_headers(series_dir).values()))[0].get("PatientSex", "") or "").strip().upper()
    return write_seg(
        sitk.ReadImage(label_file),
        series_dir,
        out,
        series_description=description[:64],
        algorithm_type="AUTOMATIC" if automatic else "MANUAL",
        patient_sex=sex if sex in ("M", "F") else "unknown",
        uids=uids,
    )


def seg_for_infer(
    series_dir: str, label: str, label_info: Any = None, file_ext: str = "*", use_itk: bool = True
) -> str:
    """MONAI Label's ``nifti_to_dicom_seg`` signature: a pre-label as a coded DICOM SEG file on its source series."""
    out = Path(tempfile.mkstemp(suffix=".dcm")[1])
    return str(write_coded_seg(label, Path(series_dir), out, f"{PRELABEL_PREFIX} (infer)", automatic=True))
