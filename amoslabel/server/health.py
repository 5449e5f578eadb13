"""What a load balancer asks a server: is it up, and does it lead the team's background work.

* ``GET /health``: 200 ``{"status": "ok", "leader": ...}`` while the server reaches its review database, else 503
  with the reason. HAProxy's health check (``amoslabel/cluster/haproxy.cfg.template``) takes a server out of the
  rotation on a 503 or no answer.
* ``GET /health/leader``: 200 on the team's leader (when it reaches the database), 503 on the others. HAProxy sends
  training requests to the server that answers 200, so trainings queue in one place, in order (MONAI Label's own
  queue), one at a time.

Both are public (no token): they say nothing of cases, users or data. Each costs one ``SELECT 1``.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict

from fastapi.responses import JSONResponse

from amoslabel.errors import Unavailable


def install_health_routes(fastapi_app, review, override_route) -> None:
    """``GET /health`` and ``GET /health/leader`` for ``review`` (a :class:`review.service.ReviewService`)."""
    server = f"{socket.gethostname()}:{os.getpid()}"

    def health():
        try:
            review.store.ping()
        except Unavailable as down:
            return JSONResponse({"status": "unavailable", "detail": down.message, "server": server}, status_code=503)
        body: Dict[str, Any] = {"status": "ok", "leader": review.leadership.is_leader(), "server": server}
        return body

    def leader():
        try:
            review.store.ping()  # a leader that cannot reach the database does not lead for long
        except Unavailable as down:
            return JSONResponse({"leader": False, "detail": down.message, "server": server}, status_code=503)
        if review.leadership.is_leader():
            return {"leader": True, "server": server}
        return JSONResponse({"leader": False, "detail": "another server leads", "server": server}, status_code=503)

    override_route(fastapi_app, "/health", health, ["GET"], tags=["Health"], summary="Server health")
    override_route(fastapi_app, "/health/leader", leader, ["GET"], tags=["Health"], summary="Leads background work")
