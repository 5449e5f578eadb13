"""The reviewer consensus queue: server-rendered pages for juniors, seniors and admins (Flask + Jinja templates).

* ``/review/login``: a user name and password (or API token), or a token alone, in; a session cookie out (HttpOnly,
  SameSite=Lax, signed with a secret kept in the studies workspace). Every form carries a per-session CSRF token,
  checked on every POST.
* ``/review/``: my queue; ``/review/cases/<id>``: a case (:mod:`review.web.case_pages`); ``/review/overview``: the
  team overview, and the slice previews (:mod:`review.web.picture_pages`).
* Live state: pages poll a small JSON stamp and, when it changes, swap in a server-rendered fragment.

This module builds the blueprint and what every page group shares (:class:`PageContext`: the session's user, CSRF,
errors); each group registers its routes on it. Everything user-supplied goes through Jinja's autoescaping; no
template marks anything safe.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from http.cookies import SimpleCookie
from typing import Any, Callable, Dict, List, Optional

from flask import Blueprint, Flask, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature

from amoslabel.errors import InputError, ServerUnable, TooManyRequests
from amoslabel.organs import ORGANS
from review.auth import Principal, Unauthorized, token_id_of
from review.logins import client_address
from review.consensus import DECISIONS
from review.queries import audit_stamp, queue
from review.service import ReviewService
from review.web import case_pages, picture_pages, slice_viewer
from review.web.previews import VolumeCache

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SESSION_COOKIE = "amos_review"


class SessionCookies:
    """Reads the review pages' session cookie outside Flask: another server on this host, such as the OHIF viewer's,
    gets the same cookie (cookies do not depend on the port) and learns who is logged in."""

    def __init__(self, service: ReviewService):
        reader = Flask("session-reader")
        reader.secret_key = session_secret(service.workspace.web_secret)
        self.serializer = SecureCookieSessionInterface().get_signing_serializer(reader)
        self.service = service

    def principal(self, cookie_header: Optional[str]) -> Optional[Principal]:
        """The session's user, from a request's ``Cookie`` header; None without a valid, live session."""
        morsel = SimpleCookie(cookie_header or "").get(SESSION_COOKIE)
        if morsel is None:
            return None
        try:
            token_id = self.serializer.loads(morsel.value).get("tid")
            return self.service.accounts.session_principal(token_id) if token_id else None
        except (BadSignature, Unauthorized, AttributeError, ValueError):
            return None


@dataclass
class PageContext:
    """What every page group needs: the service, and the session's user."""

    service: ReviewService
    volumes: VolumeCache = field(default_factory=VolumeCache)

    @property
    def workflow(self):
        return self.service.workflow

    def current_user(self) -> Principal:
        token_id = session.get("tid")
        if not token_id:
            raise Unauthorized("log in with your token")
        return self.service.accounts.session_principal(token_id)  # a revoked token or deactivated user ends it

    def logged_in(self, view: Callable) -> Callable:
        """A view that gets the logged-in user as its first argument (else the login page)."""

        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(self.current_user(), *args, **kwargs)

        return wrapper

    def stamp(self, case_id: str | None = None) -> int:
        return audit_stamp(self.workflow, case_id)


def install_pages(app: Flask, service: ReviewService, secret_file: Path, cookie_secure: bool = False) -> None:
    """Register the pages on the review Flask app (mounted at ``/review``). ``cookie_secure``: the session cookie
    only over HTTPS (``auth.cookie_secure``, behind TLS)."""
    app.secret_key = session_secret(secret_file)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SECURE=bool(cookie_secure),
    )
    pages = Blueprint(
        "pages",
        __name__,
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
        static_url_path="/assets",
    )
    context = PageContext(service)
    _plumbing(pages)
    _session_routes(pages, context)
    _queue_routes(pages, context)
    case_pages.register(pages, context)
    picture_pages.register(pages, context)
    slice_viewer.register(pages, context)
    app.register_blueprint(pages)


