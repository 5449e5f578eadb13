"""The reviewer consensus queue: server-rendered pages for juniors, seniors and admins (Flask + Jinja templates).

* ``/review/login``: a user token in, a session cookie out (HttpOnly, SameSite=Lax, signed with a secret kept in
  the studies workspace). Every form carries a per-session CSRF token, checked on every POST.
* ``/review/``: my queue; ``/review/cases/<id>``: a case (organ table, comments, agreement, history, previews,
  actions for the role); ``/review/overview``: the team overview (admins).
* Live state: pages poll a small JSON stamp and, when it changes, swap in a server-rendered fragment.

Everything user-supplied goes through Jinja's autoescaping; no template marks anything safe.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from functools import wraps
from pathlib import Path
from typing import Any, Dict, List, Optional

from flask import Blueprint, Flask, Response, abort, redirect, render_template, request, session, url_for
from sqlalchemy import func, select

from amoslabel.cases import check_id
from amoslabel.errors import InputError, Unprocessable
from amoslabel.organs import ORGANS
from review.auth import Principal, Unauthorized, token_id_of
from review.consensus import DECISIONS
from review.queries import case_detail, history, queue
from review.schema import AuditEvent, LabelVersion
from review.service import ReviewService
from review.web.overview import PLOTS, plot_png, team_figures
from review.web.previews import VIEWS, VolumeCache, default_centre, render

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def install_pages(app: Flask, service: ReviewService, secret_file: Path) -> None:
    """Register the pages on the review Flask app (mounted at ``/review``)."""
    app.secret_key = _secret(secret_file)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="amos_review")
    app.register_blueprint(_blueprint(service))


def _secret(path: Path) -> str:
    """The session-signing secret: made once, kept (0600) so that sessions outlive a restart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _blueprint(service: ReviewService) -> Blueprint:
    pages = Blueprint(
        "pages",
        __name__,
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
        static_url_path="/assets",
    )
    workflow, accounts = service.workflow, service.accounts
    volumes = VolumeCache()

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    def current_user() -> Principal:
        token_id = session.get("tid")
        if not token_id:
            raise Unauthorized("log in with your token")
        return accounts.session_principal(token_id)  # a revoked token or deactivated user ends the session

    def logged_in(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(current_user(), *args, **kwargs)

        return wrapper

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
                return _error_page("The form's security token is missing or stale: reload the page and try again.", 400)
        return None

    @pages.errorhandler(InputError)
    def _input_error(error: InputError):
        if isinstance(error, Unauthorized):
            session.pop("tid", None)
            return redirect(url_for("pages.login", next=request.path))
        return _error_page(error.message, error.status)

    def _error_page(message: str, status: int):
        return render_template("error.html", message=message, status=status, who=None), status

    # -- session -------------------------------------------------------------------------------------------------
    @pages.route("/login", methods=["GET", "POST"])
    def login():
        message = None
        if request.method == "POST":
            token = request.form.get("token", "").strip()
            try:
                who = accounts.authenticate(token)
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
        session.clear()
        return redirect(url_for("pages.login"))

    # -- queue ---------------------------------------------------------------------------------------------------
    @pages.get("/")
    @logged_in
    def my_queue(who: Principal):
        return render_template("queue.html", who=who, rows=_queue_rows(who), stamp=_stamp())

    @pages.get("/queue/panel")
    @logged_in
    def queue_panel(who: Principal):
        return render_template("_queue_rows.html", who=who, rows=_queue_rows(who))

    def _queue_rows(who: Principal) -> List[Dict[str, Any]]:
        rows = queue(workflow, who)
        for row in rows:
            others = [a["user"] for a in row["assignees"] if a["user"] != who.name]
            row["others"] = others
            row["mine"] = any(a["user"] == who.name for a in row["assignees"])
        return rows

    # -- a case --------------------------------------------------------------------------------------------------
    @pages.get("/cases/<case_id>")
    @logged_in
    def case_page(who: Principal, case_id: str):
        panel = _panel(who, case_id)
        workflow.record_opened(who.name, case_id, "review page")
        focus = _focus(request.args.get("at"))
        return render_template(
            "case.html",
            who=who,
            **panel,
            focus=focus,
            views=VIEWS,
            has_attention=service.locate_attention is not None and service.locate_attention(case_id) is not None,
            server_url=request.host_url.rstrip("/"),
            ohif_url=service.ohif_link(case_id),
        )

    @pages.get("/cases/<case_id>/panel")
    @logged_in
    def case_panel(who: Principal, case_id: str):
        return render_template("_case_panel.html", who=who, **_panel(who, case_id))

    @pages.get("/cases/<case_id>/live")
    @logged_in
    def case_live(who: Principal, case_id: str):
        detail = case_detail(workflow, check_id(case_id, "case id"), who)
        return {"state": detail["state"], "round": detail["round"], "stamp": _stamp(case_id)}

    @pages.get("/live")
    @logged_in
    def live(who: Principal):
        return {"stamp": _stamp()}

    def _panel(who: Principal, case_id: str) -> Dict[str, Any]:
        detail = case_detail(workflow, check_id(case_id, "case id"), who)
        readers = sorted({a["user"] for a in detail["assignees"] if a["duty"] == "review"} | _voters(detail))
        organ_rows = []
        for organ in ORGANS:
            votes = detail["votes"].get(organ.name, {})
            state = workflow.rules[organ.id].decide(list(votes.values()), max(len(readers), 1))
            if detail["state"] in ("consensus", "final") and detail["decisions"]:
                state = detail["decisions"][-1]["organs"].get(organ.name, state)
            organ_rows.append(
                {
                    "organ": organ,
                    "votes": votes,
                    "consensus": state,
                    "comments": [c for c in detail["comments"] if c["organ"] == organ.id],
                }
            )
        return {
            "case": detail,
            "organ_rows": organ_rows,
            "readers": readers,
            "events": list(reversed(history(workflow, case_id, who))),
            "actions": _actions(who, detail),
            "agreement": next((d["agreement"] for d in reversed(detail["decisions"]) if d.get("agreement")), None),
        }

    def _voters(detail: Dict[str, Any]) -> set:
        return {reader for votes in detail["votes"].values() for reader in votes}

    def _actions(who: Principal, detail: Dict[str, Any]) -> List[str]:
        state, mine = detail["state"], [a for a in detail["assignees"] if a["user"] == who.name]
        if who.role == "junior":
            if state == "prelabelled" or (
                state == "with_junior" and not any(a["duty"] == "annotate" for a in detail["assignees"])
            ):
                return ["claim"]
            if state == "with_junior" and any(a["duty"] == "annotate" for a in mine):
                return ["submit"]
        if who.role == "senior" and state == "in_review":
            if any(a["duty"] == "review" for a in mine):
                voted = {o for o, votes in detail["votes"].items() if who.name in votes}
                return ["vote"] if len(voted) < len(ORGANS) else []
            if who.name not in _voters(detail):
                return ["claim"]
        if who.role == "admin" and state == "escalated":
            return ["resolve"]
        return []

    def _focus(value: Optional[str]) -> Optional[List[float]]:
        if not value:
            return None
        try:
            point = [float(v) for v in value.split(",")]
        except ValueError:
            raise Unprocessable("at must be three numbers: x,y,z in mm") from None
        if len(point) != 3:
            raise Unprocessable("at must be three numbers: x,y,z in mm")
        return point

    # -- actions -------------------------------------------------------------------------------------------------
    @pages.post("/cases/<case_id>/claim")
    @logged_in
    def claim(who: Principal, case_id: str):
        workflow.claim(who, check_id(case_id, "case id"))
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/submit")
    @logged_in
    def submit(who: Principal, case_id: str):
        workflow.submit(who, check_id(case_id, "case id"))
        return redirect(url_for("pages.my_queue"), code=303)

    @pages.post("/cases/<case_id>/review")
    @logged_in
    def review(who: Principal, case_id: str):
        check_id(case_id, "case id")
        votes = []
        for organ in ORGANS:
            decision = request.form.get(f"vote_{organ.id}", "")
            comment = request.form.get(f"comment_{organ.id}", "").strip()
            point = request.form.get(f"point_{organ.id}", "").strip()
            if not decision:
                if comment or point:
                    raise Unprocessable(f"{organ.name}: choose a decision for the comment")
                continue
            vote: Dict[str, Any] = {"organ": organ.id, "decision": decision}
            if comment:
                vote["comment"] = comment
            if point:
                vote["point_world"] = _focus(point)
            votes.append(vote)
        default = request.form.get("default") or None
        service.after_review(workflow.review(who, case_id, votes, default))
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/resolve")
    @logged_in
    def resolve(who: Principal, case_id: str):
        summary = workflow.resolve(who, check_id(case_id, "case id"), request.form.get("action", ""))
        service.after_review(summary)
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    # -- pictures ------------------------------------------------------------------------------------------------
    @pages.get("/cases/<case_id>/preview/<view>.png")
    @logged_in
    def preview(who: Principal, case_id: str, view: str):
        detail = case_detail(workflow, check_id(case_id, "case id"), who)  # visibility check
        if view not in VIEWS:
            abort(404)
        image_path = service.locate_image(case_id) if service.locate_image else None
        if not image_path:
            raise InputError(f"the scan of case {case_id!r} is not on this server", status=404)
        scan = volumes.get(image_path)
        label_path = _label_path(detail.get("current_version"))
        label = volumes.get(label_path) if label_path else None
        overlay = request.args.get("overlay", "label")
        attention = None
        if overlay == "attention" and service.locate_attention:
            attention_path = service.locate_attention(case_id)
            attention = volumes.get(attention_path) if attention_path else None
        focus = _focus(request.args.get("at"))
        if focus is None and request.args.get("voxel"):  # a comment placed by voxel index only
            focus = list(scan.world_of_source_voxel(_focus(request.args.get("voxel"))))
        at = scan.voxel_of(focus) if focus else default_centre(label, scan)
        png = render(
            scan,
            view,
            at,
            service.modality_of(case_id) if service.modality_of else "CT",
            label=label if overlay in ("label", "attention") else None,
            attention=attention,
            mark=focus is not None,
        )
        return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=5"})

    def _label_path(version_id: Optional[int]) -> Optional[str]:
        if version_id is None:
            return None
        with workflow.store.read() as s:
            version = s.get(LabelVersion, version_id)
            return version.path if version else None

    # -- team overview -------------------------------------------------------------------------------------------
    @pages.get("/overview")
    @logged_in
    def overview(who: Principal):
        who.require("admin")
        return render_template("overview.html", who=who, figures=team_figures(workflow), plots=list(PLOTS))

    @pages.get("/overview/<name>.png")
    @logged_in
    def overview_plot(who: Principal, name: str):
        who.require("admin")
        if name not in PLOTS:
            abort(404)
        return Response(plot_png(name, team_figures(workflow)), mimetype="image/png")

    def _stamp(case_id: Optional[str] = None) -> int:
        """The newest audit event (of a case, or of the store): any transition changes it."""
        with workflow.store.read() as s:
            query = select(func.max(AuditEvent.id))
            if case_id:
                query = query.where(AuditEvent.case_id == case_id)
            return s.execute(query).scalar() or 0

    return pages
