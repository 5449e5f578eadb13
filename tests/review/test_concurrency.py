"""20 parallel clients claim (half by Next Sample, half by id), submit and vote on the same cases: on SQLite, and on
a real PostgreSQL.

Each client has its own store object (its own connection pool), as separate server workers would. Every call a
client saw succeed is counted, and the store must hold exactly those effects: no lost update, no double assignment.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from amoslabel.config import ReviewSettings
from amoslabel.errors import InputError
from review.queries import queue
from review.schema import Assignment, AuditEvent, Case, Review
from review.store import ReviewStore
from review.workflow import Workflow
from tests.review.conftest import LABEL, make_team

CASES = 8
CLIENTS = 20


def _storm(team, url: str, seconds: float = 90.0) -> Counter:
    wf = team.workflow
    for i in range(CASES):
        wf.record_prelabel(f"case{i}", LABEL, "prior", {})
    # 20 clients: the 2 juniors and 4 seniors of the team, each several times over
    people = [team.users[n] for n in ("j1", "j2", "s1", "s2", "s3", "s4")]
    clients = [people[i % len(people)] for i in range(CLIENTS)]
    acknowledged: Counter = Counter()
    lock = threading.Lock()
    deadline = time.time() + seconds

    def client(who, seed: int) -> None:
        rng = random.Random(seed)
        next_sample = seed % 2 == 0  # half the clients take Next Sample, half claim a case of their queue by id
        own = Workflow(ReviewStore(url, team.tmp / "versions"), team.workflow.settings)
        while time.time() < deadline:
            try:
                if next_sample:  # Next Sample's claim (review.hot_paths), racing the others' claims by id
                    claimed = own.claim_next(who)
                    case_id = claimed["case_id"] if claimed else None
                else:
                    items = queue(own, who)
                    case_id = rng.choice(items)["case_id"] if items else None
                    if case_id is not None:
                        own.claim(who, case_id)
                if case_id is None:
                    if _all_decided(own):
                        return
                    time.sleep(0.01)
                    continue
                if who.role == "junior":
                    own.submit(who, case_id)
                    key = "submit"
                else:
                    own.review(who, case_id, [], default="approve")
                    key = "review"
            except InputError:
                continue  # someone else got there first: a 403/409 is the right answer
            with lock:
                acknowledged[key] += 1
                acknowledged["through Next Sample"] += next_sample
                acknowledged[(key, case_id, who.name)] += 1
        own.store.dispose()

    threads = [threading.Thread(target=client, args=(who, i)) for i, who in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acknowledged


def _all_decided(wf: Workflow) -> bool:
    with wf.store.read() as s:
        open_cases = s.execute(
            select(func.count()).select_from(Case).where(Case.state.not_in(("consensus", "final")))
        ).scalar_one()
    return open_cases == 0


def _check(team, acknowledged: Counter) -> None:
    wf = team.workflow
    with wf.store.read() as s:
        states = Counter(s.execute(select(Case.state)).scalars())
        assert states == {"consensus": CASES}, states
        submits = s.execute(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "submit"))
        assert submits.scalar_one() == acknowledged["submit"] == CASES  # one submission per case, none lost
        assert acknowledged["through Next Sample"] > 0  # both claims took part in the race
        # every acknowledged review is stored, 15 organs each, and no reviewer decided an organ twice
        reviews = s.execute(select(func.count()).select_from(Review)).scalar_one()
        assert reviews == 15 * acknowledged["review"] == 15 * 3 * CASES
        for case_id in (f"case{i}" for i in range(CASES)):
            annotate = s.execute(
                select(func.count())
                .select_from(Assignment)
                .where(Assignment.case_id == case_id, Assignment.duty == "annotate")
            ).scalar_one()
            assert annotate == 1, f"{case_id} was assigned to {annotate} juniors"
            readers = (
                s.execute(select(Assignment.user_id).where(Assignment.case_id == case_id, Assignment.duty == "review"))
                .scalars()
                .all()
            )
            assert len(readers) == len(set(readers)) == 3, f"{case_id}: review assignments {readers}"


def test_twenty_parallel_clients_on_sqlite(tmp_path):
    team = make_team(tmp_path, routing="pool")
    acknowledged = _storm(team, team.store.url)
    _check(team, acknowledged)


@pytest.fixture
def postgres_url(private_postgres):
    return private_postgres.url


def test_the_workflow_on_a_real_postgresql(tmp_path, postgres_url):
    team = make_team(tmp_path, url=postgres_url, routing="pool")
    assert team.store.engine.dialect.name == "postgresql"
    acknowledged = _storm(team, postgres_url)
    _check(team, acknowledged)
    team.workflow.finalise("case0")
    assert team.workflow.final_labels()[0]["case_id"] == "case0"
    team.store.dispose()


def test_settings_default_is_three_readers():
    assert ReviewSettings().reviewers_per_case == 3
