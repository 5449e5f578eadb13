"""A cohort on a real local Ray cluster, started as the README says (Ray's token authentication; 2 model workers):
``python -m amoslabel cohort prelabel`` over 12 cases with one model worker killed (SIGKILL) midway, every case
pre-labelled exactly once, a corrupt scan reported and nothing else lost, a re-run that skips everything, provenance
identical to the real server's pre-label of the same case (``monailabel.client``, the class Slicer uses); then
``cohort score``, whose stored scores are the server's scorer's; and a driver the cluster refuses or cannot reach,
told why in one line.

The scans are the real small CT linked under 12 case ids (each its own case: own id, own workflow, own label
versions), plus one corrupt file. The UNet version has random weights (published here, as in the scoring tests): the
pipeline is under test, not the network's quality; the equal labels of the cohort and the server are the check.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from amoslabel.config import load_config
from amoslabel.processes import LoggedProcess
from amoslabel.workspace import Workspace
from models.networks import build_network
from models.versions import ModelStore
from tests.conftest import ROOT, ServerProcess, free_port
from tests.preloaded_python import PreloadedProcess, start_module

N_CASES = 12  # enough for a run stopped after 3, and a worker killed 3 cases later with cases left to do
CORRUPT = "cohort_corrupt"
CONF = {"preset": "cpu-fast"}
# what identifies a pre-label's making; the rest (latencies, the device name, the cohort mark) says how it ran
PROVENANCE = (
    "model",
    "model_version",
    "model_tag",
    "network",
    "preset",
    "config_fingerprint",
    "tta_flip",
    "sw_overlap",
    "input_sha256",
    "preprocessing",
    "organs_found",
    "label_names",
)


@pytest.fixture(scope="module")
def studies(shared, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "studies"
    folder.mkdir()
    for i in range(N_CASES):
        (folder / f"cohort_{i:03d}.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    (folder / f"{CORRUPT}.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI file")
    config = load_config(overrides=CONF)
    settings = config.active.networks["unet"]
    store = ModelStore(Workspace(folder).models(config.storage.models_dir), "unet")
    spec = {"name": settings.network, "params": dict(settings.params)}
    store.publish(build_network(settings.network, settings.params).state_dict(), {"network": spec})
    return folder


@dataclass(frozen=True)
class RayCluster:
    address: str
    head_pid: int
    home: Path  # the head node's home folder, where Ray keeps its token (~/.ray/auth_token)


def ray_command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def as_user(home: Path, **extra: str) -> dict:
    """The environment of a user whose home folder is ``home`` (and nothing else of Ray's set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of its own, started as the README says (Ray's token authentication: the token generated
    into the user's home folder, the head started with RAY_AUTH_MODE=token). The home folder is the test's own, so
    nothing in the real one decides the test. A short temp dir: Ray's socket paths must stay under 108 characters."""
    home = tmp_path_factory.mktemp("head-home")
    made = subprocess.run(
        [ray_command("ray"), "get-auth-token", "--generate"], env=as_user(home), capture_output=True, text=True
    )
    assert made.returncode == 0 and (home / ".ray" / "auth_token").is_file(), made.stderr
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port = free_port()
    head = LoggedProcess(
        [
            ray_command("ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=3",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        tmp_path_factory.mktemp("ray") / "head.log",
        # workers at normal priority (Ray nices them to 15): beside the other test workers they would wait minutes
        env=as_user(home, RAY_AUTH_MODE="token", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5", RAY_worker_niceness="0"),
    )
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in head.tail(200) and time.time() < deadline:
            assert head.process.poll() is None, head.tail()
            time.sleep(1)
        yield RayCluster(f"127.0.0.1:{port}", head.process.pid, home)
    finally:
        head.stop(grace_s=30)


def cohort(
    studies: Path, cluster: RayCluster, *extra: str, log: Path, env=None
) -> Union[PreloadedProcess, subprocess.Popen]:
    """The cohort command on the head node, as its user (the token in the home folder; RAY_AUTH_MODE unset)."""
    command = [sys.executable, "-m", "amoslabel", "cohort", *extra, "--studies", str(studies)]
    # one worker per CPU stage pool: each is a process that imports torch and MONAI, and 2 cores host them all
    command += ["--address", cluster.address, "--preset", "cpu-fast", "--cpu-workers", "1"]
    env = env or as_user(cluster.home)
    return start_module(command, log, env, ROOT)  # a fork of the preloaded Python (tests/preloaded_python.py)


def prelabels(studies: Path, tag: str) -> dict:
    """case -> how many pre-label versions this model version wrote (read from the review store's own SQLite)."""
    path = studies / ".amoslabel" / "review.db"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:  # read-only: never creates the file
        try:
            rows = db.execute(
                "SELECT case_id, count(*) FROM label_versions WHERE kind = 'prelabel' AND author_model = ?"
                " GROUP BY case_id",
                (tag,),
            ).fetchall()
        except sqlite3.OperationalError:  # the command has not made its tables yet
            return {}
    return dict(rows)


def model_workers(cluster: RayCluster) -> list:
    """The model actors of this test's cluster (its head's descendants: another Ray on the machine is not ours)."""
    found = []
    for process in psutil.Process(cluster.head_pid).children(recursive=True):
        try:
            if "NetworkWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def test_prelabel_a_cohort_with_a_worker_killed_midway(studies, ray_cluster, tmp_path):
    # the driver itself killed midway: what it stored stays, once; the next run resumes from there
    stopped = cohort(studies, ray_cluster, "prelabel", "--model", "unet", log=tmp_path / "stopped.log")
    while stopped.poll() is None and len(prelabels(studies, "unet:v1")) < 3:
        time.sleep(0.2)
    stopped.kill()
    stopped.wait()
    before = prelabels(studies, "unet:v1")
    assert 3 <= len(before) < N_CASES and set(before.values()) == {1}, (tmp_path / "stopped.log").read_text()[-3000:]

    summary_file = tmp_path / "summary.json"
    log = tmp_path / "cohort.log"
    run = cohort(
        studies, ray_cluster, "prelabel", "--model", "unet", "--workers", "2", "--json", str(summary_file), log=log
    )
    killed = None
    deadline = time.time() + 600
    while run.poll() is None and time.time() < deadline:
        if killed is None and len(prelabels(studies, "unet:v1")) >= len(before) + 3:
            workers = model_workers(ray_cluster)
            if len(workers) == 2:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.5)
    assert run.wait(timeout=60) == 1, log.read_text()[-3000:]  # 1: a case failed (the corrupt one), said below
    assert killed is not None, "the run ended before a worker could be killed"

    counts = prelabels(studies, "unet:v1")
    assert counts == {f"cohort_{i:03d}": 1 for i in range(N_CASES)}  # every case, each exactly once
    summary = json.loads(summary_file.read_text())
    assert sorted(summary["done"]) == sorted(set(counts) - set(before))  # resumed: the rest, nothing again
    assert set(summary["skipped"]) == set(before)
    assert list(summary["failed"]) == [CORRUPT] and "read" in summary["failed"][CORRUPT]
    assert str(killed) in summary["workers"] and len(summary["workers"]) >= 2  # the killed worker had done cases
    assert sum(summary["workers"].values()) == N_CASES - len(before)
    assert {"read", "preprocess", "network", "restore", "write"} <= set(summary["stage_s"])
    output = log.read_text()
    assert f"{N_CASES - len(before)} done, {len(before)} skipped, 1 failed" in output and "cases/s" in output

    # a re-run does nothing twice: everything is skipped, the corrupt scan fails again with its reason
    again = cohort(studies, ray_cluster, "prelabel", "--model", "unet", log=tmp_path / "again.log")
    assert again.wait(timeout=300) == 1
    text = (tmp_path / "again.log").read_text()
    assert f"0 done, {N_CASES} skipped, 1 failed" in text and "pre-labelled by unet:v1 already" in text
    assert "0 case(s) to do" in text and "does not read" in text  # the corrupt scan failed as planned: no pipeline
    assert prelabels(studies, "unet:v1") == counts


def test_score_a_cohort_as_the_server_scores(studies, ray_cluster, tmp_path):
    from review.queries import prelabels
    from review.service import ReviewService
    from strategies.scoring import scores

    run = cohort(studies, ray_cluster, "score", "--limit", "3", "--workers", "1", log=tmp_path / "score.log")
    assert run.wait(timeout=600) == 0, (tmp_path / "score.log").read_text()[-3000:]
    review = ReviewService(load_config(overrides=CONF), str(studies))
    table = scores(review.store)
    assert len(table) == 3
    latest = prelabels(review.store)
    for case, row in table.items():
        assert row.members.get("unet") == 1 and "prior" in row.members
        # the pre-label it saw, so that the server rescores the case only when a newer pre-label comes
        assert row.members.get("prelabel") == (latest[case][0] if case in latest else None)
        assert np.isfinite(row.uncertainty) and row.components["class_entropy"]
        assert list((studies / "labels" / "attention").glob(f"{case}.*")), f"{case}: no attention map saved"

    # the server's scorer on the same case, in this process: the same members, the same scores
    from models.infer_task import SegmentationInferTask
    from models.prior_task import AtlasCache
    from strategies.members import case_members
    from strategies.scoring import CaseScorer

    config = load_config(overrides=CONF)
    workspace = Workspace(studies)
    task = SegmentationInferTask("unet", config, ModelStore(workspace.models(config.storage.models_dir), "unet"))
    atlas = AtlasCache(config, lambda: None, workspace.prior_cache(config.storage.models_dir)).get()
    members = lambda path, modality: case_members(path, "ct", {"unet": task}, atlas, config.active_learning.grid_mm)  # noqa: E731
    scorer = CaseScorer(None, config.active_learning, members, None, None)
    case = sorted(table)[0]
    ours, _ = scorer.compute(str(studies / f"{case}.nii.gz"), "CT")
    theirs = table[case]
    assert ours["members"] == {k: v for k, v in theirs.members.items() if k != "prelabel"}
    for key in ("uncertainty", "attention_ml", "foreground_ml"):
        assert ours[key] == pytest.approx(getattr(theirs, key), rel=1e-3, abs=1e-3), key


def test_a_cohort_prelabel_has_the_provenance_of_the_servers(studies, tmp_path):
    """The real server pre-labels a case the cohort did (it answers, without storing: the case is pre-labelled)."""
    server = ServerProcess(studies, tmp_path, CONF)  # the cohort's configuration: the same fingerprint
    try:
        server.wait_ready()
        client = server.client(tmp_path)
        label_file, params = client.infer("unet", "cohort_007", {})
        with sqlite3.connect(studies / ".amoslabel" / "review.db") as db:
            path, info = db.execute(
                "SELECT path, info FROM label_versions WHERE case_id = 'cohort_007' AND author_model = 'unet:v1'"
            ).fetchone()
        stored = json.loads(info)["params"]
        assert {k: stored[k] for k in PROVENANCE} == {k: params[k] for k in PROVENANCE}
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(path) if Path(path).is_absolute() else studies / path)))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(label_file))
        assert ours.shape == theirs.shape and (ours == theirs).mean() > 0.999
    finally:
        server.stop()


