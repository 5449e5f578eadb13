"""Consistent snapshots of a studies folder while the server runs, and their restore on another machine.

What a snapshot holds: every SQLite database of the workspace (the review store, and any other) copied with SQLite's
online backup API, so each is one consistent state even under writes; then every other file of the studies folder
(scans, datastore labels and index, case records, immutable label versions, model versions), scans copied through
their links so that the snapshot stands alone. A link that points inside the studies folder (a datastore label that
is a label version, see ``datastore.py``) stays a link: its target is in the snapshot already. The databases go
first on purpose: label versions are written before their rows are committed, so every version a snapshot's store
names is already on disk when the files are copied.
A manifest lists each file with its size and SHA-256 and the store's counts (cases per state, label versions);
restore checks every hash before it writes anything, and writes into a fresh folder only.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from tqdm import tqdm

from amoslabel.errors import InputError
from amoslabel.files import file_sha256
from amoslabel.workspace import Workspace

MANIFEST = "amoslabel-snapshot.json"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal")  # live SQLite side files: the backup API already folded them in
_RELATIVE = Workspace(Path())  # the workspace's paths relative to the studies folder
_SKIPPED_FOLDERS = {_RELATIVE.scratch}  # scratch space of running requests


def _files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (relative), following links to files, leaving out scratch and SQLite side files."""
    for folder, dirs, names in os.walk(root):
        here = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if here / d not in _SKIPPED_FOLDERS and not d.endswith(".partial")]
        for name in names:
            if name.endswith(_SKIPPED_SUFFIXES) or name == MANIFEST:
                continue
            if (Path(folder) / name).is_file():
                yield here / name


def _internal_link(root: Path, relative: Path) -> str | None:
    """The relative target of a link that stays inside ``root`` (kept as a link), else None (copied through)."""
    path = root / relative
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    if os.path.isabs(target):
        return None
    resolved = (path.parent / target).resolve()
    return target if resolved.is_relative_to(root.resolve()) and resolved.is_file() else None


def _is_sqlite(path: Path) -> bool:
    if path.suffix not in SQLITE_SUFFIXES:
        return False
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _backup_sqlite(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        # One step: SQLite restarts a stepwise backup whenever another connection writes, so under steady writes it
        # never finishes. In WAL mode one step reads one consistent snapshot without blocking the writers.
        src.backup(dst, pages=-1)
        if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise RuntimeError(f"{source}: the backup copy failed SQLite's integrity check")
        dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
    finally:
        src.close()
        dst.close()
    os.chmod(target, source.stat().st_mode & 0o777)  # a private database stays private


def store_summary(database: Path) -> Dict[str, Any]:
    """Cases per state and label versions in a review store file (what a restore must give back)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM cases GROUP BY state ORDER BY state").fetchall())
        versions = db.execute("SELECT COUNT(*) FROM label_versions").fetchone()[0]
    return {"cases": sum(states.values()), "states": states, "label_versions": versions}


def snapshot(studies: Path, out: Path, progress: bool = True) -> Dict[str, Any]:
    """Write a consistent snapshot of ``studies`` to the new folder ``out``; returns its manifest."""
    studies, out = Path(studies), Path(out)
    if not studies.is_dir():
        raise InputError(f"{studies}: no such studies folder")
    if out.exists():
        raise InputError(f"{out} exists: a snapshot goes to a new folder")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.time()
    databases = [f for f in _files(studies) if _is_sqlite(studies / f)]
    for relative in databases:
        _backup_sqlite(studies / relative, staging / relative)
    # listed after the databases were copied: a version written meanwhile is named by them and must be in the copy
    files = list(_files(studies))
    entries: List[Dict[str, Any]] = []
    for relative in tqdm(files, desc="snapshot", unit="file", disable=not progress):
        target = staging / relative
        link = _internal_link(studies, relative)
        if link is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, target)
            entries.append({"path": str(relative), "link": link})
            continue
        if relative not in databases:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(studies / relative, target)  # through links (stands alone), with its mode (0600 stays)
            except FileNotFoundError:  # removed while we copied (a scratch or superseded file): not part of it
                continue
        entries.append({"path": str(relative), "bytes": target.stat().st_size, "sha256": file_sha256(target)})
    review_db = _RELATIVE.review_db
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": [os.path.abspath(studies), str(studies.resolve())],  # as the server was given it, and resolved
        "seconds": round(time.time() - started, 1),
        "databases": [str(d) for d in databases],
        "review_store": store_summary(staging / review_db) if review_db in databases else None,
        "files": entries,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    os.replace(staging, out)
    return manifest


def verify(snapshot_dir: Path) -> Dict[str, Any]:
    """The manifest of ``snapshot_dir``, after checking that every file it lists is there with its hash."""
    path = Path(snapshot_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{snapshot_dir}: not a snapshot (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        file = Path(snapshot_dir) / entry["path"]
        if "link" in entry:
            if not file.is_symlink() or os.readlink(file) != entry["link"] or not file.is_file():
                raise InputError(f"{snapshot_dir}: the link {entry['path']} is missing or broken; nothing was restored")
            continue
        if not file.is_file() or file_sha256(file) != entry["sha256"]:
            raise InputError(f"{snapshot_dir}: {entry['path']} is missing or damaged; nothing was restored")
    return manifest


def restore(snapshot_dir: Path, studies: Path, progress: bool = True) -> Dict[str, Any]:
    """Restore a verified snapshot into ``studies``, which must not exist or be empty."""
    studies = Path(studies)
    if studies.exists() and any(studies.iterdir()):
        raise InputError(f"{studies} is not empty: restore into a new folder")
    manifest = verify(snapshot_dir)
    staging = studies.with_name(studies.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for entry in tqdm(manifest["files"], desc="restore", unit="file", disable=not progress):
        target = staging / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if "link" in entry:
            os.symlink(entry["link"], target)
        else:
            shutil.copy2(Path(snapshot_dir) / entry["path"], target)
    review_db = Workspace(staging).review_db
    if review_db.is_file():
        for source in dict.fromkeys(manifest["source"]):
            _relocate_versions(review_db, Path(source), Path(os.path.abspath(studies)))
    if studies.exists():
        studies.rmdir()
    os.replace(staging, studies)
    return manifest


def _relocate_versions(database: Path, old_root: Path, new_root: Path) -> None:
    """Point the store's label-version paths (absolute) at the restored folder instead of the original one."""
    old, new = f"{old_root}{os.sep}", f"{new_root}{os.sep}"
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE label_versions SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
            (new, len(old) + 1, len(old), old),
        )
