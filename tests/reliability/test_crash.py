"""R1: kill -9 the real server at random moments during a stream of label submissions and votes, restart it each time,
and check that every write the server acknowledged is stored and every case's workflow state is consistent."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from sqlalchemy import func, select

from amoslabel.config import load_config
from review.schema import Assignment, Case, LabelVersion, Review, User
from review.service import ReviewService
from tests.conftest import ServerProcess
from tests.reliability.conftest import private_studies, report, size
from tests.review.conftest import LABEL, add_users

SENIORS = ("s1", "s2", "s3")


class Stream:
    """One client's writes (a junior's submissions or a senior's votes), retried across restarts."""

    def __init__(self, who: str, token: str, todo: list):
        self.who, self.token, self.todo = who, token, todo
        self.acknowledged: dict = {}  # case -> what the server answered
        self.interrupted = 0  # requests cut off by a kill (not acknowledged)
        self.landed_unacknowledged = 0  # a retry found the cut-off write stored

    def run(self, url: str, ready, killed: threading.Event) -> None:
        label = LABEL.read_bytes()
        headers = {"Authorization": f"Bearer {self.token}"}
        while self.todo and not killed.is_set():
            case_id = self.todo[0]
            if not ready(case_id):
                time.sleep(0.02)
                continue
            try:
                if self.who == "j1":
                    reply = requests.post(
                        f"{url}/review/api/cases/{case_id}/label",
                        headers=headers,
                        files={"label": ("label.nii.gz", label)},
                        data={"submit": "true"},
                        timeout=30,
                    )
                else:
                    reply = requests.post(
                        f"{url}/review/api/cases/{case_id}/reviews",
                        headers=headers,
                        json={"votes": [], "default": "approve"},
                        timeout=30,
                    )
            except requests.RequestException:
                self.interrupted += 1
                return  # the server is gone: wait for the restart
            if reply.status_code in (403, 409):
                # the write cut off by the last kill did land (the case moved on): stored, just not acknowledged
                self.landed_unacknowledged += 1
                self.todo.pop(0)
                continue
            assert reply.status_code == 200, f"{self.who} {case_id}: {reply.status_code} {reply.text}"
            self.acknowledged[case_id] = reply.json()
            self.todo.pop(0)


