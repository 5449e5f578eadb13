"""The review JSON API (Flask), mounted in the MONAI Label server under ``/review`` (see app/main.py).

Every call but the OpenAPI description needs ``Authorization: Bearer <token>``: none or an unknown token is 401, a
role or ownership that does not allow the call is 403, an illegal transition is 409, bad input is 400/422. The
description of every route is ``review/openapi.yaml``, served at ``/review/api/openapi.json``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException as WerkzeugHTTPException

from amoslabel.errors import InputError, ServerUnable
from review.auth import Principal, Unauthorized, token_id_of
from review.queries import case_detail, history, queue
from review.service import ReviewService
from review.statistics import agreement_stats
from review.web.pages import install_pages

log = logging.getLogger(__name__)
OPENAPI = Path(__file__).with_name("openapi.yaml")
MAX_JSON_BYTES = 1 << 20
MAX_LABEL_BYTES = 512 << 20


def create_review_api(service: ReviewService) -> Flask:
    """The Flask app of the review API (and of the review pages, :mod:`review.web.pages`)."""
    app = Flask("amoslabel-review")
    app.config["MAX_CONTENT_LENGTH"] = MAX_LABEL_BYTES
    _error_handlers(app)
    _case_routes(app, service)
    _team_routes(app, service)
    app.after_request(_security_headers)
    install_pages(app, service, service.workspace.web_secret, service.auth_settings.cookie_secure)
    return app


def token_in(headers: Mapping[str, str]) -> Optional[str]:
    """A request's token (``Authorization: Bearer`` or ``X-Api-Token``), if any."""
    header = headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else headers.get("X-Api-Token")


def request_token() -> Optional[str]:
    """The request's token, if any (:func:`token_in`)."""
    return token_in(request.headers)


def request_token_id() -> Optional[str]:
    """The public id of the request's token (None without a well-formed one)."""
    try:
        return token_id_of(request_token() or "")
    except Unauthorized:
        return None


def principal_of_request(service: ReviewService) -> Principal:
    """The user of the request's token; 401 without one."""
    return service.accounts.authenticate(request_token())


def json_body() -> Dict[str, Any]:
    """The request's JSON object; 400 for anything else, 413 when too large."""
    check_json_length(request.content_length)
    return json_object(request.get_data(), request.mimetype)


def check_json_length(length: Optional[int]) -> None:
    """413 for a JSON body over :data:`MAX_JSON_BYTES`."""
    if length and length > MAX_JSON_BYTES:
        raise InputError(f"a JSON body may be at most {MAX_JSON_BYTES} bytes", status=413)


def json_object(body: bytes, mimetype: str) -> Dict[str, Any]:
    """A body as a JSON object, as Flask's ``get_json(silent=True)`` reads it (a JSON content type, UTF-8); 400 for
    anything else: another content type, a body that is not JSON, a list."""
    data = None
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        try:
            data = json.loads(body)
        except RecursionError:  # thousands of nested brackets: Python's parser gives up
            raise InputError("the JSON body is nested too deeply") from None
        except ValueError:
            data = None
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    return data


def step_answer(service: ReviewService, who: Principal, case_id: str, action: str) -> Dict[str, Any]:
    """``POST /api/cases/<id>/undo`` and ``/redo``: what the step saved, with the case's state as a save's answer."""
    answer = service.step(who, case_id, action)
    return {"case": answer.get("state"), **answer}


def submit_case(service: ReviewService, who: Principal, case_id: str) -> Dict[str, Any]:
    """``POST /api/cases/<id>/submit``: the junior hands the case to review (here, and natively in one server:
    :mod:`amoslabel.server.review_hot_routes`)."""
    return service.workflow.submit(who, case_id)


