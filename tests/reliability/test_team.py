"""R7: a team of two real app servers on a real PostgreSQL behind a real HAProxy: one identity on every server, a
server killed with kill -9 during submissions and votes, and PostgreSQL stopped at once during writes.

Nothing is mocked: ``amoslabel.server.team_launch.Team`` starts MONAI Label's own server process twice, Debian's
PostgreSQL and HAProxy; the clients are ``requests`` sessions and ``monailabel.client`` (the class Slicer uses).
The studies are tiny synthetic volumes (``bench.review_load.make_studies``): half the cases wait for a junior, half
for the seniors.
"""

from __future__ import annotations

import random
import re
import tempfile
from datetime import datetime, timezone
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from amoslabel.cluster.postgres import PrivatePostgres
from amoslabel.server.team_launch import Team
from bench.review_load import make_studies
from review.auth import Accounts
from review.schema import Assignment, AuditEvent, Case, Review, User
from review.store import ReviewStore
from tests.conftest import free_port, login
from tests.reliability.conftest import report, size, write_config

JUNIORS, SENIORS, CASES = 25, 25, 600  # 50 writers


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = Path(tempfile.mkdtemp(prefix="amos-team-"))
    root.chmod(0o755)  # PostgreSQL runs as the postgres user, in a folder below this one
    try:
        database = PrivatePostgres(root / "postgres").start()
    except RuntimeError as missing:
        pytest.fail(f"{missing}: `make test` installs Debian's postgresql package")
    studies = tmp_path_factory.mktemp("team") / "studies"
    studies.mkdir()
    users = make_studies(studies, CASES, JUNIORS, SENIORS, database=database.url)
    store = ReviewStore(database.url, studies / ".amoslabel" / "label-versions")
    tokens = {name: Accounts(store).issue_token(name) for name in users}
    ports = [free_port(), free_port()]
    config = write_config(root, routing="pool", scoring=False)  # claims race in the pool; no background scoring
    conf = {"preset": "cpu-fast", "config": str(config)}
    team = Team(
        str(studies),
        root,
        ports,
        free_port(),
        conf,
        database_url=database.url,
        review_workers=2,
        review_port=free_port(),
    )
    team.users, team.tokens, team.store, team.database = users, tokens, store, database
    try:
        team.start()
        yield team
    finally:
        team.stop()
        store.dispose()
        database.remove()


def _leader(team: Team) -> int:
    for index in team.servers:
        try:
            if requests.get(f"{team.server_url(index)}/health/leader", timeout=2).status_code == 200:
                return index
        except requests.RequestException:
            pass
    return -1