def test_a_driver_the_cluster_refuses_or_cannot_reach_gets_one_message_and_nothing_is_written(
    shared, ray_cluster, tmp_path
):
    """What a user on another machine meets: no token, the wrong token, token mode without a token, nothing at the
    address, an address that is not one. Each: exit 2, one line that says what to do, no traceback, and the studies
    folder untouched (the driver joins before it opens the review store)."""
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "case_000.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    nobody = tmp_path / "empty-home"
    nobody.mkdir()
    closed = RayCluster(f"127.0.0.1:{free_port()}", 0, nobody)
    tries = {
        "no token": (ray_cluster, as_user(nobody), "this machine has no token"),
        "wrong token": (ray_cluster, as_user(nobody, RAY_AUTH_TOKEN="0" * 32), "token is not the cluster's"),
        "token mode without a token": (ray_cluster, as_user(nobody, RAY_AUTH_MODE="token"), "has no Ray token"),
        "nothing listens": (closed, as_user(nobody), "no Ray cluster answers at"),
        "not an address": (RayCluster("nohost", 0, nobody), as_user(nobody), "expected local, auto or HOST:PORT"),
    }
    runs = {
        name: (cohort(studies, cluster, "prelabel", log=tmp_path / f"{i}.log", env=env), tmp_path / f"{i}.log", said)
        for i, (name, (cluster, env, said)) in enumerate(tries.items())
    }
    for name, (run, log, said) in runs.items():
        assert run.wait(timeout=120) == 2, (name, log.read_text()[-2000:])
        text = log.read_text()
        assert said in text, (name, text[-2000:])
        assert "Traceback" not in text, (name, text[-2000:])
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (name, text[-2000:])
        if "token" in name:
            assert "ray get-auth-token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0], (name, errors[0])
    assert sorted(p.name for p in studies.iterdir()) == ["case_000.nii.gz"]  # nothing written