def review_case(service: ReviewService, who: Principal, case_id: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """``POST /api/cases/<id>/reviews``: a senior's organ votes (here, and natively in one server)."""
    votes = data.get("votes", [])
    if not isinstance(votes, list):
        raise InputError("votes must be a list")
    votes = service.anchor_points(case_id, votes)
    return service.after_review(service.workflow.review(who, case_id, votes, data.get("default")))


def _error_handlers(app: Flask) -> None:
    """Every error as ``{"detail": ...}`` (and its fields, e.g. ``state``) with its status; an unexpected one is
    logged and answered 500."""

    @app.errorhandler(InputError)
    def _input_error(error: InputError):  # with its headers: a 429's Retry-After
        return jsonify(error.answer()), error.status, dict(error.headers or {})

    @app.errorhandler(ServerUnable)
    def _server_unable(error: ServerUnable):  # the database down (503), the disk full (507)
        return jsonify(error.answer()), error.status, dict(error.headers or {})

    @app.errorhandler(WerkzeugHTTPException)
    def _http_error(error: WerkzeugHTTPException):
        response = jsonify(detail=error.description)
        response.status_code = error.code or 500
        for name, value in error.get_headers():  # e.g. the Allow header of a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("review API error")
        return jsonify(detail="internal error; the server log has the details"), 500


def _case_routes(app: Flask, service: ReviewService) -> None:
    """The queue and a case: claim, label, submit, review, resolve, detail, history."""
    workflow = service.workflow

    def principal() -> Principal:
        return principal_of_request(service)

    @app.get("/api/openapi.json")
    def openapi():
        return jsonify(yaml.safe_load(OPENAPI.read_text()))

    @app.get("/api/health")
    def health():  # public: a load balancer's check of a review worker (one SELECT 1; 503 when the store is down)
        service.store.ping()
        return jsonify(status="ok")

    @app.get("/api/me")
    def me():
        who = principal()
        return jsonify(name=who.name, role=who.role, id=who.id, pseudonym=who.pseudonym)

    @app.post("/api/me/password")
    def my_password():
        who = principal()
        body = json_body()
        ended = service.accounts.change_own_password(
            who, body.get("current_password"), body.get("password"), keep_token=request_token_id()
        )
        return jsonify(name=who.name, password="set", other_sessions_ended=ended)

    @app.get("/api/queue")
    def my_queue():
        return jsonify(cases=queue(workflow, principal()))

    @app.post("/api/cases/<case_id>/claim")
    def claim(case_id: str):
        return jsonify(workflow.claim(principal(), case_id))

    @app.post("/api/cases/<case_id>/submit")
    def submit(case_id: str):
        return jsonify(submit_case(service, principal(), case_id))

    @app.post("/api/cases/<case_id>/label")
    def save_label(case_id: str):
        who = principal()
        upload = request.files.get("label")
        if upload is None:
            raise InputError("send the label file as multipart field 'label'")
        submit_now = str(request.form.get("submit", "false")).lower() in ("1", "true", "yes")
        workflow.check_may_save(who, case_id)  # who may save is answered before what was sent
        with tempfile.TemporaryDirectory(prefix="review-label-") as tmp:
            path = Path(tmp) / "label.nii.gz"
            upload.save(path)
            label = service.read_case_label(case_id, path)  # a corrupt or off-grid file refused before it is a version
            workflow.save_version(who, case_id, label, submit=submit_now)
        # "case" (the state) as before, and what the save did (review.save_answers)
        answer = service.save_answer(who.name, case_id)
        return jsonify(case=case_detail(workflow, case_id, who)["state"], **answer)

    @app.post("/api/cases/<case_id>/undo")
    def undo(case_id: str):
        return jsonify(step_answer(service, principal(), case_id, "undo"))

    @app.post("/api/cases/<case_id>/redo")
    def redo(case_id: str):
        return jsonify(step_answer(service, principal(), case_id, "redo"))

    @app.post("/api/cases/<case_id>/reviews")
    def review(case_id: str):
        data = json_body()
        return jsonify(review_case(service, principal(), case_id, data))

    @app.post("/api/cases/<case_id>/resolve")
    def resolve(case_id: str):
        return jsonify(service.after_review(workflow.resolve(principal(), case_id, str(json_body().get("action")))))

    @app.post("/api/cases/<case_id>/withdraw")
    def withdraw(case_id: str):
        return jsonify(service.withdraw(principal(), case_id, json_body().get("reason")))

    @app.post("/api/cases/<case_id>/purge")
    def purge(case_id: str):
        return jsonify(service.purge(principal(), case_id))

    @app.get("/api/cases/<case_id>")
    def detail(case_id: str):
        who = principal()
        found = case_detail(workflow, case_id, who)
        workflow.record_opened(who.name, case_id, "review API")
        return jsonify(found)

    @app.get("/api/cases/<case_id>/history")
    def case_history(case_id: str):
        return jsonify(events=history(workflow, case_id, principal()))


def _team_routes(app: Flask, service: ReviewService) -> None:
    """Agreement statistics (seniors, admins) and user management (admins)."""
    accounts = service.accounts

    def principal() -> Principal:
        return principal_of_request(service)

    @app.get("/api/stats/agreement")
    def agreement():
        principal().require("senior", "admin")
        return jsonify(agreement_stats(service.workflow))

    @app.get("/api/users")
    def users():
        principal().require("admin")
        return jsonify(users=accounts.list_users())

    @app.post("/api/users")
    def add_user():
        who = principal().require("admin")
        data = json_body()
        user = accounts.add_user(data.get("name"), data.get("role"), actor=who.name)
        return jsonify(name=user.name, role=user.role, token=accounts.issue_token(user.name, actor=who.name)), 201

    @app.post("/api/users/<name>/tokens")
    def new_token(name: str):
        who = principal().require("admin")
        return jsonify(token=accounts.issue_token(name, actor=who.name)), 201

    @app.delete("/api/users/<name>/tokens")
    def revoke(name: str):
        who = principal().require("admin")
        return jsonify(revoked=accounts.revoke_tokens(name, actor=who.name))

    @app.post("/api/users/<name>/password")
    def set_password(name: str):
        who = principal().require("admin")
        accounts.set_password(name, json_body().get("password"), actor=who.name)
        return jsonify(name=name, password="set")


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # no inline script runs on our pages: a comment that smuggles markup in cannot execute even if unescaped
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'",
}
DEFAULT_CACHE_CONTROL = "no-store"  # a page or an answer may say otherwise (a picture's cache time)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", DEFAULT_CACHE_CONTROL)
    response.headers.update(SECURITY_HEADERS)
    return response
