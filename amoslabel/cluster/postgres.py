"""A private PostgreSQL for a team on one machine (``make run-team``), the tests and the benchmarks.

Debian's ``postgresql`` package is used as it is: ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/<n>/bin``,
run as the ``postgres`` user when this runs as root (PostgreSQL refuses root). It listens on a Unix socket in its
own folder only (no TCP port), trusts local connections, and keeps its data under ``root``. A team on several
machines uses a PostgreSQL the hospital runs instead (README, *A team on several servers*).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List

USER = "amos"
DATABASE = "postgres"


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's programs; a clear error when none is."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/system-packages.sh (Debian's postgresql package)")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL instance in ``root`` (``data/``, ``sock/``, ``log``), made at the first :meth:`start`.

    Args:
        root: its folder (kept between starts: the data survives a stop).
        max_connections: each app server keeps a pool of up to 30 connections.
    """

    def __init__(self, root: Path, max_connections: int = 200):
        self.root = Path(root)
        self.data, self.socket_dir, self.log = self.root / "data", self.root / "sock", self.root / "log"
        self.max_connections = max_connections
        self.bindir = postgres_bindir()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its database, over the Unix socket."""
        return f"postgresql+psycopg://{USER}@/{DATABASE}?host={self.socket_dir}"

    def _as_owner(self) -> List[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _ctl(self, *args: str) -> subprocess.CompletedProcess:
        command = self._as_owner() + [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(command, capture_output=True, text=True)

    def start(self) -> "PrivatePostgres":
        """Make the instance if it is new, and start it (waits until it accepts connections)."""
        if not (self.data / "PG_VERSION").exists():
            for folder in (self.root, self.data, self.socket_dir):
                folder.mkdir(parents=True, exist_ok=True)
                if self._as_owner():
                    shutil.chown(folder, "postgres")
            made = subprocess.run(
                self._as_owner() + [str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER],
                capture_output=True,
                text=True,
            )
            if made.returncode != 0:
                hint = " (every folder above it must be open to the postgres user)" if self._as_owner() else ""
                raise RuntimeError(f"initdb failed in {self.data}{hint}: {made.stderr.strip()[-500:]}")
        options = f"-k {self.socket_dir} -c listen_addresses='' -c max_connections={self.max_connections}"
        started = self._ctl("-o", options, "-l", str(self.log), "-w", "start")
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()[-500:]}; see {self.log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` (a clean shutdown) or ``immediate`` (as a crash: no checkpoint)."""
        self._ctl("-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def is_running(self) -> bool:
        return self._ctl("status").returncode == 0

    def remove(self) -> None:
        """Stop it (as a crash: nothing is kept) and delete its folder."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