def test_kill_9_during_submissions_and_votes_loses_nothing_acknowledged(shared, tmp_path_factory):
    cases, kills = size(50, 100), size(4, 12)  # 4 writes per case: 200 (CI) or 400 submissions and votes
    root = tmp_path_factory.mktemp("crash")
    studies = private_studies(shared, root, final=None)
    tokens = add_users(studies, [("j1", "junior"), *((s, "senior") for s in SENIORS)])
    service = ReviewService(load_config(), str(studies))
    case_ids = [f"crash{i:03d}" for i in range(cases)]
    for case_id in case_ids:
        service.workflow.record_prelabel(case_id, LABEL, "prior", {})

    junior = Stream("j1", tokens["j1"], list(case_ids))
    seniors = [Stream(s, tokens[s], list(case_ids)) for s in SENIORS]
    streams = [junior, *seniors]
    submitted = lambda case_id: case_id in junior.acknowledged or case_id not in junior.todo  # noqa: E731
    rng = random.Random(9)
    kill_points = sorted(rng.sample(range(5, 4 * cases - 5), kills))  # which write each kill follows
    done_writes = lambda: sum(len(s.acknowledged) + s.landed_unacknowledged for s in streams)  # noqa: E731
    kill_times, restart_s, after_kill = [], [], []

    for cycle in range(kills + 1):
        started = time.time()
        server = ServerProcess(studies, root, {"preset": "cpu-fast"})
        server.wait_ready()
        restart_s.append(time.time() - started)
        killed = threading.Event()
        threads = [
            threading.Thread(target=s.run, args=(server.url, lambda c, s=s: s is junior or submitted(c), killed))
            for s in streams
        ]
        for t in threads:
            t.start()
        try:
            if cycle < kills:
                # a random moment while all four clients write: after a random number of writes, plus up to 50 ms
                while done_writes() < kill_points[cycle] and any(t.is_alive() for t in threads):
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.05))
                if not any(s.todo for s in streams):
                    raise AssertionError("the writes ended before every kill")
                os.kill(server.process.pid, signal.SIGKILL)
                kill_times.append(done_writes())
        finally:
            if cycle < kills:
                killed.set()  # the clients stop at their next request, whether or not the kill happened
            for t in threads:
                t.join()
            server.stop()  # reaps the killed process, or stops the last one (also when this cycle failed)
        found = check_store(service, junior, seniors, case_ids)  # the state the restart will start from
        after_kill.append({k: len(v) for k, v in found.items()})
        assert not any(found.values()), f"after kill {cycle + 1}: {found}"
    assert not any(s.todo for s in streams)

    server = ServerProcess(studies, root, {"preset": "cpu-fast"})  # a last start finalises what reached consensus
    try:
        server.wait_ready()
        deadline = time.time() + 120
        while time.time() < deadline:
            with service.store.read() as s:
                states = Counter(s.execute(select(Case.state).where(Case.id.in_(case_ids))).scalars())
            if states == {"final": cases}:
                break
            time.sleep(1)
    finally:
        server.stop()
    figures = check_store(service, junior, seniors, case_ids)
    service.store.dispose()
    writes = sum(len(s.acknowledged) for s in streams)
    report(
        "r1_crash",
        {
            "cases": cases,
            "kills": kills,
            "killed_after_write": kill_times,
            "writes_acknowledged": writes,
            "writes_cut_off_by_a_kill": sum(s.interrupted for s in streams),
            "cut_off_writes_found_stored": sum(s.landed_unacknowledged for s in streams),
            "restart_s_median": round(sorted(restart_s)[len(restart_s) // 2], 1),
            "final_states": dict(states),
            "checks_after_kills": after_kill,
            "acknowledged_lost": len(figures["lost"]),
            "lost": figures["lost"],
            "damaged_versions": len(figures["damaged_versions"]),
            "inconsistent_cases": figures["inconsistent_cases"],
        },
    )
    assert writes + sum(s.landed_unacknowledged for s in streams) == 4 * cases
    assert not any(figures.values()), figures
    assert states == {"final": cases}, states


def check_store(service: ReviewService, junior: Stream, seniors: list, case_ids: list) -> dict:
    """Every write acknowledged so far present, every version file intact, every case's assignments and votes
    matching its state. Run after each kill (before the restart) and at the end."""
    lost, bad_files, inconsistent = [], [], []
    with service.store.read() as s:
        users = dict(s.execute(select(User.name, User.id)).all())
        for case_id, answer in junior.acknowledged.items():
            version = s.get(LabelVersion, answer["version"])
            if version is None or version.case_id != case_id:
                lost.append(f"submit {case_id} v{answer['version']}")
        for stream in seniors:
            for case_id in stream.acknowledged:
                count = _votes(s, case_id, users[stream.who])
                if count != 15:
                    lost.append(f"vote {stream.who} {case_id} ({count} of 15 organs)")
        for version in s.execute(select(LabelVersion)).scalars():
            path = Path(version.path)
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != version.sha256:
                bad_files.append(version.id)
        for case in s.execute(select(Case).where(Case.id.in_(case_ids))).scalars():
            problem = _inconsistency(s, case)
            if problem:
                inconsistent.append((case.id, case.state, problem))
    return {"lost": lost, "damaged_versions": bad_files, "inconsistent_cases": inconsistent}


def _votes(s, case_id: str, user_id: int) -> int:
    query = select(func.count()).select_from(Review).where(Review.case_id == case_id, Review.user_id == user_id)
    return s.execute(query).scalar_one()


def _inconsistency(s, case: Case) -> str | None:
    """Why the case's assignments and votes do not fit its state (None when they do)."""
    rows = s.execute(
        select(Assignment.duty, Assignment.status, Assignment.user_id).where(
            Assignment.case_id == case.id, Assignment.round == case.round
        )
    ).all()
    active = Counter(duty for duty, status, _ in rows if status == "active")
    readers = {user for duty, status, user in rows if duty == "review" and status in ("active", "done")}
    voted = {user for user in readers if _votes(s, case.id, user) == 15}
    finished = {user for duty, status, user in rows if duty == "review" and status == "done"}
    if case.state == "with_junior" and active != {"annotate": 1}:
        return f"with the junior but active assignments {dict(active)}"
    if case.state == "in_review" and (len(readers) != 3 or voted != finished or active.get("annotate")):
        return f"in review with readers {sorted(readers)}, voted {sorted(voted)}, done {sorted(finished)}"
    if case.state in ("consensus", "final") and (active or len(voted) != 3):
        return f"{case.state} with active {dict(active)} and {len(voted)} complete votes"
    return None
