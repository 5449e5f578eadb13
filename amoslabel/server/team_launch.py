"""A team on one machine: a private PostgreSQL, several app servers on one studies folder, HAProxy in front.

``make run-team SERVERS=2`` (``python -m amoslabel serve-team --servers 2``) imports the studies as ``make run``
does, makes the first users in PostgreSQL, starts the app servers on ``PORT+1 ...`` (loopback), and HAProxy on
``PORT`` (the address every client uses) with its statistics page on ``PORT+100``. What each server shares with the
others:

* the review database: PostgreSQL (users, tokens, cases, versions, votes, the audit log; the leader's lock);
* the studies folder with its workspace: label versions, model versions, the review pages' session secret;
* MONAI Label's inference sessions (``MONAI_LABEL_SESSION_PATH``), so no request needs to stick to one server.

On several machines the same holds with a PostgreSQL and a shared folder the hospital runs (README).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional


from amoslabel.cluster.haproxy import HAProxy
from amoslabel.cluster.postgres import PrivatePostgres
from amoslabel.config import load_config
from amoslabel.processes import LoggedProcess, answers
from amoslabel.server.first_start import credentials_text, first_start
from amoslabel.server.identity import check_auth_off
from amoslabel.server.launch import PROJECT_ROOT, prepare_studies, server_command, server_environment
from amoslabel.server.review_workers import worker_command, worker_environment

SESSIONS_DIR = "monai-sessions"


# The ports a team takes above the load balancer's port: its app servers (port + 1, ...), the review workers
# (port + 50) and HAProxy's statistics page (port + PORT_SPAN), unless given.
REVIEW_PORT_OFFSET = 50
PORT_SPAN = 100


class Team:
    """The processes of a team: its PostgreSQL (unless ``database_url`` names one), ``servers`` app servers, HAProxy.

    Args:
        studies: the studies folder every server serves.
        root: where the team keeps its PostgreSQL, logs, HAProxy configuration and MONAI Label sessions.
        ports: the app servers' ports; ``port``: the load balancer's.
        conf: ``--conf`` overrides for every server (``review_database`` is set here).
    """

    def __init__(
        self,
        studies: str,
        root: Path,
        ports: List[int],
        port: int,
        conf: Optional[Dict[str, str]] = None,
        database_url: Optional[str] = None,
        stats_port: Optional[int] = None,
        host: str = "127.0.0.1",
        review_workers: int = 0,
        review_port: Optional[int] = None,
    ):
        self.studies, self.root, self.ports, self.port = studies, Path(root), list(ports), port
        self.host = host  # where the load balancer listens (the app servers listen on loopback only)
        self.stats_port = stats_port or port + PORT_SPAN
        self.root.mkdir(parents=True, exist_ok=True)
        self.postgres = None if database_url else PrivatePostgres(self.root / "postgres")
        self.database_url = database_url or self.postgres.url
        self.conf = {**(conf or {}), "review_database": self.database_url}
        self.servers: Dict[int, LoggedProcess] = {}
        self.balancer: Optional[LoggedProcess] = None
        self.review_workers = review_workers  # gunicorn worker processes serving /review (0: the app servers do)
        self.review_port = review_port or port + REVIEW_PORT_OFFSET
        self.reviewers: Optional[LoggedProcess] = None

    @property
    def url(self) -> str:
        """The load balancer's address, as this machine reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def server_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def start_database(self) -> "Team":
        if self.postgres is not None and not self.postgres.is_running():
            self.postgres.start()
        return self

    def start_server(self, index: int) -> LoggedProcess:
        """Start app server ``index`` (not waiting for it)."""
        env = server_environment({"MONAI_LABEL_SESSION_PATH": str(self.root / SESSIONS_DIR)})
        command = server_command(self.studies, "127.0.0.1", self.ports[index], self.conf)
        self.servers[index] = LoggedProcess(command, self.root / f"server-{index + 1}.log", env=env, cwd=PROJECT_ROOT)
        return self.servers[index]

    @staticmethod
    def wait_ready(health: str, process: LoggedProcess, timeout_s: float = 600) -> None:
        """Until ``GET health`` answers 200; an error with the log's tail if the process exits first."""
        if answers(health, lambda: process.process.poll() is None, timeout_s, lambda r: r.status_code == 200):
            return
        if process.process.poll() is not None:
            raise RuntimeError(f"{health}: the process exited while starting:\n{process.tail()}")
        raise RuntimeError(f"{health} did not answer 200 within {timeout_s:.0f} s")

    def start(self) -> "Team":
        """PostgreSQL, every server (in parallel), then HAProxy once they answer."""
        self.start_database()
        for index in range(len(self.ports)):
            self.start_server(index)
        for index in range(len(self.ports)):
            self.wait_ready(f"{self.server_url(index)}/health", self.servers[index])
        review = []
        if self.review_workers:
            command = worker_command(self.review_port, self.review_workers)
            env = worker_environment(self.studies, self.conf)
            self.reviewers = LoggedProcess(command, self.root / "review-workers.log", env=env, cwd=PROJECT_ROOT)
            self.wait_ready(f"http://127.0.0.1:{self.review_port}/review/api/health", self.reviewers)
            review = [f"127.0.0.1:{self.review_port}"]
        servers = [f"127.0.0.1:{p}" for p in self.ports]
        haproxy = HAProxy(self.root / "haproxy.cfg", self.root / "haproxy.log")
        haproxy.write(f"{self.host}:{self.port}", servers, f"127.0.0.1:{self.stats_port}", review)
        self.balancer = haproxy.start()
        self.wait_ready(f"{self.url}/health", self.balancer, timeout_s=30)
        return self

    def kill(self, index: int) -> None:
        """kill -9 app server ``index`` (a crash: nothing is flushed, no request is finished)."""
        process = self.servers[index].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop(5)
        for server in self.servers.values():
            server.stop()
        if self.reviewers is not None:
            self.reviewers.stop()
        if self.postgres is not None:
            self.postgres.stop()