def session_secret(path: Path) -> str:
    """The session-signing secret: made once, kept (0600) so that sessions outlive a restart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def error_page(message: str, status: int):
    return render_template("error.html", message=message, status=status, who=None), status


def _plumbing(pages: Blueprint) -> None:
    """Template globals, the CSRF check on every POST, and errors as pages (a lapsed session: the login page)."""

    @pages.app_context_processor
    def _globals() -> Dict[str, Any]:
        return {"csrf_token": csrf_token, "organs": ORGANS, "decisions": DECISIONS}

    @pages.app_template_filter("duration")
    def _duration(seconds: float) -> str:
        seconds = max(0, int(seconds))
        days, rest = divmod(seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes = rest // 60
        return f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min"

    @pages.before_request
    def _check_csrf():
        if request.method == "POST":
            sent = request.form.get("csrf_token", "")
            if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
                return error_page("The form's security token is missing or stale: reload the page and try again.", 400)
        return None

    @pages.errorhandler(InputError)
    def _input_error(error: InputError):
        if isinstance(error, Unauthorized):
            session.pop("tid", None)
            return redirect(url_for("pages.login", next=request.path))
        return error_page(error.message, error.status)

    @pages.errorhandler(ServerUnable)
    def _server_unable(error: ServerUnable):
        return error_page(error.message, error.status)


def _session_routes(pages: Blueprint, context: PageContext) -> None:
    """Log in with a token (a new session, a new CSRF token), log out."""

    @pages.route("/login", methods=["GET", "POST"])
    def login():
        message = None
        if request.method == "POST":
            name = request.form.get("username", "").strip()
            secret = request.form.get("token", "").strip()
            accounts = context.service.accounts
            address = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"))
            try:
                # a user name and a password or API token, or a token alone: the session gets an access token of its
                # own (it expires, and logging out revokes it, never the token the user logged in with)
                token = accounts.login(name, secret, address).token if name else accounts.open_session(secret).token
                who = accounts.authenticate(token)
            except TooManyRequests as error:
                return render_template("login.html", message=error.message, who=None), 429, dict(error.headers)
            except Unauthorized as error:
                message = error.message
            else:
                session.clear()
                session["tid"] = token_id_of(token)
                session["csrf"] = secrets.token_urlsafe(32)  # a new session gets a new CSRF token
                target = request.args.get("next", "")
                log.info("web login: %s (%s)", who.name, who.role)
                return redirect(target if target.startswith("/review/") else url_for("pages.my_queue"))
        return render_template("login.html", message=message, who=None), (401 if message else 200)

    @pages.post("/logout")
    def logout():
        token_id = session.get("tid")
        if token_id:  # the session's access token ends here, not when it would have expired
            context.service.accounts.revoke_token(token_id, actor="logout")
        session.clear()
        return redirect(url_for("pages.login"))


def _queue_routes(pages: Blueprint, context: PageContext) -> None:
    """My queue, its live fragment, and the store's change stamp the pages poll."""

    @pages.get("/")
    @context.logged_in
    def my_queue(who: Principal):
        stamp = context.stamp()  # before the rows: the page's poll then sees any change after it
        return render_template(
            "queue.html",
            who=who,
            rows=_queue_rows(who),
            stamp=stamp,
            ohif=context.service.ohif_viewer is not None,
            server_url=request.host_url.rstrip("/"),
        )

    @pages.get("/queue/panel")
    @context.logged_in
    def queue_panel(who: Principal):
        return render_template(
            "_queue_rows.html", who=who, rows=_queue_rows(who), ohif=context.service.ohif_viewer is not None
        )

    @pages.get("/live")
    @context.logged_in
    def live(who: Principal):
        return {"stamp": context.stamp()}

    def _queue_rows(who: Principal) -> List[Dict[str, Any]]:
        rows = queue(context.workflow, who)
        for row in rows:
            row["others"] = [a["user"] for a in row["assignees"] if a["user"] != who.name]
            row["mine"] = any(a["user"] == who.name for a in row["assignees"])
        return rows
