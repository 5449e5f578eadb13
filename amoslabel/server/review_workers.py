"""The review API and pages in worker processes of their own (gunicorn), beside a team's app servers.

In one server the review API runs inside the MONAI Label process (Flask through a2wsgi, ``/review``), sharing its
interpreter lock with MONAI Label's endpoints. In a team (``make run-team``), HAProxy sends ``/review`` to these
workers instead: ``gunicorn -w N --threads T "amoslabel.server.review_workers:create_app()"``, each worker a Flask
app on the same PostgreSQL and the same studies folder, reading the datastore's files (never writing its index).

The MONAI Label endpoints (3D Slicer's) stay on the app servers, at the same origin. A worker never runs the team's
background work: it never leads (its leadership is never started), so a vote that brings a case to consensus is
finalised by the leader's sweep, within about :data:`review.service.SETTLED_S` seconds.

The worker reads its settings from the environment, as MONAI Label's own server does: :data:`STUDIES_ENV` (the
studies folder) and :data:`CONF_ENV` (the ``--conf`` pairs as a JSON object).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List

from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from amoslabel.config import load_config
from amoslabel.data.locations import working_folder
from amoslabel.server.launch import PROJECT_ROOT, server_environment
from amoslabel.workspace import Workspace
from review.api import create_review_api
from review.service import ReviewService

STUDIES_ENV = "AMOSLABEL_STUDIES"
CONF_ENV = "AMOSLABEL_CONF"
KEEP_ALIVE_S = 75  # as the app servers (amoslabel/server/start_server.py): longer than HAProxy keeps idle ones
THREADS = 8  # per worker: requests wait on PostgreSQL, not only on the interpreter


def create_app():
    """The WSGI app of one worker: the review API and pages under ``/review``, nothing else."""
    # here, not at the top: the team's launcher imports this module for the workers' command line, and MONAI Label's
    # datastores import MONAI (seconds of CPU that only the workers need)
    from amoslabel.data.stores import open_datastore

    conf: Dict[str, str] = json.loads(os.environ.get(CONF_ENV, "{}"))
    studies = os.environ[STUDIES_ENV]
    config = load_config(Path(conf["config"]) if conf.get("config") else None, conf)
    cache = os.environ.get("MONAI_LABEL_DICOMWEB_CACHE_PATH")
    service = ReviewService(config, str(Workspace(working_folder(studies, cache)).studies))
    datastore = open_datastore(studies, config.storage, cache, read_only=True)
    service.attach(datastore)
    return DispatcherMiddleware(NotFound(), {"/review": create_review_api(service)})


def worker_command(port: int, workers: int, log_level: str = "info") -> List[str]:
    """gunicorn with ``workers`` processes of :data:`THREADS` threads on ``127.0.0.1:port``."""
    return [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers),
        "--threads", str(THREADS),
        "--bind", f"127.0.0.1:{port}",
        "--keep-alive", str(KEEP_ALIVE_S),
        "--timeout", "300",  # a label upload of a large scan takes a while to check
        "--log-level", log_level,
        "--chdir", str(PROJECT_ROOT),
        "amoslabel.server.review_workers:create_app()",
    ]  # fmt: skip


def worker_environment(studies: str, conf: Dict[str, str]) -> Dict[str, str]:
    return server_environment({STUDIES_ENV: studies, CONF_ENV: json.dumps(conf)})
