"""A case's page: one row per organ with each reader's vote and comments, agreement, history, and the actions the
user's role allows (claim, submit, undo and redo of one's label changes, vote per organ, an admin's resolve)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from flask import Blueprint, redirect, render_template, request, url_for

from amoslabel.errors import NotFound, Unprocessable
from amoslabel.ids import check_id
from amoslabel.organs import ORGANS
from review.auth import Principal
from review.queries import case_detail, history
from review.web.previews import VIEWS
from review.web.slice_viewer import viewer_data

if TYPE_CHECKING:
    from review.web.pages import PageContext


def register(pages: Blueprint, context: "PageContext") -> None:
    """The case page, its live fragment and stamp, and the action forms."""
    workflow, service = context.workflow, context.service

    @pages.get("/cases/<case_id>")
    @context.logged_in
    def case_page(who: Principal, case_id: str):
        # the stamp before the panel: the page's poll then sees any change after it (one read too early only swaps
        # the panel once more; one too late would leave the page at the state it was rendered with)
        stamp = context.stamp(check_id(case_id, "case id"))
        panel = case_panel_data(context, who, case_id)
        workflow.record_opened(who.name, case_id, "review page")
        return render_template(
            "case.html",
            who=who,
            **panel,
            **viewer_data(context, case_id, panel["case"]),
            stamp=stamp,
            focus=parse_point(request.args.get("at")),
            views=VIEWS,
            has_attention=service.attention_file(case_id) is not None,
            server_url=request.host_url.rstrip("/"),
            ohif_url=service.ohif_link(case_id),
        )

    @pages.get("/cases/<case_id>/ohif")
    @context.logged_in
    def open_in_ohif(who: Principal, case_id: str):
        """To OHIF, on the case's study with the version to look at (see ReviewService.ohif_link)."""
        case_detail(workflow, check_id(case_id, "case id"), who)  # only a case this user may see
        link = service.ohif_link(case_id)
        if link is None:
            raise NotFound("this server has no OHIF viewer: it is offered with DICOMweb studies (make run-dicomweb)")
        return redirect(link, code=303)

    @pages.get("/cases/<case_id>/panel")
    @context.logged_in
    def case_panel(who: Principal, case_id: str):
        return render_template("_case_panel.html", who=who, **case_panel_data(context, who, case_id))

    @pages.get("/cases/<case_id>/live")
    @context.logged_in
    def case_live(who: Principal, case_id: str):
        stamp = context.stamp(check_id(case_id, "case id"))  # before the state: a change between is seen next poll
        detail = case_detail(workflow, case_id, who)
        return {"state": detail["state"], "round": detail["round"], "stamp": stamp}

    @pages.post("/cases/<case_id>/claim")
    @context.logged_in
    def claim(who: Principal, case_id: str):
        workflow.claim(who, check_id(case_id, "case id"))
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/submit")
    @context.logged_in
    def submit(who: Principal, case_id: str):
        workflow.submit(who, check_id(case_id, "case id"))
        return redirect(url_for("pages.my_queue"), code=303)

    @pages.post("/cases/<case_id>/undo")
    @context.logged_in
    def undo(who: Principal, case_id: str):
        service.step(who, check_id(case_id, "case id"), "undo")
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/redo")
    @context.logged_in
    def redo(who: Principal, case_id: str):
        service.step(who, check_id(case_id, "case id"), "redo")
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/review")
    @context.logged_in
    def review(who: Principal, case_id: str):
        check_id(case_id, "case id")
        default = request.form.get("default") or None
        votes = service.anchor_points(case_id, votes_from_form(request.form))
        service.after_review(workflow.review(who, case_id, votes, default))
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)

    @pages.post("/cases/<case_id>/resolve")
    @context.logged_in
    def resolve(who: Principal, case_id: str):
        summary = workflow.resolve(who, check_id(case_id, "case id"), request.form.get("action", ""))
        service.after_review(summary)
        return redirect(url_for("pages.case_page", case_id=case_id), code=303)


def case_panel_data(context: "PageContext", who: Principal, case_id: str) -> Dict[str, Any]:
    """What the case panel shows: the detail, one row per organ, readers, history, actions, agreement."""
    workflow = context.workflow
    detail = case_detail(workflow, check_id(case_id, "case id"), who)
    readers = sorted({a["user"] for a in detail["assignees"] if a["duty"] == "review"} | _voters(detail))
    predicted = {q["organ"]: q for q in detail["quality"]}
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
                "carried": detail["carried"].get(organ.name, []),
                "quality": predicted.get(organ.id),  # the quality estimator's chance that the pre-label fails it
                "one_reader": detail["one_approval"].get(organ.name),  # the pass policy's one reader, if any
                "audited": organ.name in detail["audited"],
                "consensus": state,
                "comments": [c for c in detail["comments"] if c["organ"] == organ.id],
            }
        )
    return {
        "case": detail,
        "organ_rows": organ_rows,
        "readers": readers,
        "events": list(reversed(history(workflow, case_id, who))),
        "actions": actions_for(who, detail),
        "agreement": next((d["agreement"] for d in reversed(detail["decisions"]) if d.get("agreement")), None),
    }


STEPS = ("undo", "redo")  # of the user's own label changes in the round (review.undo), while they may save


def actions_for(who: Principal, detail: Dict[str, Any]) -> List[str]:
    """The forms the case page offers this user now."""
    state, mine = detail["state"], [a for a in detail["assignees"] if a["user"] == who.name]
    if who.role == "junior":
        if state == "prelabelled" or (
            state == "with_junior" and not any(a["duty"] == "annotate" for a in detail["assignees"])
        ):
            return ["claim"]
        if state == "with_junior" and any(a["duty"] == "annotate" for a in mine):
            return ["submit", *STEPS]
    if who.role == "senior" and state == "in_review":
        if any(a["duty"] == "review" for a in mine):
            voted = {o for o, votes in detail["votes"].items() if who.name in votes}
            return ["vote", *STEPS] if len(voted) < len(ORGANS) else []
        if who.name not in _voters(detail):
            return ["claim"]
    if who.role == "admin" and state == "escalated":
        return ["resolve"]
    return []


def votes_from_form(form) -> List[Dict[str, Any]]:
    """The review form's per-organ decision, comment and point (x,y,z in mm) as workflow votes."""
    votes = []
    for organ in ORGANS:
        decision = form.get(f"vote_{organ.id}", "")
        comment = form.get(f"comment_{organ.id}", "").strip()
        point = form.get(f"point_{organ.id}", "").strip()
        if not decision:
            if comment or point:
                raise Unprocessable(f"{organ.name}: choose a decision for the comment")
            continue
        vote: Dict[str, Any] = {"organ": organ.id, "decision": decision}
        if comment:
            vote["comment"] = comment
        if point:
            vote["point_world"] = parse_point(point)
        votes.append(vote)
    return votes


def parse_point(value: Optional[str]) -> Optional[List[float]]:
    """``"x,y,z"`` (mm) as three numbers; None for nothing; 422 for anything else."""
    if not value:
        return None
    try:
        point = [float(v) for v in value.split(",")]
    except ValueError:
        raise Unprocessable("at must be three numbers: x,y,z in mm") from None
    if len(point) != 3:
        raise Unprocessable("at must be three numbers: x,y,z in mm")
    return point


def _voters(detail: Dict[str, Any]) -> set:
    return {reader for votes in detail["votes"].values() for reader in votes}
