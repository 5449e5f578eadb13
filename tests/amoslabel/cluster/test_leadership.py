"""One leader among servers, on a real PostgreSQL: taken, lost with its session, taken over; jobs only there."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, text

from amoslabel.cluster.leadership import AdvisoryLockLeadership, LeaderJobs, Leadership, leadership_for


def _wait(predicate, timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - started


def test_sqlite_means_one_server_that_always_leads():
    sole = leadership_for("sqlite:////tmp/x.db")
    assert type(sole) is Leadership and sole.is_leader()
    with sole.exclusively("anything"):
        pass


def test_one_of_two_servers_leads_and_the_other_takes_over_when_it_dies(private_postgres):
    first = AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start()
    second = AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start()
    try:
        assert first.is_leader() and not second.is_leader()
        time.sleep(0.5)
        assert first.is_leader() and not second.is_leader(), "the follower took a lock that is held"
        # the leader's session ends as a crash ends it: PostgreSQL kills the backend, the lock goes with it
        engine = create_engine(private_postgres.url)
        with engine.connect() as c:
            killed = c.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalars()
            assert list(killed) == [True]
        engine.dispose()
        took = _wait(second.is_leader, timeout_s=5)
        assert took < 1.5, f"the follower took {took:.2f} s to lead"
        _wait(lambda: not first.is_leader(), timeout_s=2)
        assert not first.is_leader() and second.is_leader()
    finally:
        first.stop()
        second.stop()


def test_postgresql_stopped_at_once_leaves_no_leader_and_one_leads_again_after_restart(private_postgres):
    servers = [AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start() for _ in range(2)]
    try:
        assert sum(s.is_leader() for s in servers) == 1
        private_postgres.stop("immediate")
        _wait(lambda: not any(s.is_leader() for s in servers), timeout_s=3)
        private_postgres.start()
        _wait(lambda: any(s.is_leader() for s in servers), timeout_s=5)
        time.sleep(0.5)
        assert sum(s.is_leader() for s in servers) == 1
    finally:
        for s in servers:
            s.stop()


def test_jobs_run_on_the_leader_only_and_a_failing_job_does_not_stop_the_others(private_postgres):
    leader = AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start()
    follower = AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start()
    ran = {"leader": 0, "follower": 0}

    def failing():
        raise RuntimeError("a job that fails")

    jobs = []
    for name, leadership in (("leader", leader), ("follower", follower)):
        team_jobs = LeaderJobs(leadership, tick_s=0.05)
        team_jobs.add("fails", 0.1, failing)
        team_jobs.add("counts", 0.1, lambda name=name: ran.__setitem__(name, ran[name] + 1))
        jobs.append(team_jobs.start())
    try:
        _wait(lambda: ran["leader"] >= 3)
        assert ran["follower"] == 0
        assert jobs[0].runs["fails"] >= 3
    finally:
        for j in jobs:
            j.stop()
        leader.stop()
        follower.stop()
    # the follower leads once the leader has stopped (its session closed)
    follower = AdvisoryLockLeadership(private_postgres.url, check_s=0.2).start()
    try:
        assert follower.is_leader()
    finally:
        follower.stop()


def test_exclusively_lets_one_block_run_at_a_time(private_postgres):
    a = AdvisoryLockLeadership(private_postgres.url)
    b = AdvisoryLockLeadership(private_postgres.url)
    import threading

    inside, overlaps = [], []

    def block(who):
        with who.exclusively("sync"):
            if inside:
                overlaps.append(1)
            inside.append(1)
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=block, args=(x,)) for x in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    a.stop()
    b.stop()
