"""A real ``monailabel start_server`` process for a benchmark: its own apps.yaml copy, a free port, its log."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import requests
import yaml

from amoslabel.server.launch import server_command, server_environment
from amoslabel.workspace import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_bench_server(
    studies: Path,
    work: Path,
    conf: Dict[str, str],
    log_name: str = "server.log",
    env: Optional[Dict[str, str]] = None,
    scoring: bool = False,
) -> Tuple[subprocess.Popen, str]:
    """Start a server on ``studies`` with ``conf`` and wait until it answers; returns the process and its URL.

    ``scoring`` False turns the background scorer off (in a copy of apps.yaml), so that it does not share the cores
    with what is measured.
    """
    config: Dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "apps.yaml").read_text())
    config["active_learning"]["enabled"] = scoring
    (work / "apps.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / log_name, "w")
    process = subprocess.Popen(
        server_command(str(studies), "127.0.0.1", port, {**conf, "config": str(work / "apps.yaml")}),
        env=server_environment(env),
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/auth/", timeout=2).ok:
                return process, url
        except requests.RequestException:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not start; see {work / log_name}")