class Storm:
    """Juniors submit and seniors vote through the load balancer, each in its own thread, until stopped; every
    answered write is remembered (an acknowledged write), every failure with its answer."""

    def __init__(self, team: Team, direct: bool = False, pause_s: float = 0.2):
        self.team = team
        # each user's mean pause between operations: the race runs flat out; the faults at a gentler pace, which still
        # saturates two cores with 50 users (and leaves the other test worker's browser some CPU)
        self.pause_s = pause_s
        # direct: user n sends every request to server n % 2 itself, so both servers take writes on the same cases
        self.direct = direct
        self.acknowledged = []  # (kind, case, user, time)
        self.failed = []  # (kind, answer, when the request was sent)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._user, args=(n,)) for n in team.users]

    def _user(self, name: str) -> None:
        n = list(self.team.users).index(name)
        url = self.team.server_url(n % len(self.team.ports)) if self.direct else self.team.url
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.team.tokens[name]}"
        rng = random.Random(name)
        while not self.stop.is_set():
            case = self._call(
                session, url, "next-case", "POST", "/activelearning/review_queue", json={"client_id": name}
            )
            case_id = case.json().get("id") if case is not None else None
            if not case_id:  # nothing to do, or refused: wait as a person would before asking again
                time.sleep(0.05 + rng.random() * 2 * self.pause_s)
                continue
            if self.team.users[name] == "junior":
                done = self._call(session, url, "submit", "POST", f"/review/api/cases/{case_id}/submit")
            else:
                vote = {"default": "approve"}
                done = self._call(session, url, "vote", "POST", f"/review/api/cases/{case_id}/reviews", json=vote)
            if done is not None:
                kind = "submit" if self.team.users[name] == "junior" else "vote"
                self.acknowledged.append((kind, case_id, name, time.time()))
            time.sleep(rng.random() * 2 * self.pause_s)

    def _call(self, session, url, kind, method, path, **kwargs):
        # a failure is dated by when its request was sent: one sent before a kill may be answered (502) much later on
        # a loaded machine, and is still a request that was in flight on the killed server
        sent = time.time()
        try:
            reply = session.request(method, url + path, timeout=30, **kwargs)
        except requests.RequestException as error:
            self.failed.append((kind, f"no answer: {error}", sent))
            return None
        if reply.status_code == 200:
            return reply
        if reply.status_code != 409:  # a case another user just took or finished: the workflow's answer
            self.failed.append((kind, f"{reply.status_code} {reply.text[:160]}", sent))
        return None

    def __enter__(self) -> "Storm":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _check_acknowledged(team: Team, acknowledged) -> None:
    """Every acknowledged submit and vote is in the database; no case had two juniors or a reader twice in a round."""
    with team.store.read() as s:
        submit_events = select(AuditEvent.case_id, AuditEvent.actor).where(AuditEvent.action == "submit")
        submits = set(s.execute(submit_events).all())
        ids = dict(s.execute(select(User.name, User.id)).all())
        votes = Counter(s.execute(select(Review.case_id, Review.user_id)).all())
        for kind, case_id, user, _ in acknowledged:
            if kind == "submit":
                assert (case_id, user) in submits, f"acknowledged submit of {case_id} by {user} is lost"
            else:
                assert votes[(case_id, ids[user])] == 15, f"acknowledged vote of {user} on {case_id} is lost"
        juniors = s.execute(
            select(Assignment.case_id, Assignment.round, func.count())
            .where(Assignment.duty == "annotate", Assignment.status == "active")
            .group_by(Assignment.case_id, Assignment.round)
        ).all()
        assert all(n == 1 for *_, n in juniors), f"a case had two juniors at once: {juniors}"
        review_duties = select(Assignment.case_id, Assignment.round, Assignment.user_id)
        readers = Counter(s.execute(review_duties.where(Assignment.duty == "review")))
        assert all(n == 1 for n in readers.values()), "a reader was assigned a case twice in one round"


