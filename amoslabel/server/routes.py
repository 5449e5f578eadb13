"""What this app changes in the MONAI Label server it runs in: the review API mounted, and endpoints answered here.

``install(fastapi_app, review, datastore, config)`` is called once, in the server process, when the app is ready. It
mounts the review API and pages (Flask, through a2wsgi) at ``/review``, serves the auth contract
(:mod:`amoslabel.server.identity`), replaces MONAI Label's CORS policy and HTML pages
(:mod:`amoslabel.server.browser_policy`), owns the inference sessions (:mod:`amoslabel.server.sessions`), limits
upload sizes (:mod:`amoslabel.server.uploads`), puts the access gate in front of everything
(:mod:`amoslabel.server.access`), and puts the overrides below in front of MONAI Label's routes. Each keeps the
endpoint's path, parameters and answer:

* ``POST /activelearning/{strategy}`` runs on the review operations' own threads (MONAI Label declares it ``async``
  and blocks the event loop; the endpoints' shared pool may be full of inference), answers ``review_queue`` without
  the whole app ``info()``, and refuses an unknown strategy with 404.
* ``PUT``/``DELETE /model/{model}`` are refused (403): served weights are versions with a record
  (``models/versions.py``), and MONAI Label's upload copies any file over a path our tasks do not have (500).
  So is ``POST /reload``: it would build a second app in the process (a second review service and scorer).
* The datastore writes and ``/infer`` check their JSON form fields (``params``, ``info``) first: MONAI Label parses them
  unchecked, so a malformed field (or a JSON list) was an HTTP 500 instead of a 400. Their ``client_id`` is the
  token's user (:func:`~amoslabel.server.identity.acting_for`).
* ``GET /datastore/image`` and ``/datastore/label`` record who downloaded which scan or label in the case's audit
  log, and read the file in the thread pool (MONAI Label's are ``async`` and read it on the event loop).
* ``/infer?output=dicom_seg`` on a DICOMweb datastore writes the SEG with coded organs (:mod:`amoslabel.dicom.seg`);
  MONAI Label's converter codes every segment as spleen.
* ``GET /ohif/...`` serves MONAI Label's own OHIF build with its nested files (MONAI Label's route turns ``/`` into
  ``:`` and answers index.html for them), and tells its MONAI Label panel this server's URL (the cookie
  ``MONAILABEL_SERVER_URL``, which the panel reads; its default, port 8000, is another origin on any other port, where
  the browser would send no session).

FastAPI keeps each included router as one nested route, so MONAI Label's routes cannot be taken out of the app's
list; an override is placed first in that list, where it is matched before them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from a2wsgi import WSGIMiddleware
from fastapi import BackgroundTasks, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from monailabel.config import settings
from monailabel.endpoints import datastore as ds
from monailabel.endpoints.activelearning import sample
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_mime_type

from amoslabel.config import AppConfig
from amoslabel.data.datastore import AmosDatastore
from amoslabel.data.dicomweb import AmosDicomWebDatastore, seg_for_infer
from amoslabel.data.tags import ORIGINAL_TAG
from amoslabel.errors import AnsweredError, InputError, NotFound
from amoslabel.ids import check_id, check_tag
from amoslabel.server.access import AccessGate
from amoslabel.server.browser_policy import apply_browser_policy
from amoslabel.server.health import install_health_routes
from amoslabel.server.identity import acting_for, install_auth_routes, protect, username
from amoslabel.server.own_threads import OwnThreads
from amoslabel.server.review_hot_routes import HotReviewRoutes
from amoslabel.server.sessions import check_owner, install_session_routes
from amoslabel.server.uploads import BodyLimit, remove_later, temporary_files_go
from amoslabel.server.viewer_dicomweb import ViewerDicomWeb
from models.click_request import CURRENT_LABEL_KEY, WHOLE_LABEL_KEY
from review.api import create_review_api
from review.web.pages import SessionCookies
from review.service import ReviewQueueStrategy, ReviewService

log = logging.getLogger(__name__)
API = settings.MONAI_LABEL_API_STR
REVIEW_PATH = "/review"
REVIEW_WORKERS = 16  # threads of the review API's WSGI bridge, and of its hot routes
MAX_FORM_JSON = 1 << 20
MONAI_OHIF = (Path(ds.__file__).parent / "static" / "ohif").resolve()  # MONAI Label's prebuilt OHIF with its panel
PANEL_SERVER_COOKIE = "MONAILABEL_SERVER_URL"


def in_server_process() -> bool:
    """True in the process that serves HTTP (MONAI Label's FastAPI app is loaded); False in a training subprocess,
    which builds the app too."""
    return "monailabel.app" in sys.modules


def install(fastapi_app, review: ReviewService, datastore: AmosDatastore, config: AppConfig) -> None:
    """Everything of this module, once, in the server process: the review API, the auth contract and gate (unless
    ``config.auth.enabled`` is off), the CORS policy, the sessions, and the overrides."""
    auth = config.auth.enabled
    threads = OwnThreads(REVIEW_WORKERS)  # Next Sample, a submit and a vote: never behind inference
    mount_review_api(fastapi_app, review, threads)
    install_auth_routes(fastapi_app, review.accounts, auth, override_route)
    install_health_routes(fastapi_app, review, override_route)
    install_route_overrides(fastapi_app, ReviewQueueStrategy.NAME, review_sample, review, threads)
    install_session_routes(fastapi_app, override_route, API)
    if isinstance(datastore, AmosDicomWebDatastore):
        use_coded_seg_for_infer_output()
        ViewerDicomWeb(review, datastore).install(fastapi_app, override_route, API)
    else:
        override_route(
            fastapi_app, API + "/proxy/dicom/{path:path}", no_dicomweb, ["GET", "POST"], include_in_schema=False
        )
    fastapi_app.add_exception_handler(AnsweredError, answer_error)  # in the stack apply_browser_policy builds
    apply_browser_policy(fastapi_app, config.auth.cors_origins, override_route)  # rebuilds the stack: first
    fastapi_app.middleware_stack = BodyLimit(fastapi_app.middleware_stack, config.storage.max_upload_mb * 2**20)
    if auth:
        gate = AccessGate(
            review.accounts,
            API,
            on_dicomweb_read=review.record_dicomweb_read,
            session_user=SessionCookies(review).principal,  # the OHIF viewers of a browser logged in at /review
        )
        protect(fastapi_app, gate, config.serving.infer_per_user)
        log.info("auth on: every request needs a user's token (POST /auth/token)")


def answer_error(request: Request, error: AnsweredError) -> JSONResponse:
    """Our errors as the review API answers them: ``{"detail": message, **fields}`` (e.g. the case's ``state``)."""
    return JSONResponse(error.answer(), status_code=error.status_code, headers=error.headers)


def no_dicomweb(path: str):
    """MONAI Label's DICOMweb proxy on a folder of files: there is no DICOMweb server to forward to (its own proxy
    answered 500)."""
    raise NotFound("this server's studies are a folder, not a DICOMweb server: there is nothing to proxy")


def mount_review_api(fastapi_app, review: ReviewService, threads: Optional[OwnThreads] = None) -> None:
    """The review API and pages at ``/review`` (a mount made earlier in this process is replaced), with its hot
    writes answered in front of the mount (:mod:`amoslabel.server.review_hot_routes`)."""
    routes = fastapi_app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", "") != REVIEW_PATH]
    flask_app = create_review_api(review)
    fastapi_app.mount(REVIEW_PATH, WSGIMiddleware(flask_app, workers=REVIEW_WORKERS))
    threads = threads or OwnThreads(REVIEW_WORKERS)
    HotReviewRoutes(review, flask_app, REVIEW_PATH, threads).install(fastapi_app, override_route)
    log.info("review API mounted at /review/api (OpenAPI: /review/api/openapi.json)")


def review_sample(params: dict, review: ReviewService) -> dict:
    """Next Sample from the review queue, answered as MONAI Label's ``sample`` answers (id, path, image info).

    It skips what ``sample`` adds for its own strategies: the whole app ``info()`` (for strategy settings this one
    has none of), a note of the strategy in the image's info (the claim is in the case's audit log), and the scan's
    real path on the server (MONAI Label resolves it on disk; the answer leaves it out). Each cost more than finding
    and claiming the case.
    """
    instance = app_instance()
    strategy = getattr(instance, "_strategies", {}).get(ReviewQueueStrategy.NAME)
    result = strategy({**params, "strategy": ReviewQueueStrategy.NAME}, instance.datastore()) if strategy else None
    if not result:  # no "id": the client says there is nothing; the answer says why and what to do
        return review.nothing_waits(params.get("client_id"))
    return without_server_paths({**instance.datastore().image_info_without_path(result["id"]), **result})


def without_server_paths(sample: dict) -> dict:
    """A Next Sample answer without the scan's path on the server (MONAI Label adds it; a viewer downloads the scan
    by its id, and where the server's files are is nobody's business)."""
    return {k: v for k, v in sample.items() if k != "path"}


def use_coded_seg_for_infer_output() -> None:
    """``/infer?output=dicom_seg`` through our coded writer.

    MONAI Label's endpoint converts the result with ``nifti_to_dicom_seg``, which codes every segment as spleen,
    and only for its own DICOMweb datastore class; it looks both names up in its module at each call, so replacing
    them there is enough.
    """
    import monailabel.endpoints.infer as infer_endpoint

    infer_endpoint.nifti_to_dicom_seg = seg_for_infer
    infer_endpoint.DICOMWebDatastore = (infer_endpoint.DICOMWebDatastore, AmosDicomWebDatastore)  # isinstance takes it


def install_route_overrides(
    fastapi_app,
    review_strategy: str,
    review_sample: Callable[[dict, ReviewService], dict],
    review: ReviewService,
    threads: OwnThreads,
) -> None:
    """Put every override of this module in front of MONAI Label's routes; Next Sample runs on the review
    operations' ``threads``."""
    accounts = review.accounts

    def own(text: Any, field: str, request: Request) -> str:
        """A JSON form field, checked, with its client id bound to the request's user."""
        return json.dumps(acting_for(json.loads(json_object(text, field)), request, accounts))

    def next_sample(request: Request, strategy: str, params: Optional[dict]) -> dict:
        params = acting_for(params or {}, request, accounts)
        if strategy == review_strategy:
            return review_sample(params, review)
        strategies = getattr(app_instance(), "_strategies", {})
        if strategy not in strategies:
            raise NotFound(f"no strategy {strategy[:64]!r}; strategies: {sorted(strategies)}")
        return without_server_paths(sample(strategy, params, username(request)))

    async def api_sample(request: Request, strategy: str, params: Optional[dict] = None):
        return await threads.run(lambda: next_sample(request, strategy, params))

    def model_file_refused(model: str):
        return JSONResponse(
            {
                "detail": f"model {model[:64]!r}: weights are not replaced or deleted through the API; new versions "
                "come from training (POST /train/{model}), older ones are served with `python -m amoslabel "
                "models rollback`"
            },
            status_code=403,
        )

    def add_image(
        request: Request,
        background_tasks: BackgroundTasks,
        image: Optional[str] = None,
        params: str = Form("{}"),
        file: UploadFile = File(...),
    ):
        if image:
            check_id(image)  # before MONAI Label's endpoint logs it
        with temporary_files_go(background_tasks):
            return ds.add_image(background_tasks, image, own(params, "params", request), file, username(request))

    def save_label(
        request: Request,
        background_tasks: BackgroundTasks,
        image: str,
        params: str = Form("{}"),
        tag: str = "final",
        label: UploadFile = File(...),
    ):
        check_id(image)  # before MONAI Label's endpoint logs them
        check_tag(tag)
        fields = own(params, "params", request)
        with temporary_files_go(background_tasks):
            saved = ds.save_label(background_tasks, image, fields, tag, label, username(request))
        if tag == ORIGINAL_TAG:
            return saved
        # what the save did: the version, submitted or not, the case's state and round, who has it now
        return {**saved, **review.save_answer(json.loads(fields).get("client_id"), image)}

    def download_image(request: Request, image: str):
        path = _existing(app_instance().datastore().get_image_uri(check_id(image)), f"image {image!r}")
        review.record_download(username(request), image, "image")
        return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))

    def download_label(request: Request, label: str, tag: str):
        path = _existing(app_instance().datastore().get_label_uri(check_id(label), check_tag(tag)), f"label {tag!r}")
        review.record_download(username(request), label, f"label {tag}")
        return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))

    def put_image_info(request: Request, image: str, info: str = Form("{}")):
        return ds.update_image_info(check_id(image), json_object(info, "info"), username(request))

    def put_label_info(request: Request, label: str, tag: str, info: str = Form("{}")):
        return ds.update_label_info(check_id(label), check_tag(tag), json_object(info, "info"), username(request))

    def infer(
        request: Request,
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[ResultType] = None,
    ):
        if not image and file is None and not session_id:
            raise InputError("name an image (?image=ID), upload one (form field 'file') or give a session_id")
        check_id(model, "model name")
        if image:
            check_id(image)  # before MONAI Label's endpoint logs it
        check_owner(session_id, request)
        fields = json.loads(own(params, "params", request))
        for key in (CURRENT_LABEL_KEY, WHOLE_LABEL_KEY):
            fields.pop(key, None)  # a path is named by the server only
        with temporary_files_go(background_tasks):
            if label is not None:
                # The uploaded label is the label to correct. MONAI Label would put its path under "label", where
                # Slicer's click request names the organ; here it gets a key of its own.
                fields[CURRENT_LABEL_KEY] = keep_upload(label, background_tasks)
            return run_inference(background_tasks, model, image, session_id, json.dumps(fields), file, None, output)

    def whole_slide_refused(model: str):
        # MONAI Label's whole-slide routes copy a client's params into the request as they are: they would bypass
        # the checks of /infer/{model} (the caller's identity, the paths only the server names)
        return JSONResponse(
            {"detail": "whole-slide inference is for pathology; this server's models are 3D: POST /infer/{model}"},
            status_code=404,
        )

    def reload_refused():
        return JSONResponse(
            {
                "detail": "the app is built once, at start-up (its review store, scorer and background work with "
                "it): restart the server to reload it"
            },
            status_code=403,
        )

    def monai_ohif(request: Request, path: str = ""):
        index = MONAI_OHIF / "index.html"
        file = (MONAI_OHIF / path).resolve() if path else index
        if not file.is_relative_to(MONAI_OHIF) or not file.is_file():
            file = index  # a route of the single-page app
        response = FileResponse(file, media_type=get_mime_type(str(file)))
        if file == index and PANEL_SERVER_COOKIE not in request.cookies:
            # written by hand: Starlette would quote a value with "/" in it, and the panel reads the quotes as part
            # of the URL (RFC 6265 allows "/" and ":" unquoted)
            response.headers.append("set-cookie", f"{PANEL_SERVER_COOKIE}={request.base_url}; Path=/; SameSite=Lax")
        return response

    overrides: List[tuple] = [
        ("/ohif/{path:path}", monai_ohif, ["GET"], None),
        ("/reload", reload_refused, ["POST"], None),
        ("/activelearning/{strategy}", api_sample, ["POST"], "ActiveLearning"),
        ("/model/{model}", model_file_refused, ["DELETE", "PUT"], "Model"),
        ("/datastore/image", add_image, ["PUT"], "Datastore"),
        ("/datastore/", add_image, ["PUT"], None),  # MONAI Label's deprecated alias
        ("/datastore/label", save_label, ["PUT"], "Datastore"),
        ("/datastore/image/info", put_image_info, ["PUT"], "Datastore"),
        ("/datastore/label/info", put_label_info, ["PUT"], "Datastore"),
        ("/datastore/updatelabelinfo", put_label_info, ["PUT"], None),  # deprecated alias
        ("/infer/{model}", infer, ["POST"], "Infer"),
        ("/infer/wsi/{model}", whole_slide_refused, ["POST"], None),
        ("/infer/wsi_v2/{model}", whole_slide_refused, ["POST"], None),
        ("/datastore/image", download_image, ["GET"], "Datastore"),
        ("/datastore/label", download_label, ["GET"], "Datastore"),
    ]
    for path, endpoint, methods, tag in overrides:
        extra: Dict[str, Any] = {"tags": [tag]} if tag else {"include_in_schema": False}
        override_route(fastapi_app, API + path, endpoint, methods, **extra)


