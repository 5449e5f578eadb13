"""De-identify DICOM at import: PS3.15 Annex E Basic Application Level Confidentiality Profile.

Library: ``dicom-anonymizer`` 2.1.0 (KitwareMedical/dicom-anonymizer, pin ``dicom-anonymizer==2.1.0``; it needs
only ``pydicom`` and ``tqdm`` and works with our pydicom 2.4.4). It is the one candidate that ships PS3.15 Table
E.1-1 itself, tag by tag with its action codes (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*; we use its 2026c table)
and removes private tags. ``deid`` 0.4 and ``dicognito`` 0.19 require pydicom 3; their pydicom-2 releases
(deid 0.3.25, dicognito 0.17) use their own hand-made rule sets instead of the table's action codes.

What we add around it:
- UIDs (every U tag, file meta included) become ``2.25.<HMAC-SHA256(secret, uid)>``: the same original gives the
  same new UID across files and imports; the secret is per installation, kept in the private mapping database.
- The library only visits top-level tags (K sequences are not "cleaned"), so every remaining sequence item gets
  the same profile; X/Z/U* references (Referenced/Source Image Sequence) keep their classes and get mapped UIDs.
- Retain Patient Characteristics Option (113108), limited to PatientSex, PatientAge, PatientSize, PatientWeight
  (useful for AMOS-style stratification); the option's other attributes still get the basic profile.
- PatientName and PatientID become the caller's pseudonym, so DICOMweb viewers still group studies; the
  128-byte preamble is zeroed; PatientIdentityRemoved, DeidentificationMethod(CodeSequence) are set.

Not covered: Clean Pixel Data (burned-in text; CT/MR rarely have any), Retain Longitudinal Temporal Information
(dates become 00010101), Clean Descriptors (descriptions are removed, as the basic profile says). UIDs inside
D-action sequences (e.g. Content Sequence, absent from CT/MR images) get the library's random UIDs.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pydicom
from dicomanonymizer import simpledicomanonymizer as sda
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from amoslabel.errors import Conflict, InputError, Unprocessable
from amoslabel.workspace import Workspace

logger = logging.getLogger(__name__)

TABLE = "dicomfields_2026c"  # the PS3.15 Table E.1-1 edition shipped with dicom-anonymizer 2.1.0
_TAGS = dicom_anonymization_database_selector(TABLE)
_RETAINED = {(0x0010, 0x0040), (0x0010, 0x1010), (0x0010, 0x1020), (0x0010, 0x1030)}  # sex, age, size, weight
_PATIENT = {(0x0010, 0x0010), (0x0010, 0x0020)}  # name and id: set to the pseudonym
_PROFILE = {tag for tag in _TAGS["ALL_TAGS"] if len(tag) == 2}
_MAIN_UIDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"}
# Values the library writes for D/Z actions; anything else in a profile tag is treated as PHI by find_phi.
_DUMMIES = {"", "ANONYMIZED", "00010101", "000000.00", "00010101010101.000000+0000", "0", "000Y"}
_METHOD_CODES = {  # CID 7050
    "113100": "Basic Application Confidentiality Profile",
    "113108": "Retain Patient Characteristics Option",
}
_METHOD = [*_METHOD_CODES.values(), f"dicom-anonymizer {version('dicom-anonymizer')} table {TABLE}"]

# A UID first seen as a reference (another slice's ReferencedSOPInstanceUID) takes its main name when met as such.
_UPSERT = (
    "INSERT INTO uids VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(original) DO UPDATE SET kind = excluded.kind"
    f" WHERE excluded.kind IN ({', '.join(repr(k) for k in sorted(_MAIN_UIDS))})"
)

Tag = Tuple[int, ...]


UID_MAP = "uid-map.sqlite"


def private_folder(workspace: str | Path) -> Path:
    """Where a workspace keeps its UID mapping: ``<workspace>/.amoslabel/private``, 0700, never served."""
    folder = Workspace(Path(workspace)).private
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


class UidRecord(NamedTuple):
    original: str
    new: str
    kind: str  # the keyword of the tag it was first seen in
    patient_id: str
    pseudonym: str
    imported_at: str


class UidMap:
    """Private SQLite mapping of original to new UIDs, with the per-installation secret (file mode 0600, WAL).

    Keep it outside what annotators can reach (``<studies>/.amoslabel/private/``): it re-identifies every case.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file 0600 before SQLite opens it, so it is never readable by others, not even briefly.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")  # -wal/-shm files inherit the database file's mode
        self._conn.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
            "CREATE TABLE IF NOT EXISTS uids (original TEXT PRIMARY KEY, new TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,"
            " patient_id TEXT NOT NULL, pseudonym TEXT NOT NULL, imported_at TEXT NOT NULL);"
        )
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_bytes(32),))
        self._secret: bytes = self._conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0]

    def new_uid(self, original: str) -> str:
        """The replacement of ``original``: a keyed hash, so the same UID always maps to the same new one."""
        digest = hmac.new(self._secret, original.strip().encode(), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))  # PS3.5 B.2 UUID-style UID, at most 44 chars

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for everything recorded inside (a series): all of it is stored, or none."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record(self, pairs: Dict[str, Tuple[str, str]], patient_id: str, pseudonym: str) -> None:
        """Store ``{original: (new, kind)}``; a UID already recorded keeps its first import time."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = [(o, n, k, patient_id, pseudonym, now) for o, (n, k) in pairs.items()]
        with self._lock, self.batch() if not self._conn.in_transaction else _nothing():
            self._conn.executemany(_UPSERT, rows)

    def by_original(self, original: str) -> Optional[UidRecord]:
        """The record of an original UID, or None."""
        return self._one("SELECT * FROM uids WHERE original = ?", original)

    def by_new(self, new: str) -> Optional[UidRecord]:
        """The record of a de-identified UID (the way back to the original), or None."""
        return self._one("SELECT * FROM uids WHERE new = ?", new)

    def patient_id(self, pseudonym: str) -> Optional[str]:
        """The original PatientID behind a pseudonym, or None."""
        row = self._conn.execute("SELECT patient_id FROM uids WHERE pseudonym = ? LIMIT 1", (pseudonym,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._conn.close()

    def _one(self, sql: str, value: str) -> Optional[UidRecord]:
        with self._lock:
            row = self._conn.execute(sql, (value,)).fetchone()
        return UidRecord(*row) if row else None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def deidentify_dataset(ds: Dataset, uids: UidMap, pseudonym: str) -> Dataset:
    """A de-identified copy of ``ds`` (never modified); its UID mapping is recorded in ``uids``."""
    _check_pseudonym(pseudonym)
    out = copy.deepcopy(ds)
    seen: Dict[str, Tuple[str, str]] = {}
    rules = _rules(partial(_map_uids, uids, seen))
    _apply(out, rules)
    out.PatientName = pseudonym
    out.PatientID = pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = _METHOD
    out.DeidentificationMethodCodeSequence = [_code(v, meaning) for v, meaning in _METHOD_CODES.items()]
    out.LongitudinalTemporalInformationModified = "REMOVED"
    out.preamble = b"\0" * 128  # the preamble is free-form and may hide anything
    uids.record(seen, str(ds.get("PatientID", "")), pseudonym)
    return out


def deidentify_series(src_dir: str | Path, dst_dir: str | Path, uids: UidMap, pseudonym: str) -> List[Path]:
    """De-identify every file of ``src_dir`` into the new folder ``dst_dir``, named by new SOP Instance UID.

    The files are written to a temporary sibling folder renamed to ``dst_dir`` at the end, and the UID mapping
    is one transaction, so a failure leaves neither files nor mapping rows.

    Raises:
        InputError: a file is not DICOM, or ``src_dir`` holds none; Unprocessable: a file has no pixel data;
            Conflict: ``dst_dir`` exists and is not empty.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    files = sorted(f for f in src.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise InputError(f"{src.name}: no files to de-identify")
    if dst.exists() and any(dst.iterdir()):
        raise Conflict(f"{dst}: already exists and is not empty")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))  # same filesystem: rename is atomic
    try:
        with uids.batch():
            names = [_write(deidentify_dataset(read_image(f), uids, pseudonym), tmp) for f in files]
        tmp.chmod(0o755)
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("de-identified %d file(s) of %s as %s", len(names), src.name, pseudonym)
    return [dst / n for n in names]