def _wait(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_one_login_through_the_balancer_holds_on_every_server(team, tmp_path):
    """Slicer's client logs in through HAProxy; the access token it gets is taken by each server directly, and so is
    a review-page session made through HAProxy."""
    from monailabel.client import MONAILabelClient

    client = login(team.url, tmp_path, "senior0", team.tokens["senior0"])
    for index in team.servers:
        direct = MONAILabelClient(team.server_url(index), tmpdir=str(tmp_path))
        direct._headers["Authorization"] = client._headers["Authorization"]  # the token the login through HAProxy got
        assert direct.auth_valid_token()
    assert requests.get(f"{team.url}/info/").status_code == 401
    # the review pages' session, made through HAProxy (on a review worker), is taken by each app server directly
    browser = requests.Session()
    form = browser.get(f"{team.url}/review/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    logged_in = browser.post(
        f"{team.url}/review/login",
        data={"csrf_token": csrf, "username": "junior0", "token": team.tokens["junior0"]},
        allow_redirects=False,
        timeout=30,
    )
    assert logged_in.status_code == 302, logged_in.text[:300]
    for index in team.servers:
        queue = browser.get(f"{team.server_url(index)}/review/", timeout=30)
        assert queue.status_code == 200 and "junior0" in queue.text, queue.text[:300]
    assert requests.get(f"{team.server_url(0)}/review/", allow_redirects=False, timeout=30).status_code == 302
    leads = [requests.get(f"{team.server_url(i)}/health/leader").status_code == 200 for i in team.servers]
    assert sorted(leads) == [False, True], leads


def test_a_monai_label_session_made_on_one_server_is_served_by_the_other(team):
    """MONAI Label's inference sessions live in the team's shared folder: no request needs to stick to the server
    that made the session (HAProxy routes without stickiness)."""
    image = (Path(team.studies) / "case00000.nii.gz").read_bytes()
    junior = {"Authorization": f"Bearer {team.tokens['junior0']}"}
    made = requests.put(
        f"{team.server_url(0)}/session/", headers=junior, files=[("files", ("scan.nii.gz", image))], timeout=60
    )
    assert made.status_code == 200, made.text
    session_id = made.json()["session_id"]
    other = requests.get(f"{team.server_url(1)}/session/{session_id}", headers=junior, params={"image": "true"})
    assert other.status_code == 200 and other.content == image, other.text[:200]


def test_fifty_writers_on_two_servers_race_on_the_same_cases_without_lost_updates(team):
    """The 50-writer race of the review store, spread over both servers (half the users on each, straight to it):
    every acknowledged write is stored, no case has two juniors, no reader is assigned a case twice."""
    seconds = size(8, 30)
    with Storm(team, direct=True, pause_s=0.025) as storm:
        time.sleep(seconds)
    print(f"50 writers on two servers: {len(storm.acknowledged)} acknowledged writes, {len(storm.failed)} failed")
    assert not storm.failed, storm.failed[:5]
    assert len(storm.acknowledged) > 50
    _check_acknowledged(team, storm.acknowledged)
    report(
        "team_race",
        {"writers": len(team.users), "seconds": seconds, "acknowledged": Counter(a[0] for a in storm.acknowledged)},
    )


def _rejoin(team: Team) -> None:
    """Start again every server that was killed, and wait until it answers."""
    for index in team.servers:
        if team.servers[index].process.poll() is not None:
            team.start_server(index)
            team.wait_ready(f"{team.server_url(index)}/health", team.servers[index])


def test_kill_9_of_one_server_during_submissions_and_votes_loses_nothing(team):
    """kill -9 of the leader while 50 users submit and vote through HAProxy (the short form once, the full form three
    times, the killed server rejoining in between): HAProxy routes around it, no acknowledged write is lost, the
    survivor takes over the background work and finalises what reaches consensus."""
    rounds, led_after, failed, acknowledged, finalised = size(1, 3), [], [], [], 0
    for _ in range(rounds):
        _rejoin(team)
        leader = _leader(team)
        assert leader in team.servers
        survivor = next(i for i in team.servers if i != leader)
        with Storm(team) as storm:
            time.sleep(4)
            killed_at = time.time()
            team.kill(leader)  # the leader: its background work must move too
            took = _wait(lambda survivor=survivor: _leader(team) == survivor, 10, "the survivor leads")
            time.sleep(4)
        after = [a for a in storm.acknowledged if a[3] > killed_at + 1]
        assert len(storm.acknowledged) > 20 and after, f"too little work to judge: {len(storm.acknowledged)} writes"
        # a failure is a request that was in flight on the killed server (one per user at most), never a later one
        assert len(storm.failed) <= len(team.users), storm.failed
        assert all(t - killed_at < 3 for _, _, t in storm.failed), storm.failed
        assert took < 5, f"the survivor took {took:.1f} s to lead"
        _check_acknowledged(team, storm.acknowledged)
        # every case that reached consensus is finalised, by the survivor: some after the kill
        _wait(lambda: _count(team, "consensus") == 0, 20, "cases in consensus finalised")
        finalised_since = _finalised_since(team, killed_at)
        assert finalised_since > 0, "no case reached consensus and became final after the kill"
        led_after.append(round(took, 2))
        failed += storm.failed
        acknowledged += storm.acknowledged
        finalised += finalised_since
    print(
        f"kill -9 of the leader x{rounds}: {len(acknowledged)} acknowledged writes, {len(failed)} cut off, "
        f"the survivor led after {led_after} s, {finalised} cases finalised after a kill"
    )
    report(
        "team_kill",
        {
            "kills": rounds,
            "writers": len(team.users),
            "acknowledged": len(acknowledged),
            "cut_off": Counter(f[1].split(":")[0][:40] for f in failed),
            "led_after_s": led_after,
            "finalised_after_kill": finalised,
            "lost": 0,
        },
    )


def _finalised_since(team: Team, since: float) -> int:
    at = datetime.fromtimestamp(since, timezone.utc).replace(tzinfo=None)
    with team.store.read() as s:
        query = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "finalise", AuditEvent.at > at)
        return s.execute(query).scalar_one()