def run_team(
    source: Optional[str],
    host: str,
    port: int,
    servers: int,
    conf: Dict[str, str],
    workspace: Path,
    review_workers: int = 2,
    labels_as: str = "final",
) -> int:
    """``make run-team``: import, start the team, print where to connect, and wait until Ctrl-C."""
    config = load_config(Path(conf["config"]) if conf.get("config") else None, conf)
    if not config.auth.enabled:  # the app servers listen on loopback, but HAProxy publishes them on ``host``
        check_auth_off(host)
    studies = prepare_studies(source, workspace, labels_as)
    ports = [port + 1 + n for n in range(servers)]
    team = Team(studies, workspace / "team", ports, port, conf, host=host, review_workers=review_workers)
    try:
        team.start_database()
        print(f"[amoslabel] PostgreSQL: {team.database_url}", flush=True)
        team_config = load_config(Path(conf["config"]) if conf.get("config") else None, team.conf)
        made = first_start(team_config, Path(studies), demo=not source) if config.auth.enabled else []
        print(f"[amoslabel] starting {servers} app servers on ports {team.ports} ...", flush=True)
        team.start()
        url = f"http://{host}:{port}"
        print("\n" + "=" * 78, flush=True)
        print(f"  AMOS Label team: {servers} app servers, {review_workers} review workers, HAProxy", flush=True)
        print(f"  serving {studies}", flush=True)
        print(f"  Every client (3D Slicer, the review pages, OHIF): {url}", flush=True)
        print(f"  HAProxy's statistics: http://127.0.0.1:{team.stats_port}/    logs: {team.root}", flush=True)
        if made:
            print("\n" + credentials_text(made, url, Path(studies), team.database_url), flush=True)
        print("=" * 78 + "\n", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        reported = set()
        while any(s.process.poll() is None for s in team.servers.values()):
            for index, server in team.servers.items():
                if server.process.poll() is not None and index not in reported:
                    reported.add(index)
                    print(f"[amoslabel] app server {index + 1} exited; the others serve on ({server.log_path})")
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        team.stop()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt
