"""Shared fixtures: the real scans in ../shared/data, studies folders made from them, and a real server."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

# `make test` runs test modules on two workers (pytest-xdist, --dist loadfile: each module whole on one worker, in its
# order). There, each worker and the servers it starts compute on one thread: two processes of two spinning OpenMP
# threads each on two cores cost more CPU than they save (measured: 14.5 min of CPU and 10 min 43 s wall on two
# workers at one thread, against 25 min of CPU and 14 min 51 s at two threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import pytest
import requests

from amoslabel.processes import LoggedProcess

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "test-output"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The folder of real scans; the suite is meaningless without it, so its absence fails, not skips."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read the real scans from there")
    return SHARED


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess(LoggedProcess):
    """A real ``monailabel start_server`` process running this app, with its log kept for failure messages."""

    def __init__(self, studies: Path, workdir: Path, conf: dict):
        from amoslabel.server.launch import server_command, server_environment

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = server_command(str(studies), "127.0.0.1", self.port, conf)
        # The app dir is shared by every test server; MONAI Label writes logs/ and model/ into it (gitignored).
        super().__init__(cmd, workdir / f"server-{self.port}.log", env=server_environment(), cwd=workdir)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        try:
            return self.process.poll() is None and requests.get(f"{self.url}/info/", timeout=10).ok
        except requests.RequestException:
            return False


@pytest.fixture(scope="session")
def sample_studies(shared, tmp_path_factory) -> Path:
    """A fresh studies folder with the real sample scans imported (images symlinked, labels as final)."""
    from amoslabel.data.importer import import_source

    studies = tmp_path_factory.mktemp("studies")
    report = import_source(ROOT / "samples" / "shared-data.yaml", studies, link_images=True, progress=False)
    assert not report.skipped, report.summary()
    return studies


@pytest.fixture(scope="session")
def server(sample_studies, tmp_path_factory):
    """One real server for the session, on the 3 mm CPU preset so that training and inference take seconds."""
    workdir = tmp_path_factory.mktemp("server")
    proc = ServerProcess(sample_studies, workdir, {"preset": "cpu-fast"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        shutil.copy(proc.log_path, OUTPUT / "server.log") if OUTPUT.exists() else None


@pytest.fixture(scope="session")
def client(server, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


# Debian's chromium for the browser tests (never `playwright install`: it downloads a browser). The background
# networking flags matter: without them Chromium keeps trying to reach hosts this closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