def keep_upload(upload: UploadFile, background_tasks: BackgroundTasks) -> str:
    """An uploaded file in a temporary file of its own (deleted after the answer); its path."""
    suffix = "".join(Path(upload.filename or "label.nii.gz").suffixes[-2:])[:16] or ".nii.gz"
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="upload-")
    remove_later(background_tasks, path)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    return path


def _existing(path: Optional[str], what: str) -> str:
    if not path or not os.path.isfile(path):
        raise NotFound(f"{what} is not in the datastore")
    return path


def json_object(text: Any, field: str) -> str:
    """The form field ``text`` if it is a JSON object (re-serialised), else a 400 naming the field."""
    if text in (None, ""):
        return "{}"
    if len(text) > MAX_FORM_JSON:
        raise InputError(f"the form field {field!r} may be at most {MAX_FORM_JSON} bytes", status=413)
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise InputError(f"the form field {field!r} must be a JSON object") from None
    if not isinstance(value, dict):
        raise InputError(f"the form field {field!r} must be a JSON object, not {type(value).__name__}")
    return json.dumps(value)


def override_route(fastapi_app, path: str, endpoint, methods: List[str], **kwargs) -> None:
    """Serve ``methods`` on ``path`` with ``endpoint``, matched before MONAI Label's route; an override made earlier
    in this process is replaced."""
    routes = fastapi_app.router.routes
    routes[:] = [
        r for r in routes if not (getattr(r, "path", None) == path and set(methods) <= getattr(r, "methods", set()))
    ]
    fastapi_app.add_api_route(path, endpoint, methods=methods, **kwargs)
    routes.insert(0, routes.pop())
