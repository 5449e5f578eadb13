"""The review API's two hot writes answered by FastAPI itself, in front of the Flask mount at ``/review``.

A junior's submit (``POST /review/api/cases/{id}/submit``) and a senior's vote (``POST .../reviews``) are, with Next
Sample (already a FastAPI route: :mod:`amoslabel.server.routes`), what a review team does all day. Through the mount
each went through the WSGI bridge (a2wsgi: a thread, a WSGI environ, a queue for the answer) and Flask's dispatch
(its URL map, its request context, its after-request hooks) before the workflow's own millisecond. Here they run the
same handlers (:func:`review.api.submit_case`, :func:`review.api.review_case`) with the same token check, errors,
headers and JSON bytes (Flask's own JSON provider), on threads of their own (as the bridge's were), so that a
submit never waits behind inference in the endpoints' shared pool.

Every other review route stays Flask's, and so do these in a team's review workers
(:mod:`amoslabel.server.review_workers`), which serve the Flask app under gunicorn. ``make bench-review`` measures
both designs.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from fastapi import Request
from fastapi.responses import Response

from amoslabel.errors import AnsweredError
from amoslabel.server.own_threads import OwnThreads
from review.api import (
    DEFAULT_CACHE_CONTROL,
    SECURITY_HEADERS,
    check_json_length,
    json_object,
    review_case,
    submit_case,
    token_in,
)
from review.auth import Principal
from review.service import ReviewService

log = logging.getLogger(__name__)
Work = Callable[[Principal, Optional[Dict[str, Any]]], Dict[str, Any]]


class HotReviewRoutes:
    """The routes, answering as the Flask app ``flask_app`` (the one mounted at ``review_path``) would.

    Args:
        service: the review service the mounted app serves.
        flask_app: that app; its JSON provider writes the answers, so that they are the same bytes.
        review_path: where the Flask app is mounted (``/review``).
        threads: the review operations' own threads (:class:`~amoslabel.server.own_threads.OwnThreads`, shared
            with Next Sample's route): never behind inference in the endpoints' shared pool.
    """

    def __init__(self, service: ReviewService, flask_app: Any, review_path: str, threads: OwnThreads):
        self.service = service
        self.json = flask_app.json
        self.prefix = review_path.rstrip("/") + "/api/cases/{case_id}"
        self.threads = threads

    def install(self, fastapi_app, override_route: Callable[..., None]) -> None:
        """Place both routes before the mount (documented in ``review/openapi.yaml``, not in MONAI Label's schema)."""
        service = self.service

        async def submit(request: Request, case_id: str) -> Response:
            return await self.answer(request, lambda who, _: submit_case(service, who, case_id), with_body=False)

        async def reviews(request: Request, case_id: str) -> Response:
            return await self.answer(request, lambda who, body: review_case(service, who, case_id, body))

        override_route(fastapi_app, self.prefix + "/submit", submit, ["POST"], include_in_schema=False)
        override_route(fastapi_app, self.prefix + "/reviews", reviews, ["POST"], include_in_schema=False)

    async def answer(self, request: Request, work: Work, with_body: bool = True) -> Response:
        """Read the body, then on the routes' own threads (a token check may read the store; the endpoints' shared
        pool may be full of inference) parse it as Flask's ``json_body`` does, check the token and do ``work``; answer
        as Flask does: the result, or ``{"detail": ...}``.

        As under a2wsgi, a body is read only as far as its ``Content-Length``: a body without one (chunked) is empty to
        Flask, and so here, and one over :data:`review.api.MAX_JSON_BYTES` is 413 before a byte is read.
        """
        try:
            raw, mimetype = b"", ""
            if with_body:
                header = request.headers.get("content-length", "")
                length = int(header) if header.isdigit() else None
                check_json_length(length)
                raw = await request.body() if length else b""
                mimetype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            # as a2wsgi hands them to Flask: a header sent twice is one value, joined by commas
            headers = {name: ",".join(request.headers.getlist(name)) for name in ("Authorization", "X-Api-Token")}
            token = token_in({name: value for name, value in headers.items() if value})

            def run() -> Dict[str, Any]:
                body = json_object(raw, mimetype) if with_body else None
                return work(self.service.accounts.authenticate(token), body)

            result = await self.threads.run(run)
            return self.respond(result, 200)
        except AnsweredError as error:  # bad input (4xx), the database down (503), the disk full (507)
            return self.respond(error.answer(), error.status, error.headers)
        except Exception:  # noqa: BLE001 - as the Flask app: logged, and a 500 that says where the details are
            log.exception("review API error")
            return self.respond({"detail": "internal error; the server log has the details"}, 500)

    def respond(self, payload: Dict[str, Any], status: int, headers: Optional[Dict[str, str]] = None) -> Response:
        """``payload`` as Flask's ``jsonify`` writes it (compact, keys sorted, a newline), with the API's headers."""
        content = self.json.dumps(payload, separators=(",", ":")) + "\n"
        answer_headers = {"Cache-Control": DEFAULT_CACHE_CONTROL, **SECURITY_HEADERS, **(headers or {})}
        return Response(content, status_code=status, media_type="application/json", headers=answer_headers)
