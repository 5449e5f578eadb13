"""Snapshots while the store is being written, restore into a new folder, and a real server on the restored folder
serving the same images, labels, cases and label versions (R6 of the reliability suite)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from amoslabel.data import backup
from amoslabel.files import file_sha256
from amoslabel.errors import Conflict, InputError
from tests.conftest import amoslabel_command, NO_SCORER, ServerProcess
from tests.review.conftest import make_team


def _rows(database: Path):
    with sqlite3.connect(database) as db:
        cases = db.execute("SELECT id, state, round, current_version, final_version FROM cases ORDER BY id").fetchall()
        versions = db.execute("SELECT id, case_id, sha256, path FROM label_versions ORDER BY id").fetchall()
    return cases, versions


def _claimed(team, junior, case_id) -> bool:
    try:
        team.workflow.claim(junior, case_id)
        return True
    except Conflict:
        return False


def test_a_snapshot_under_writes_is_consistent_and_restores_elsewhere(tmp_path):
    studies = tmp_path / "studies"
    (studies / ".amoslabel").mkdir(parents=True)
    team = make_team(studies / ".amoslabel")  # the store as the server keeps it: <studies>/.amoslabel/review.db
    (studies / ".amoslabel" / "web-secret").write_text("s")
    os.chmod(studies / ".amoslabel" / "web-secret", 0o600)
    edits = [team.edited(f"edit{i}", organ) for i, organ in enumerate((1, 2, 3, 6))]
    juniors, owner = [team.users["j1"], team.users["j2"]], {}  # routing spreads the cases over both
    stop = threading.Event()
    written = []

    failed = []

    def writer():
        n = 0
        try:
            while not stop.is_set() and n < 400:
                case_id = f"case{n % 25:02d}"
                if team.workflow.register_case(case_id) == "new":
                    team.workflow.record_prelabel(case_id, edits[0], "unet:v1", {})
                    owner[case_id] = next(j for j in juniors if _claimed(team, j, case_id))
                team.workflow.save_version(owner[case_id], case_id, str(edits[n % len(edits)]), submit=False)
                written.append(case_id)
                n += 1
        except Exception as e:  # reported below: the snapshot must have been taken under writes
            failed.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20 and thread.is_alive():
            thread.join(0.05)
        assert not failed and thread.is_alive(), failed
        manifest = backup.snapshot(studies, tmp_path / "snap", progress=False)
    finally:
        stop.set()
        thread.join()
    assert not failed, failed
    snap_db = tmp_path / "snap" / ".amoslabel" / "review.db"
    cases, versions = _rows(snap_db)
    assert manifest["review_store"]["label_versions"] == len(versions) > 0
    for _, _, sha, path in versions:  # every version the snapshot's store names is in the snapshot, intact
        copied = tmp_path / "snap" / Path(path).relative_to(studies)
        assert copied.is_file() and file_sha256(copied) == sha

    restored = tmp_path / "elsewhere" / "studies"
    backup.restore(tmp_path / "snap", restored, progress=False)
    r_cases, r_versions = _rows(restored / ".amoslabel" / "review.db")
    assert r_cases == cases
    assert [v[:3] for v in r_versions] == [v[:3] for v in versions]
    for _, _, sha, path in r_versions:  # relocated to the restored folder
        assert Path(path).is_relative_to(restored) and file_sha256(Path(path)) == sha
    assert (restored / ".amoslabel" / "web-secret").stat().st_mode & 0o777 == 0o600


def test_restore_refuses_a_damaged_snapshot_or_a_used_folder(tmp_path):
    studies = tmp_path / "studies"
    (studies / ".amoslabel").mkdir(parents=True)
    make_team(studies / ".amoslabel").workflow.register_case("a")
    backup.snapshot(studies, tmp_path / "snap", progress=False)
    with pytest.raises(InputError, match="exists"):
        backup.snapshot(studies, tmp_path / "snap", progress=False)
    with pytest.raises(InputError, match="not empty"):
        backup.restore(tmp_path / "snap", studies, progress=False)
    with open(tmp_path / "snap" / ".amoslabel" / "review.db", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    with pytest.raises(InputError, match="damaged"):
        backup.restore(tmp_path / "snap", tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()


def test_backup_of_a_running_server_restores_to_a_server_with_the_same_data(server, sample_studies, tmp_path):
    snap, restored = tmp_path / "snap", tmp_path / "restored"
    for done in (amoslabel_command("backup", sample_studies, snap), amoslabel_command("restore", snap, restored)):
        assert done.returncode == 0, done.stderr
    refused = amoslabel_command("restore", snap, restored)
    assert refused.returncode == 2 and "not empty" in refused.stderr

    second = ServerProcess(restored, tmp_path, {"preset": "cpu-fast", **NO_SCORER})
    try:
        second.wait_ready()
        listing = [s.http.get(f"{s.url}/datastore/?output=all", timeout=60).json()["objects"] for s in (server, second)]
        assert set(listing[0]) == set(listing[1])
        for image_id, entry in listing[0].items():
            # attention maps are the background scorer's, rewritten whenever it runs: not part of what must survive
            labels = [{t for t in e.get("labels", {}) if t != "attention"} for e in (entry, listing[1][image_id])]
            assert labels[0] == labels[1], image_id
    finally:
        second.stop()
    original, copy = (_rows(p / ".amoslabel" / "review.db") for p in (snap, restored))
    assert copy[0] == original[0] and [v[:3] for v in copy[1]] == [v[:3] for v in original[1]]
