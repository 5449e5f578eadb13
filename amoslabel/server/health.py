"""What a load balancer asks a server: is it up, and does it lead the team's background work.

* ``GET /health``: 200 ``{"status": "ok"}`` while the server reaches its review database, else 503
  ``{"status": "unavailable"}``. HAProxy's health check (``amoslabel/cluster/haproxy.cfg.template``) takes a server
  out of the rotation on a 503 or no answer.
* ``GET /health/leader``: 200 on the team's leader (when it reaches the database), 503 on the others. HAProxy sends
  training requests to the server that answers 200, so trainings queue in one place, in order (MONAI Label's own
  queue), one at a time.

Both are public (no token), so they say only healthy or not, and leader or not: nothing of the machine (its host
name, the process), the database or the data (the reason a server is unhealthy is in its log). Each costs one
``SELECT 1``.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from amoslabel.errors import Unavailable

log = logging.getLogger(__name__)


def install_health_routes(fastapi_app, review, override_route) -> None:
    """``GET /health`` and ``GET /health/leader`` for ``review`` (a :class:`review.service.ReviewService`)."""

    def reachable() -> bool:
        try:
            review.store.ping()
            return True
        except Unavailable as down:
            log.warning("health: the review database cannot be reached: %s", down.message)
            return False

    def health():
        if not reachable():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    def leader():
        # a leader that cannot reach the database does not lead for long
        if reachable() and review.leadership.is_leader():
            return {"leader": True}
        return JSONResponse({"leader": False}, status_code=503)

    override_route(fastapi_app, "/health", health, ["GET"], tags=["Health"], summary="Server health")
    override_route(fastapi_app, "/health/leader", leader, ["GET"], tags=["Health"], summary="Leads background work")