def _count(team: Team, state: str) -> int:
    with team.store.read() as s:
        return s.execute(select(func.count()).select_from(Case).where(Case.state == state)).scalar_one()


def test_postgresql_stopped_at_once_is_a_clean_503_and_the_servers_recover_by_themselves(team):
    _rejoin(team)
    pids = {i: s.process.pid for i, s in team.servers.items()}
    with Storm(team) as storm:
        time.sleep(3)
        team.database.stop("immediate")
        stopped_at = time.time()
        time.sleep(3)
        junior = {"Authorization": f"Bearer {team.tokens['junior0']}"}
        down = requests.post(f"{team.url}/review/api/cases/case00000/submit", headers=junior, timeout=30)
        # each process's own answer, not only HAProxy's: the gate (MONAI Label's endpoints), the app server's review
        # API, the review workers', and the health checks
        own = [
            requests.post(f"{team.server_url(0)}/activelearning/review_queue", headers=junior, json={"client_id": "x"}),
            requests.post(f"{team.server_url(1)}/review/api/cases/case00000/submit", headers=junior),
            requests.get(f"http://127.0.0.1:{team.review_port}/review/api/queue", headers=junior),
            requests.get(f"{team.server_url(0)}/health"),
        ]
        team.database.start()
        started_at = time.time()
        _wait(lambda: requests.get(f"{team.url}/health", timeout=5).status_code == 200, 30, "the team answers again")
        time.sleep(3)
    print(
        f"PostgreSQL stopped at once for {started_at - stopped_at:.1f} s: {len(storm.acknowledged)} acknowledged "
        f"writes, {len(storm.failed)} refused ({Counter(f[1][:3] for f in storm.failed)}); first write after it "
        f"{min((a[3] for a in storm.acknowledged if a[3] > started_at), default=float('nan')) - started_at:.1f} s"
        f" after the start; while down: {down.status_code} {down.text[:160]}"
    )
    assert down.status_code == 503, down.text
    assert "try again" in down.json()["detail"], down.text
    *workers, health = own
    for answer in workers:
        assert answer.status_code == 503, answer.text
        assert "the review database is unavailable" in answer.json()["detail"], answer.text
    # the public health check says only that the server is unhealthy (why is in its log)
    assert health.status_code == 503 and health.json() == {"status": "unavailable"}, health.text
    refused = [f for f in storm.failed if stopped_at - 1 < f[2] < started_at + 10]
    assert all(answer.startswith("503") or answer.startswith("no answer") for _, answer, _ in refused), refused
    assert all(s.process.pid == pids[i] and s.process.poll() is None for i, s in team.servers.items()), "a restart"
    later = [a for a in storm.acknowledged if a[3] > started_at]
    assert later, f"no write succeeded after PostgreSQL came back: {len(storm.acknowledged)} {storm.failed[-5:]}"
    report(
        "team_postgres",
        {
            "down_s": round(started_at - stopped_at, 1),
            "acknowledged": len(storm.acknowledged),
            "refused": Counter(f[1][:3] for f in storm.failed),
            "first_write_after_s": round(min(a[3] for a in later) - started_at, 1),
            "answer_while_down": f"{down.status_code} {down.json()['detail']}",
            "restarts": 0,
            "lost": 0,
        },
    )
    _check_acknowledged(team, storm.acknowledged)
    assert not [f for f in storm.failed if f[2] > started_at + 10], "failures long after PostgreSQL came back"
