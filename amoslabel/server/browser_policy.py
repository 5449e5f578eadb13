"""What a browser is told about the server's routes that MONAI Label brings: who may read them from another origin,
which security headers come with them, and that MONAI Label's own HTML pages are off.

* **CORS.** MONAI Label builds its app with Starlette's ``CORSMiddleware`` allowing every origin *with credentials*
  (its setting ``MONAI_LABEL_CORS_ORIGINS`` empty means ``*``, and Starlette then echoes any ``Origin`` back). So a
  page on another port of the same host (same site: the browser sends the review session's Lax cookie) could read a
  senior's case page, take its form token and vote as that senior. That middleware is replaced, in the app's own
  middleware list, by the same class with the allow-list ``auth.cors_origins`` of ``apps.yaml``. The server's own
  pages and the OHIF viewer it serves need no entry (they are same-origin: the OHIF port proxies ``/dicom-web`` to
  this server), so the default list is empty. The review pages and API never answer with CORS headers.
* **Headers.** Every answer outside ``/review`` (which sets its own, stricter ones) gets ``nosniff``, no framing by
  other sites and no referrer to other sites.
* **MONAI Label's pages.** ``/`` (Swagger UI) and ``/docs`` (ReDoc) load their scripts from public CDNs, which a
  hospital network may not reach and no CSP of ours could allow; no client needs them. ``/`` leads to the review
  pages; ``/docs`` answers 404 and names the machine-readable descriptions (``/openapi.json`` for MONAI Label's
  endpoints, ``/review/api/openapi.json`` for the review API).
"""

from __future__ import annotations

import logging
from typing import Sequence

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

log = logging.getLogger(__name__)

OWN_HEADERS_PREFIX = "/review"  # the review pages and API: same-origin only, their own security headers
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),  # MONAI Label's OHIF panel frames its own pages
    (b"referrer-policy", b"same-origin"),
)


class AllowListedCors(CORSMiddleware):
    """Starlette's CORS middleware for the listed origins, bypassed for the review pages and API."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith(OWN_HEADERS_PREFIX):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every answer outside ``/review`` that lacks them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith(OWN_HEADERS_PREFIX):
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def apply_browser_policy(fastapi_app, origins: Sequence[str], override_route=None) -> None:
    """Replace MONAI Label's CORS middleware with :class:`AllowListedCors` for ``origins``, add
    :class:`SecurityHeaders`, rebuild the app's middleware stack (built when the app started), and switch MONAI
    Label's HTML pages off (with ``override_route``, :func:`amoslabel.server.routes.override_route`)."""
    policy = Middleware(
        AllowListedCors,
        allow_origins=list(origins),
        allow_credentials=True,
        allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-Api-Token"],
    )
    kept = [m for m in fastapi_app.user_middleware if m.cls not in (CORSMiddleware, AllowListedCors, SecurityHeaders)]
    fastapi_app.user_middleware[:] = [Middleware(SecurityHeaders), policy, *kept]
    fastapi_app.middleware_stack = fastapi_app.build_middleware_stack()
    if override_route is not None:
        override_route(fastapi_app, "/", lambda: RedirectResponse("/review/"), ["GET"], include_in_schema=False)
        override_route(fastapi_app, "/docs", _no_docs, ["GET"], include_in_schema=False)
    log.info("CORS: %s", f"credentials for {list(origins)}" if origins else "no other origin may call this server")


def _no_docs():
    return JSONResponse(
        {
            "detail": "MONAI Label's documentation pages are off on this server (they load scripts from public CDNs). "
            "The API descriptions: /openapi.json (MONAI Label's endpoints) and /review/api/openapi.json (the review "
            "API); README: The review workflow."
        },
        status_code=404,
    )
