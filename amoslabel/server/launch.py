"""The run command: import the sample (or given) studies into a workspace, then start the MONAI Label server.

The server is MONAI Label's own ``start_server`` process, started with this project's app folder. This module adds
what a first-time user needs around it: studies prepared from a dataset folder (without one: the sample data, staged
as a demo), a checked configuration before anything starts, the first users and their passwords (printed once,
:mod:`amoslabel.server.first_start`), logs that say what is happening, and the URL to enter in 3D Slicer once the
server answers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional


from amoslabel.config import load_config
from amoslabel.data.importer import import_source
from amoslabel.data.locations import is_dicomweb, working_folder
from amoslabel.processes import answers
from amoslabel.server.first_start import DEMO_MANIFEST, credentials_text, first_start
from amoslabel.workspace import PROJECT_ROOT, SHARED_DATA, WORKSPACE_DIR, Workspace

APP_DIR = PROJECT_ROOT / "app"

# glibc hands large freed blocks straight back to the kernel; training and sliding-window inference allocate and free
# hundreds of MB per step, so a third of CPU time went to page faults. Keeping them cuts a 64^3 training step by 23%.
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def reexec_with_malloc_tuning() -> None:
    """Restart this Python process with :data:`MALLOC_TUNING` set (glibc reads it only at start-up)."""
    if all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **MALLOC_TUNING})


def server_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a MONAI Label server process running this app."""
    env = dict(os.environ)
    env.update(MALLOC_TUNING)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    # mlflow 3 refuses MONAI Label's default file-based tracking; our versions record what a run needs.
    env.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    env.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def server_command(studies: str, host: str, port: int, conf: Dict[str, str]) -> List[str]:
    cmd = [
        sys.executable,
        "-m",
        "amoslabel.server.start_server",
        "start_server",
        "--app",
        str(APP_DIR),
        "--studies",
        studies,
        "--host",
        host,
        "--port",
        str(port),
    ]
    for key, value in conf.items():
        cmd += ["--conf", key, str(value)]
    return cmd


def prepare_studies(source: Optional[str], workspace: Path, labels_as: str) -> str:
    """Turn ``source`` into a studies folder the server can write into; returns its path (or the DICOMweb URL).

    A dataset is imported into ``workspace`` (images linked, labels as ``labels_as``); a folder imported already (one
    with ``.amoslabel/``) is served where it is, as it stands; a DICOMweb URL is served as given.
    """
    if source and is_dicomweb(source):
        return source
    if not source:
        if not SHARED_DATA.is_dir():
            raise SystemExit(f"No studies given and {SHARED_DATA} does not exist: pass a folder (STUDIES=...).")
        source_path = DEMO_MANIFEST
        name = "demo"
    else:
        source_path = Path(source).resolve()
        if Workspace(source_path).root.is_dir():
            print(
                f"[amoslabel] {source_path} is a studies folder already (it has {WORKSPACE_DIR}/): served where it is"
            )
            return str(source_path)
        name = f"{source_path.name}-{hashlib.sha1(str(source_path).encode()).hexdigest()[:8]}"
    studies = workspace / name / "studies"
    print(f"[amoslabel] importing {source_path} into {studies}", flush=True)
    report = import_source(source_path, studies, labels_as=labels_as, link_images=True)
    print(f"[amoslabel] {report.summary()}", flush=True)
    return str(studies)


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> bool:
    """True once the app answers (``GET /auth/``, public, is served from when the app is ready)."""
    return answers(f"{url}/auth/", lambda: process.poll() is None, timeout)


def run(
    source: Optional[str],
    host: str,
    port: int,
    conf: Dict[str, str],
    workspace: Path,
    labels_as: str,
    pretrained: Optional[str] = None,
) -> int:
    """Import, start the server, print the Slicer URL when it answers, and wait for it to stop.

    ``pretrained`` (``make run PRETRAINED=totalsegmentator``): fetch and import those models first (once) and make
    them the pre-labelers of untrained networks, one per modality."""
    config = load_config(Path(conf["config"]) if conf.get("config") else None, conf)  # fail fast, before importing
    print(f"[amoslabel] configuration OK: preset {config.preset!r}, models {config.models}", flush=True)
    studies = prepare_studies(source, workspace, labels_as)
    local = working_folder(studies, os.environ.get("MONAI_LABEL_DICOMWEB_CACHE_PATH"))
    if pretrained:
        conf = {**conf, "fallback_model": pretrained_fallback(pretrained, config, local)}
    made = first_start(config, local, demo=not source) if config.auth.enabled else []
    url = f"http://{host}:{port}"
    process = subprocess.Popen(server_command(studies, host, port, conf), env=server_environment(), cwd=PROJECT_ROOT)
    asked_to_stop = []  # Ctrl-C or SIGTERM: the server's end that follows is the one asked for

    def stop(*_) -> None:
        asked_to_stop.append(True)
        process.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        if wait_until_ready(f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::") else url, process):
            print("\n" + "=" * 78, flush=True)
            print(f"  AMOS Label is serving {studies}", flush=True)
            print(f"  In 3D Slicer: MONAI Label module -> MONAI Label server: {url}", flush=True)
            print(f"  Review pages: {url}/review/    API: {url}/openapi.json    stop: Ctrl-C", flush=True)
            if made:
                print("\n" + credentials_text(made, url, local), flush=True)
            elif config.auth.enabled:
                print(f"  Log in as a user of this server (users: python -m amoslabel users list --studies {local})")
            print("=" * 78 + "\n", flush=True)
        return stopped(process.wait(), bool(asked_to_stop))
    except KeyboardInterrupt:
        stop()
        return stopped(process.wait(), True)


def pretrained_fallback(choice: str, config, local: Path) -> str:
    """Fetch (once) the pre-labelers of ``choice`` into the studies' models; the ``--conf fallback_model`` value."""
    from models.prior_task import PRIOR_MODEL
    from models.pretrained.fetch import first_day_prelabelers

    models_dir = Workspace(local).models(config.storage.models_dir)
    reserved = [*config.models, *config.active.networks, PRIOR_MODEL]
    chosen = first_day_prelabelers(choice, models_dir, reserved, os.environ.get("USER", "operator"))
    print(f"[amoslabel] first pre-labelers: {', '.join(f'{m}: {n}' for m, n in chosen.items())}", flush=True)
    return ",".join(f"{modality}={name}" for modality, name in chosen.items())


def stopped(code: int, asked: bool) -> int:
    """The exit status: 0 for a server that ended cleanly because it was asked to (Ctrl-C, SIGTERM), where its
    status is the signal's (``make`` would report ``Error 241`` for a clean shutdown); the server's own otherwise."""
    if asked and code in (0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        return 0
    return code
