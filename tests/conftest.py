"""Shared fixtures: the real scans in ../shared/data, studies folders made from them, and a real server."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, Optional

# `make test` runs test modules on three workers (pytest-xdist, --dist loadfile: each module whole on one worker, in
# its order). There, each worker and the servers it starts compute on one thread: two processes of two spinning OpenMP
# threads each on two cores cost more CPU than they save (measured: 14.5 min of CPU and 10 min 43 s wall on two
# workers at one thread, against 25 min of CPU and 14 min 51 s at two threads). Code that asks for threads itself
# (the benches' --threads, torch.set_num_threads) gets OpenMP threads that sleep when they wait instead of spinning:
# the simulation bench's test beside two busy cores took 52 CPU-s spinning and 21 passive.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import requests

from amoslabel.processes import LoggedProcess
from tests.preloaded_python import run_module, start_module

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "test-output"


# The longest modules first. xdist hands modules to its workers in collection order (``--no-loadscope-reorder``; its
# default orders them by their number of tests), so a long module handed out last keeps one worker busy after the
# others are done. Wall seconds of each module in `make test` on 2 cores (2026-12-06); the modules not listed follow
# in their usual order. A wrong order costs time, never a result.
LONGEST_FIRST = (
    "tests/cohort/test_ray_cohort.py",  # 240 s, most of it waiting on Ray's niced workers
    "tests/models/pretrained/test_fetch.py",  # 150, with the run's one nnU-Net training (tests/models/pretrained)
    "tests/dicomweb/test_ohif_client.py",  # 120
    "tests/app/test_server.py",  # 112
    "tests/models/pretrained/test_imported_models.py",  # 99
    "tests/app/test_clicks.py",  # 90, 50 of them the sam2 engine's request (SAM2 on a CPU)
    "tests/reliability/test_fuzz.py",  # 86
    "tests/review/test_server_workflow.py",  # 70
    "tests/reliability/test_team.py",  # 68
    "tests/bench/test_baselines.py",  # 65 (at 6 mm; 114 at 3 mm)
    "tests/amoslabel/server/test_first_start.py",  # 65
    "tests/review/web/test_pages.py",  # 62
    "tests/bench/test_clicks_bench.py",  # 57
    "tests/bench/test_al_simulation.py",  # 56
    "tests/bench/test_quality_bench.py",  # 55
    "tests/reliability/test_crash.py",  # 51
    "tests/bench/test_review_load.py",  # 48
    "tests/models/test_distributed_training.py",  # 47
    "tests/app/test_startup.py",  # 32
    "tests/dicomweb/test_dicomweb_workflow.py",  # 31
    "tests/dicomweb/test_orthanc_ohif.py",  # 29
    "tests/bench/test_gpu_check.py",  # 28
    "tests/reliability/test_bad_input.py",  # 27
)


def pytest_collection_modifyitems(config, items):
    """Order the modules by :data:`LONGEST_FIRST` (a stable sort: the tests of a module keep their order)."""
    rank = {path: n for n, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The folder of real scans; the suite is meaningless without it, so its absence fails, not skips."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read the real scans from there")
    return SHARED


@pytest.fixture(scope="session")
def made_sam2(tmp_path_factory) -> Path:
    """SAM2.1 hiera-tiny built from the ``sam2`` package's own config with random weights (seeded), saved as Meta
    publishes checkpoints (``{"model": state_dict}``): no SAM2 weights can be downloaded here. It checks the
    plumbing (models fetch sam2, the click model's sam2 engine), not SAM2's quality."""
    import torch

    from models.pretrained.sam2_weights import build_predictor

    torch.manual_seed(0)
    predictor = build_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", 256, None, "cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": predictor.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


@pytest.fixture
def private_postgres(tmp_path_factory):
    """A private PostgreSQL from Debian's package (:class:`amoslabel.cluster.postgres.PrivatePostgres`): a Unix
    socket only, run as the postgres user; removed after the test."""
    from amoslabel.cluster.postgres import PrivatePostgres

    root = Path(tempfile.mkdtemp(prefix="amos-pg-"))
    try:
        database = PrivatePostgres(root).start()
    except RuntimeError as missing:
        pytest.fail(f"{missing}: `make test` installs Debian's postgresql package; see README")
    try:
        yield database
    finally:
        database.remove()


# Ports for what the tests start are drawn between Ray's worker ports (10000-19999, its default) and the kernel's
# ephemeral range. A port the kernel hands out as free (bind to port 0) comes from the ephemeral range, where any
# process's next outgoing connection may take it before the test's server binds it (seen: a team's server refused
# with "address already in use"). A team (``serve-team``) also takes the ports up to ``port + PORT_SPAN``.


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nobody listens on, below the ephemeral range, with the ``PORT_SPAN`` ports above it free too."""
    from amoslabel.server.team_launch import PORT_SPAN  # here: it imports the review service, which conftest need not

    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    draw = random.SystemRandom()
    for _ in range(100):
        port = draw.randrange(20000, ephemeral_low - PORT_SPAN)
        if all(_bindable(p) for p in range(port, port + PORT_SPAN + 1)):
            return port
    raise RuntimeError("no free block of ports between 20000 and the ephemeral range")


# The admin every test server has (made in the server's store before it starts): tests log in as it, with its
# password through POST /auth/token as 3D Slicer does, or with its API token.
TESTER, TESTER_PASSWORD = "tester", "tester-password-1"


def provision_tester(studies, conf: dict) -> Optional[str]:
    """Make the ``tester`` admin (with :data:`TESTER_PASSWORD`) in the store a server on ``studies`` with ``conf``
    will use; returns a fresh API token of it (None when the configuration cannot load: a start-up that must fail)."""
    from amoslabel.config import ConfigError, load_config
    from amoslabel.data.locations import working_folder
    from review.service import ReviewService

    try:
        config = load_config(conf.get("config"), conf)
    except ConfigError:
        return None
    local = working_folder(str(studies), os.environ.get("MONAI_LABEL_DICOMWEB_CACHE_PATH"))
    service = ReviewService(config, str(local))
    try:
        if service.accounts.by_name(TESTER) is None:
            service.accounts.add_user(TESTER, "admin", actor="tests")
            service.accounts.set_password(TESTER, TESTER_PASSWORD, actor="tests")
        return service.accounts.issue_token(TESTER, actor="tests")
    finally:
        service.store.dispose()


def amoslabel_command(*args: str, env: Optional[dict] = None, timeout: Optional[float] = 600):
    """``python -m amoslabel ARGS...`` as a user runs it in the checkout, its output captured (text); run in a fork of
    the preloaded Python (tests/preloaded_python.py)."""
    return run_module([sys.executable, "-m", "amoslabel", *map(str, args)], ROOT, env, timeout)


def bearer(token: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServerProcess(LoggedProcess):
    """A real ``monailabel start_server`` process running this app, with its log kept for failure messages.

    ``http`` is a requests session that carries the ``tester`` admin's token; ``requests`` itself carries none.
    """

    def __init__(self, studies: Path, workdir: Path, conf: dict, env: Optional[dict] = None):
        from amoslabel.server.launch import server_command, server_environment

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = provision_tester(studies, conf)
        self.http = requests.Session()
        self.http.headers.update(bearer(self.token))
        cmd = server_command(str(studies), "127.0.0.1", self.port, conf)
        # The app dir is shared by every test server; MONAI Label writes logs/ and model/ into it (gitignored).
        # The process is a fork of a Python that imported torch and MONAI once (tests/preloaded_python.py): the
        # same server, started without 5 s of imports.
        self.log_path = workdir / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = start_module(cmd, self.log_path, server_environment(env), workdir)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if self.http.get(f"{self.url}/info/", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        try:
            return self.process.poll() is None and self.http.get(f"{self.url}/info/", timeout=10).ok
        except requests.RequestException:
            return False

    def client(self, tmpdir: Path, name: str = TESTER, secret: str = TESTER_PASSWORD, client_id: Optional[str] = None):
        """``monailabel.client.MONAILabelClient`` logged in as 3D Slicer logs in (``POST /auth/token``)."""
        return login(self.url, tmpdir, name, secret, client_id)


@contextmanager
def running(process: ServerProcess) -> Iterator[ServerProcess]:
    """A started server, ready, stopped when the block ends (a module fixture yields from inside it)."""
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def page_session(url: str, name: str, secret: str) -> requests.Session:
    """A session logged in on the review pages with a password or an API token, as a person's browser is."""
    page = requests.Session()
    form = page.get(f"{url}/review/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    page.post(f"{url}/review/login", data={"username": name, "token": secret, "csrf_token": csrf}, timeout=30)
    return page


def login(url: str, tmpdir: Path, name: str, secret: str, client_id: Optional[str] = None):
    """The client class Slicer uses, logged in with a password or an API token as the secret."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(url, tmpdir=str(tmpdir), client_id=client_id)
    assert client.auth_enabled()
    client.update_auth(client.auth_token(name, secret))
    assert client.auth_valid_token()
    return client


@pytest.fixture(scope="session")
def sample_studies(shared, tmp_path_factory) -> Path:
    """A fresh studies folder with the real sample scans imported (images symlinked, labels as final)."""
    from amoslabel.data.importer import import_source

    studies = tmp_path_factory.mktemp("studies")
    report = import_source(ROOT / "samples" / "shared-data.yaml", studies, link_images=True, progress=False)
    assert not report.skipped, report.summary()
    return studies


# The background scorer (active learning) of a server scores every case at the start: about 11 s of CPU on the sample
# scans, which on a 2-core machine competes with the tests. Servers whose tests do not look at scores run without it;
# the scorer is tested through servers of its own (tests/strategies/test_server_strategies.py, the web pages' round
# trip, tests/reliability/test_crash.py).
NO_SCORER = {"active_learning": "false"}


@pytest.fixture(scope="session")
def server(sample_studies, tmp_path_factory):
    """One real server for the session, on the 3 mm CPU preset so that training and inference take seconds."""
    workdir = tmp_path_factory.mktemp("server")
    proc = ServerProcess(sample_studies, workdir, {"preset": "cpu-fast", **NO_SCORER})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        shutil.copy(proc.log_path, OUTPUT / "server.log") if OUTPUT.exists() else None


@pytest.fixture(scope="session")
def client(server, tmp_path_factory):
    """The client class Slicer uses, logged in as the ``tester`` admin with its password."""
    return server.client(tmp_path_factory.mktemp("client"))


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