def read_image(path: Path) -> Dataset:
    """Read one DICOM image file, with a clear error naming it when it is not DICOM or has no pixel data."""
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises many types for a damaged file
        raise InputError(f"{path.name}: not a readable DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise Unprocessable(f"{path.name}: DICOM file without pixel data; only images can be imported")
    return ds


def find_phi(ds: Dataset) -> List[str]:
    """Tags (as ``(gggg,eeee) Keyword``, never their values) that the profile cleans but still hold a value.

    PatientName/PatientID count as pseudonyms when PatientIdentityRemoved is YES and they are equal; replaced UIDs
    must be ``2.25.`` UIDs (an original ``2.25.`` UID is not detected here: check the map for that).
    """
    found: List[str] = []
    pseudonymised = ds.get("PatientIdentityRemoved") == "YES" and str(ds.get("PatientName")) == ds.get("PatientID")
    uid_tags = set(_TAGS["U_TAGS"])

    def visit(_: Dataset, elem: pydicom.DataElement) -> None:
        tag = (elem.tag.group, elem.tag.element)
        name = f"{elem.tag} {elem.keyword or 'private'}"
        if elem.tag.is_private:
            found.append(name)
        elif tag in _RETAINED or elem.VR == "SQ" or elem.value is None or not _in_profile(tag):
            return
        elif tag in _PATIENT:
            found.extend([] if pseudonymised else [name])
        elif tag in uid_tags:
            found.extend(name for v in _values(elem) if v and not v.startswith("2.25."))
        elif any(v not in _DUMMIES for v in _values(elem)):
            found.append(name)

    ds.walk(visit)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.walk(visit)
    return found


def _rules(uid_action: Callable[[Dataset, Tag], None]) -> Dict[Tag, Callable]:
    """The profile's actions, with our UID mapping, the retained characteristics and sequences kept for recursion."""
    rules: Dict[Tag, Callable] = {tag: uid_action for tag in _TAGS["U_TAGS"]}
    rules.update({tag: sda.keep for tag in _RETAINED | set(_TAGS["X_Z_U_STAR_TAGS"])})
    # For Type 3 sequences "X/..." we take X: the library's D or Z would fill them with random UIDs and dummies.
    for key in ("X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS"):
        rules.update({tag: sda.delete for tag in _TAGS[key] if _vr(tag) == "SQ"})
    return rules


def _apply(ds: Dataset, rules: Dict[Tag, Callable]) -> None:
    """Apply the profile to ``ds`` and, since the library stops at the top level, to every kept sequence item."""
    sda.anonymize_dataset(ds, rules, delete_private_tags=True, base_rules_gen=partial(sda.initialize_actions, TABLE))
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _apply(item, rules)


def _map_uids(uids: UidMap, seen: Dict[str, Tuple[str, str]], ds: Dataset, tag: Tag) -> None:
    """U action: replace the UID(s) of ``tag`` by their keyed hash, noting each pair for the map."""
    elem = ds.get(tag)
    if elem is None or not elem.value:
        return
    kind = keyword_for_tag(tag) or "UID"
    new = []
    for old in _values(elem):
        new.append(uids.new_uid(old))
        if old not in seen or kind in _MAIN_UIDS:  # file meta comes first; prefer the main tag's name
            seen[old] = (new[-1], kind)
    elem.value = new if elem.VM > 1 else new[0]


def _write(ds: Dataset, folder: Path) -> str:
    name = f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(str(folder / name), write_like_original=False)
    return name


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _check_pseudonym(pseudonym: str) -> None:
    # PatientID is LO (64 chars, no backslash); PN forbids control characters.
    if not pseudonym or len(pseudonym) > 64 or "\\" in pseudonym or not pseudonym.isprintable():
        raise InputError(f"pseudonym {pseudonym!r}: must be 1-64 printable characters without a backslash")


def _in_profile(tag: Tuple[int, int]) -> bool:
    if tag in _PROFILE:
        return True
    masked = (r for r in _TAGS["ALL_TAGS"] if len(r) == 4)  # repeating groups: overlays, curves
    return any(tag[0] & r[2] == r[0] & r[2] and tag[1] & r[3] == r[1] & r[3] for r in masked)


def _values(elem: pydicom.DataElement) -> List[str]:
    value = elem.value
    values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    # Binary values: the library's dummies are b"" and b"Anonymized".
    return [v.decode("latin-1").upper() if isinstance(v, bytes) else str(v).strip() for v in values]


def _vr(tag: Tag) -> str:
    try:
        return dictionary_VR(tag[0] << 16 | tag[1])
    except KeyError:
        return ""
