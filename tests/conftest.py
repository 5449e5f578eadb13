"""Shared fixtures: the real scans in ../shared/data, studies folders made from them, and a real server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

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


class ServerProcess:
    """A real ``monailabel start_server`` process running this app, with its log kept for failure messages."""

    def __init__(self, studies: Path, workdir: Path, conf: dict):
        from amoslabel.serve import server_command, server_environment

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        cmd = server_command(str(studies), "127.0.0.1", self.port, conf)
        # The app dir is shared by every test server; MONAI Label writes logs/ and model/ into it (gitignored).
        self.process = subprocess.Popen(
            cmd, env=server_environment(), cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT
        )

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

    def tail(self, lines: int = 60) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def sample_studies(shared, tmp_path_factory) -> Path:
    """A fresh studies folder with the real sample scans imported (images symlinked, labels as final)."""
    from amoslabel.importer import import_source

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
