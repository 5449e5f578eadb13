"""R2: 50 concurrent writers, each its own user and HTTP client, claim, submit and vote on the same few cases through
the real server. Every write a client saw acknowledged must be stored (no lost update) and no case may be held by
two juniors or reviewed twice by one senior (no double assignment).

The in-process variant on SQLite and PostgreSQL (20 clients, separate store objects) is
tests/review/test_concurrency.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import requests
from sqlalchemy import func, select

from amoslabel.config import load_config
from review.schema import Assignment, AuditEvent, Case, LabelVersion, Review, User
from review.service import ReviewService
from tests.conftest import ServerProcess
from tests.reliability.conftest import private_studies, report, size, write_config
from tests.review.conftest import LABEL

WRITERS = 50
JUNIORS = 10


def test_fifty_concurrent_writers_on_the_same_cases(shared, tmp_path_factory):
    cases = size(6, 12)
    root = tmp_path_factory.mktemp("concurrency")
    studies = private_studies(shared, root, final=None)
    # juniors claim from one pool (the racy routing); no background scoring, to leave both cores to the clients
    config = write_config(root, routing="pool", scoring=False)
    service = ReviewService(load_config(config), str(studies))
    names = [f"j{i:02d}" for i in range(JUNIORS)] + [f"s{i:02d}" for i in range(WRITERS - JUNIORS)]
    tokens = {}
    for name in names:
        service.accounts.add_user(name, "junior" if name.startswith("j") else "senior")
        tokens[name] = service.accounts.issue_token(name)
    case_ids = [f"race{i:02d}" for i in range(cases)]
    for case_id in case_ids:
        service.workflow.record_prelabel(case_id, LABEL, "prior", {})

    server = ServerProcess(studies, root, {"preset": "cpu-fast", "config": str(config)})
    server.wait_ready()
    acknowledged: Counter = Counter()
    answers: list = []
    refused: Counter = Counter()
    lock = threading.Lock()
    deadline = time.time() + size(150, 300)
    label = LABEL.read_bytes()
    barrier = threading.Barrier(WRITERS)

    def writer(name: str, seed: int) -> None:
        rng = random.Random(seed)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {tokens[name]}"
        api = f"{server.url}/review/api"
        barrier.wait()  # all 50 start together
        while time.time() < deadline:
            items = http.get(f"{api}/queue", timeout=60).json()["cases"]
            if not items:
                if all_decided():
                    return
                time.sleep(rng.uniform(0.05, 0.3))
                continue
            case_id = rng.choice(items)["case_id"]
            claim = http.post(f"{api}/cases/{case_id}/claim", timeout=60)
            if claim.status_code != 200:
                with lock:
                    refused[claim.status_code] += 1
                continue
            if name.startswith("j"):
                reply = http.post(
                    f"{api}/cases/{case_id}/label",
                    files={"label": ("label.nii.gz", label)},
                    data={"submit": "true"},
                    timeout=60,
                )
                kind = "submit"
            else:
                reply = http.post(
                    f"{api}/cases/{case_id}/reviews", json={"votes": [], "default": "approve"}, timeout=60
                )
                kind = "review"
            assert reply.status_code < 500, reply.text
            with lock:
                if reply.status_code == 200:
                    acknowledged[kind] += 1
                    answers.append((kind, name, case_id, reply.json()))
                else:
                    refused[reply.status_code] += 1

    def all_decided() -> bool:
        with service.store.read() as s:
            open_cases = s.execute(
                select(func.count()).select_from(Case).where(Case.id.in_(case_ids), Case.state != "final")
            ).scalar_one()
        return open_cases == 0

    started = time.time()
    threads = [threading.Thread(target=writer, args=(name, i)) for i, name in enumerate(names)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        assert server.alive()
    finally:
        server.stop()

    lost, double = [], []
    with service.store.read() as s:
        states = Counter(s.execute(select(Case.state).where(Case.id.in_(case_ids))).scalars())
        ids = dict(s.execute(select(User.name, User.id)).all())
        for kind, name, case_id, answer in answers:
            if kind == "submit":
                version = s.get(LabelVersion, answer["version"])
                if version is None or version.case_id != case_id:
                    lost.append((kind, name, case_id))
            else:
                votes = s.execute(
                    select(func.count())
                    .select_from(Review)
                    .where(Review.case_id == case_id, Review.user_id == ids[name])
                ).scalar_one()
                if votes != 15:
                    lost.append((kind, name, case_id, votes))
        submits = s.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.case_id.in_(case_ids), AuditEvent.action == "submit")
        ).scalar_one()
        for case_id in case_ids:
            juniors = s.execute(
                select(Assignment.user_id).where(Assignment.case_id == case_id, Assignment.duty == "annotate")
            ).scalars()
            readers = (
                s.execute(select(Assignment.user_id).where(Assignment.case_id == case_id, Assignment.duty == "review"))
                .scalars()
                .all()
            )
            juniors = list(juniors)
            if len(juniors) != 1 or len(readers) != len(set(readers)) or len(set(readers)) != 3:
                double.append((case_id, len(juniors), len(readers), len(set(readers))))
    service.store.dispose()
    report(
        "r2_concurrency",
        {
            "writers": WRITERS,
            "cases": cases,
            "seconds": round(elapsed, 1),
            "acknowledged": dict(acknowledged),
            "refused_by_status": dict(refused),
            "stored_submits": submits,
            "lost_updates": len(lost),
            "lost": lost,
            "double_assignments": len(double),
            "double": double,
            "final_states": dict(states),
        },
    )
    assert states == {"final": cases}, states
    assert not lost and not double
    assert acknowledged["submit"] == submits == cases  # one acknowledged submission per case, each stored
    assert acknowledged["review"] == 3 * cases
