"""HAProxy in front of a team's app servers: the checked-in template, rendered for given servers, and run.

The template (``haproxy.cfg.template`` beside this file) holds every decision: health checks, least-connection
balancing, no sticky routing, training to the leader, keep-alive shorter than the servers', retries only of requests
that never reached a server. This module fills in addresses and starts Debian's ``haproxy`` in the foreground.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from string import Template
from typing import List, Sequence

from amoslabel.processes import LoggedProcess

TEMPLATE = Path(__file__).with_name("haproxy.cfg.template")
ERRORFILE_503 = Path(__file__).with_name("haproxy-503.http")
ERRORFILE_502 = Path(__file__).with_name("haproxy-502.http")


def render(bind: str, servers: Sequence[str], stats_bind: str, review: Sequence[str] = ()) -> str:
    """The configuration for app ``servers`` and ``review`` workers (``host:port`` each; no review workers: the
    app servers serve the review API too), listening on ``bind`` (``host:port``)."""
    lines = [f"    server app{n + 1} {address} check" for n, address in enumerate(servers)]
    review_lines = [f"    server review{n + 1} {address} check" for n, address in enumerate(review)] or lines
    return Template(TEMPLATE.read_text()).substitute(
        bind=bind,
        servers_block="\n".join(lines),
        leader_block="\n".join(lines),
        review_block="\n".join(review_lines),
        stats_bind=stats_bind,
        errorfile_503=ERRORFILE_503.resolve(),
        errorfile_502=ERRORFILE_502.resolve(),
    )


class HAProxy:
    """``haproxy -f CONFIG -db`` (in the foreground) as a child process, its log in ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path):
        self.config_path, self.log_path = Path(config_path), Path(log_path)

    @staticmethod
    def binary() -> str:
        found = shutil.which("haproxy") or (Path("/usr/sbin/haproxy").is_file() and "/usr/sbin/haproxy")
        if not found:
            raise RuntimeError("HAProxy is not installed: run scripts/system-packages.sh (Debian's haproxy package)")
        return str(found)

    def write(self, bind: str, servers: Sequence[str], stats_bind: str, review: Sequence[str] = ()) -> "HAProxy":
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render(bind, servers, stats_bind, review))
        checked = subprocess.run([self.binary(), "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"HAProxy refused {self.config_path}: {checked.stdout}{checked.stderr}")
        return self

    def command(self) -> List[str]:
        return [self.binary(), "-f", str(self.config_path), "-db"]

    def start(self) -> LoggedProcess:
        return LoggedProcess(self.command(), self.log_path)
