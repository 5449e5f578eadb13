"""Which server of a team runs the background work: one leader, chosen by the database they share.

On PostgreSQL the leader is the server that holds a session-level advisory lock (``pg_try_advisory_lock``) on a
connection of its own. PostgreSQL releases such a lock the moment that session ends, so a server that dies (kill -9,
a lost machine, PostgreSQL restarted) gives it up by itself, and another server takes it at its next check:

* a crashed process: its socket closes at once; the lock is free at once; a survivor holds it within ``check_s``;
* a lost machine: PostgreSQL notices the dead TCP session by keepalives, which the lock's session sets short
  (:data:`SESSION_KEEPALIVES`: about 11 s); then within ``check_s``.

A leader checks its session every ``check_s`` and stops leading when the check fails, or takes more than twice that
(a check on a dead network fails after ``tcp_user_timeout``, 5 s). Between a session's loss and that check the old
leader may still run a job that the new one runs too: the jobs lock the case rows they change and check them again
under the lock (finalising, lease expiry), so leadership decides who *does* the work, and the database's row locks
decide what is *written*.

On SQLite (the embedded store, one server) this server always leads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

BACKGROUND_LOCK = "amoslabel:background-work"
# libpq keepalives (this side notices a dead PostgreSQL) and the session's own (PostgreSQL notices a dead server)
# tcp_user_timeout: a check whose packets go unacknowledged this long fails, instead of waiting out TCP's
# retransmissions (about 15 min) while PostgreSQL has long given the lock to another server
CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
    "connect_timeout": 5,
}
SESSION_KEEPALIVES = ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 3")


class Every:
    """A daemon thread that calls ``step`` every ``period_s`` seconds until :meth:`stop`."""

    def __init__(self, name: str, period_s: float, step: Callable[[], object]):
        self.period_s, self.step = period_s, step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Every":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.step()


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Leadership:
    """Whether this server leads now. The base class is the sole server's answer: always."""

    description = "the only server (SQLite)"

    def is_leader(self) -> bool:
        return True

    def start(self) -> "Leadership":
        return self

    def stop(self) -> None:
        pass

    @contextmanager
    def exclusively(self, name: str) -> Iterator[None]:
        """Run a block on one server of the team at a time (waits for the others); on the sole server, at once."""
        yield


class AdvisoryLockLeadership(Leadership):
    """Leads while it holds a PostgreSQL advisory lock on a connection of its own.

    Args:
        url: the SQLAlchemy URL of the shared PostgreSQL.
        name: the lock's name (servers of one team use the same name).
        check_s: how often a leader checks its session, and a follower tries to take the lock.
    """

    description = "PostgreSQL advisory lock"

    def __init__(self, url: str, name: str = BACKGROUND_LOCK, check_s: float = 2.0):
        self.key = lock_key(name)
        self.check_s = check_s
        self._engine = create_engine(url, poolclass=NullPool, connect_args=CLIENT_KEEPALIVES)
        self._connection: Optional[Connection] = None
        self._leading = False
        self._checks = Every("leadership", check_s, self.check)
        self.since: Optional[float] = None  # time.time() when this server took the lead

    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> "AdvisoryLockLeadership":
        self.check()
        self._checks.start()
        return self

    def stop(self) -> None:
        """Stop checking and give the lock up (closing the session releases it)."""
        self._checks.stop(self.check_s + 5)
        self._drop()
        self._engine.dispose()

    @contextmanager
    def exclusively(self, name: str) -> Iterator[None]:
        """Hold ``pg_advisory_lock(name)`` on a session of its own for the block (e.g. start-up's case sync, so two
        servers starting together do not register the same scans twice); released when the block ends, or when
        this process dies."""
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(name)})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})

    def check(self) -> bool:
        """One round: a leader confirms its session is alive, a follower tries to take the lock. Returns
        whether this server leads now."""
        try:
            if self._connection is None:
                self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                for statement in SESSION_KEEPALIVES:
                    self._connection.exec_driver_sql(statement)
            if self._leading:
                started = time.monotonic()
                self._connection.execute(text("SELECT 1"))
                if time.monotonic() - started > 2 * self.check_s:  # its session may be gone: another may lead now
                    raise TimeoutError(f"the leadership check took {time.monotonic() - started:.1f} s")
            else:
                took = self._connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
                if took:
                    self._leading, self.since = True, time.time()
                    log.info("cluster: this server now leads the background work")
        except Exception as error:  # PostgreSQL down or the session lost: the lock went with the session
            if self._leading:
                log.warning("cluster: leadership lost (%s)", str(error).splitlines()[0][:200])
            self._drop()
        return self._leading

    def _drop(self) -> None:
        self._leading, self.since = False, None
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # the session is already gone
                pass
            self._connection = None


def leadership_for(url: str) -> Leadership:
    """The leadership a store at ``url`` allows: an advisory lock on PostgreSQL, the sole server on SQLite."""
    return AdvisoryLockLeadership(url) if url.startswith("postgresql") else Leadership()


@dataclass
class Job:
    """A piece of background work: run every ``every_s`` seconds, by the leader only."""

    name: str
    every_s: float
    run: Callable[[], object]
    last: float = field(default=0.0)


class LeaderJobs:
    """The background work of a team, run by its leader: each job at its own period, one at a time, in one thread.
    A failing job is logged and tried again at its next period; it never stops the others."""

    def __init__(self, leadership: Leadership, tick_s: float = 0.5):
        self.leadership = leadership
        self.tick_s = tick_s
        self.jobs: Dict[str, Job] = {}
        self._ticks = Every("leader-jobs", tick_s, self.run_due)
        self.runs: Dict[str, int] = {}

    def add(self, name: str, every_s: float, run: Callable[[], object]) -> None:
        self.jobs[name] = Job(name, every_s, run)

    def start(self) -> "LeaderJobs":
        self._ticks.start()
        return self

    def stop(self) -> None:
        self._ticks.stop()

    def run_due(self) -> List[str]:
        """Run every job whose period has passed, when this server leads; returns the names run."""
        if not self.leadership.is_leader():
            return []
        ran = []
        for job in list(self.jobs.values()):
            if time.monotonic() - job.last < job.every_s:
                continue
            job.last = time.monotonic()
            try:
                job.run()
            except Exception:
                log.exception("cluster: background job %r failed; tried again in %.0f s", job.name, job.every_s)
            self.runs[job.name] = self.runs.get(job.name, 0) + 1
            ran.append(job.name)
        return ran
