"""DICOM series into a DICOMweb server (Orthanc), checked and de-identified first.

Each series is read whole before anything is sent (:func:`read_series`: missing slices, mixed series, missing
position tags, pixel data that cannot be decoded), then de-identified (:mod:`amoslabel.dicom.deidentify`, PS3.15 basic
profile; the mapping to the original UIDs stays in a private SQLite file that annotators never reach), then uploaded
file by file. If the server refuses one file, the files of that series already sent are deleted again: a series is
stored whole or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

from amoslabel.dicom.deidentify import UID_MAP, UidMap, deidentify_series, private_folder
from amoslabel.dicom.series import is_dicom_dir, read_series, series_headers
from amoslabel.errors import InputError
from amoslabel.dicom.orthanc import session, upload_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentSeries:
    """One series as stored on the server: its new (de-identified) UIDs and size."""

    folder: str
    series_uid: str
    study_uid: str
    instances: int


def series_folders(source: Path) -> List[Path]:
    """``source`` itself if it is a series folder, else its subfolders that hold DICOM files."""
    source = Path(source)
    if is_dicom_dir(source):
        return [source]
    found = sorted(d for d in source.iterdir() if d.is_dir() and is_dicom_dir(d)) if source.is_dir() else []
    if not found:
        raise InputError(f"{source}: no DICOM series here")
    return found


def pseudonym_for(uids: UidMap, patient_id: str) -> str:
    """A stable pseudonym for a patient, keyed by the installation's secret (via its UID mapping)."""
    key = uids.new_uid(f"patient:{patient_id}")
    return "AMOS-" + hashlib.sha256(key.encode()).hexdigest()[:10].upper()


def send_series(folder: Path, url: str, uids: UidMap) -> SentSeries:
    """Check, de-identify and upload one series folder; all of it or nothing."""
    read_series(folder)  # the whole series must read (and decode) before any of it leaves
    headers = next(iter(series_headers(folder).values()))
    pseudonym = pseudonym_for(uids, str(headers[0].get("PatientID", "")) or folder.name)
    with tempfile.TemporaryDirectory(prefix="deid-") as tmp:
        files = deidentify_series(folder, Path(tmp) / "series", uids, pseudonym)
        sent: List[str] = []
        try:
            for path in files:
                sent.append(upload_file(url, path))
        except Exception:
            for instance in sent:  # leave nothing of a half-sent series behind
                session().delete(f"{url}/instances/{instance}", timeout=60)
            raise
        new = next(iter(series_headers(Path(tmp) / "series").values()))[0]
    logger.info("sent %s (%d instances, de-identified as %s)", folder.name, len(files), pseudonym)
    return SentSeries(folder.name, str(new.SeriesInstanceUID), str(new.StudyInstanceUID), len(files))


def send_to_dicomweb(source: Path, orthanc_url: str, workspace: Path) -> List[SentSeries]:
    """Every series under ``source`` to the Orthanc at ``orthanc_url`` (its REST root, not /dicom-web)."""
    uids = UidMap(private_folder(workspace) / UID_MAP)
    try:
        return [send_series(folder, orthanc_url.rstrip("/"), uids) for folder in series_folders(source)]
    finally:
        uids.close()
