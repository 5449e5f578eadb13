"""Pictures: a case's slice previews (scan, current label, attention map, a comment's point) and the team overview
with its plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, abort, render_template, request

from amoslabel.errors import InputError
from amoslabel.ids import check_id
from review.auth import Principal
from review.queries import case_detail, version_file
from review.statistics import team_figures
from review.web.case_pages import parse_point
from review.web.overview import PLOTS, plot_png
from review.web.previews import VIEWS, default_centre, render

if TYPE_CHECKING:
    from review.web.pages import PageContext


def register(pages: Blueprint, context: "PageContext") -> None:
    """The preview PNGs of a case, and the admins' team overview."""
    workflow, service, volumes = context.workflow, context.service, context.volumes

    @pages.get("/cases/<case_id>/preview/<view>.png")
    @context.logged_in
    def preview(who: Principal, case_id: str, view: str):
        detail = case_detail(workflow, check_id(case_id, "case id"), who)  # visibility check
        if view not in VIEWS:
            abort(404)
        image_path = service.image_file(case_id)
        if not image_path:
            raise InputError(f"the scan of case {case_id!r} is not on this server", status=404)
        scan = volumes.get(image_path)
        label_path = version_file(workflow, detail.get("current_version"))
        label = volumes.get(label_path) if label_path else None
        overlay = request.args.get("overlay", "label")
        attention = None
        if overlay == "attention":
            attention_path = service.attention_file(case_id)
            attention = volumes.get(attention_path) if attention_path else None
        focus = parse_point(request.args.get("at"))
        if focus is None and request.args.get("voxel"):  # a comment placed by voxel index only
            focus = list(scan.world_of_source_voxel(parse_point(request.args.get("voxel"))))
        at = scan.voxel_of(focus) if focus else default_centre(label, scan)
        png = render(
            scan,
            view,
            at,
            service.modality_of(case_id),
            label=label if overlay in ("label", "attention") else None,
            attention=attention,
            mark=focus is not None,
        )
        return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=5"})

    @pages.get("/overview")
    @context.logged_in
    def overview(who: Principal):
        who.require("admin")
        return render_template(
            "overview.html", who=who, figures=team_figures(workflow), plots=list(PLOTS), notices=service.notices
        )

    @pages.get("/overview/<name>.png")
    @context.logged_in
    def overview_plot(who: Principal, name: str):
        who.require("admin")
        if name not in PLOTS:
            abort(404)
        return Response(plot_png(name, team_figures(workflow)), mimetype="image/png")
