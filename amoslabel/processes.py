"""A child process whose output goes to a log file: the servers this project starts (Orthanc, MONAI Label, a
team's PostgreSQL, HAProxy and review workers), and the wait until one answers HTTP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import requests


class LoggedProcess:
    """Start ``command`` with stdout and stderr in ``log_path``; read the log's tail for error messages; stop it
    politely (SIGTERM lets a server close its database), then firmly."""

    def __init__(self, command: Sequence[str], log_path: str | Path, **popen: Any):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(list(command), stdout=self._log, stderr=subprocess.STDOUT, **popen)

    def tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log."""
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def answers(
    url: str,
    alive: Callable[[], bool],
    timeout_s: float,
    ready: Callable[[requests.Response], bool] = lambda reply: reply.ok,
    headers: Optional[dict] = None,
) -> bool:
    """Poll ``GET url`` every 0.5 s until ``ready(reply)``: True; False once ``alive()`` is false (the process
    exited) or ``timeout_s`` has passed."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and alive():
        try:
            if ready(requests.get(url, headers=headers, timeout=2)):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False
