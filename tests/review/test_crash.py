"""kill -9 the real server during a stream of label submissions, restart it, and check nothing acknowledged is lost
and every case's workflow state is consistent."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time

import requests
from sqlalchemy import func, select

from amoslabel.config import load_config
from review.auth import Accounts
from review.schema import Assignment, Case, LabelVersion
from review.service import ReviewService
from tests.conftest import ServerProcess
from tests.review.conftest import LABEL

CASES = 60
KILLS = 3


def _service(studies):
    return ReviewService(load_config(), str(studies))


def test_kill_9_during_submissions_loses_nothing_acknowledged(sample_studies, tmp_path_factory):
    studies = tmp_path_factory.mktemp("crash-studies")
    for item in sample_studies.iterdir():  # the sample scans (symlinked images), without the session's review state
        if item.name.endswith(".nii.gz") and not item.name.startswith("."):
            os.symlink(item.resolve(), studies / item.name)
    service = _service(studies)
    accounts = Accounts(service.store)
    accounts.add_user("j", "junior")
    for name in ("s1", "s2", "s3"):
        accounts.add_user(name, "senior")
    token = accounts.issue_token("j")
    for i in range(CASES):
        service.workflow.record_prelabel(f"crash{i:03d}", LABEL, "prior", {})
    service.store.dispose()
    label_bytes = LABEL.read_bytes()
    acknowledged = {}  # case -> version id the server answered with
    pending = [f"crash{i:03d}" for i in range(CASES)]
    workdir = tmp_path_factory.mktemp("crash-server")
    rng = random.Random(7)
    interrupted = 0

    for cycle in range(KILLS + 1):
        server = ServerProcess(studies, workdir, {"preset": "cpu-fast"})
        server.wait_ready()
        killer = None
        if cycle < KILLS:
            # kill after a random number of further acknowledged submissions: always in the middle of the stream
            target = len(acknowledged) + rng.randint(5, 12)

            def kill_when_due(process=server.process, target=target):
                while len(acknowledged) < target and process.poll() is None:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.05))
                os.kill(process.pid, signal.SIGKILL)

            killer = threading.Thread(target=kill_when_due)
            killer.start()
        while pending:
            case_id = pending[0]
            try:
                reply = requests.post(
                    f"{server.url}/review/api/cases/{case_id}/label",
                    headers={"Authorization": f"Bearer {token}"},
                    files={"label": ("label.nii.gz", label_bytes)},
                    data={"submit": "true"},
                    timeout=30,
                )
            except requests.RequestException:
                interrupted += 1
                break  # killed mid-request: not acknowledged
            if reply.status_code == 409 and "in_review" in reply.text:
                pending.pop(0)  # the last request before a kill did land: fine, it was just not acknowledged
                continue
            assert reply.status_code == 200, reply.text
            acknowledged[case_id] = reply.json()["version"]
            pending.pop(0)
        if killer is not None:
            killer.join()
            server.process.wait(30)
        server.stop()
    assert not pending and len(acknowledged) >= CASES - KILLS
    assert interrupted == KILLS, "every kill must land in the middle of the stream"

    service = _service(studies)
    with service.store.read() as s:
        for case_id, version_id in acknowledged.items():
            version = s.get(LabelVersion, version_id)
            assert version is not None and version.case_id == case_id, f"acknowledged {case_id} v{version_id} lost"
            assert hashlib.sha256(open(version.path, "rb").read()).hexdigest() == version.sha256
        for version in s.execute(select(LabelVersion)).scalars():
            assert os.path.exists(version.path), f"version {version.id} names a missing file"
        states = dict(s.execute(select(Case.id, Case.state)).all())
        assert all(states[c] == "in_review" for c in acknowledged)
        for case_id, state in states.items():
            active = s.execute(
                select(Assignment.duty, func.count())
                .where(Assignment.case_id == case_id, Assignment.status == "active")
                .group_by(Assignment.duty)
            ).all()
            active = dict(active)
            if state == "in_review":
                assert active == {"review": 3}, (case_id, active)
            elif state == "with_junior":
                assert active == {"annotate": 1}, (case_id, active)
    service.store.dispose()
