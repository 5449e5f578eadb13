"""MONAI Label's inference sessions, owned by the user who made them, and never unpacked from an archive.

3D Slicer's MONAI Label module makes a session when it infers on a volume that is not in the datastore: it uploads the
volume once (``PUT /session/``, one file) and names the session in each ``/infer`` (``session_id``). MONAI Label's
own endpoint gives every user every session (any user could read or delete another's scan by its id), and with
``uncompress=true`` unpacks an uploaded tar with ``shutil.unpack_archive`` and no extraction filter: an entry named
``../../x`` was written outside the sessions folder. No client sends ``uncompress`` (Slicer's client cannot: it puts
its parameters in the form, and the endpoint reads the query), so it is refused here rather than made safe.

What is answered here instead, with the same paths and answers:

* ``PUT /session/``: the uploaded files in a session of the token's user (the owner is kept in the session's own
  ``meta.info``, in the sessions folder a team shares); ``uncompress`` is 400; the upload's temporary folder goes on
  every path.
* ``GET``/``DELETE /session/{id}``: the owner's session, else 404, as for an id that does not exist.
* ``/infer?session_id=``: the same check (:func:`check_owner`, called by the infer override).
* Answers carry no server paths (the session's folder and image are named by their base names).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from fastapi import File, Request, UploadFile
from fastapi.responses import FileResponse
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_mime_type

from amoslabel.errors import Conflict, InputError, NotFound
from amoslabel.server.identity import principal_of

SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OWNER = "owner"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _sessions():
    sessions = app_instance().sessions()
    if sessions is None:
        raise Conflict("inference sessions are off on this server")
    return sessions


def _user(request: Request) -> Optional[str]:
    who = principal_of(request)
    return who.name if who is not None else None  # None: auth off (loopback only): every session is the user's


def owned_session(session_id: str, request: Request, update_ts: bool = False):
    """The session ``session_id`` if the request's user made it; 404 otherwise (unknown, someone else's, or an id
    that is not one)."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise NotFound("no such session")
    info = _sessions().get_session(session_id, update_ts=update_ts)
    user = _user(request)
    if info is None or (user is not None and (info.meta or {}).get(OWNER) != user):
        raise NotFound(f"no session {session_id} of yours")
    return info


def check_owner(session_id: str, request: Request) -> None:
    """Refuse (404) an ``/infer`` on a session the request's user did not make."""
    if session_id:
        owned_session(session_id, request)


def public_view(info) -> Dict[str, Any]:
    """A session as the API answers it: no server paths."""
    view = info.to_json()
    view["path"] = os.path.basename(view.get("path") or "")
    view["image"] = os.path.basename(view.get("image") or "")
    return view


def _upload_name(upload: UploadFile, index: int) -> str:
    name = os.path.basename((upload.filename or "").replace("\\", "/"))
    return name if SAFE_NAME.fullmatch(name) else f"file-{index}"


def install_session_routes(fastapi_app, override_route, api: str = "") -> None:
    """``/session`` as described in the module docstring, in front of MONAI Label's routes."""

    def create_session(
        request: Request, uncompress: bool = False, expiry: int = 0, files: List[UploadFile] = File(...)
    ) -> Dict[str, Any]:
        if uncompress:
            raise InputError(
                "archives are not unpacked: upload the image file itself (3D Slicer and OHIF never send archives)"
            )
        if not files:
            raise InputError("no file uploaded (form field 'files')")
        received = tempfile.mkdtemp(prefix="session-")
        try:
            for index, upload in enumerate(files):
                with open(os.path.join(received, _upload_name(upload, index)), "wb") as out:
                    shutil.copyfileobj(upload.file, out)
            names = os.listdir(received)
            data = received if len(names) > 1 else os.path.join(received, names[0])
            sessions = _sessions()
            session_id, info = sessions.add_session(data, max(0, int(expiry)), False)
            info.meta = {**(info.meta or {}), OWNER: _user(request) or ""}
            sessions._write_meta_info(session_id, info)  # MONAI Label's one writer of meta.info
            return {"session_id": session_id, "session_info": public_view(info)}
        finally:
            shutil.rmtree(received, ignore_errors=True)

    def get_session(request: Request, session_id: str, update_ts: bool = False, image: bool = False):
        info = owned_session(session_id, request, update_ts=update_ts)
        if image:
            return FileResponse(info.image, media_type=get_mime_type(info.image), filename=os.path.basename(info.image))
        return public_view(info)

    def remove_session(request: Request, session_id: str) -> Dict[str, Any]:
        info = owned_session(session_id, request)
        _sessions().remove_session(session_id)
        return public_view(info)

    override_route(fastapi_app, f"{api}/session/", create_session, ["PUT"], tags=["Session"], summary="New session")
    override_route(fastapi_app, f"{api}/session/{{session_id}}", get_session, ["GET"], tags=["Session"])
    override_route(fastapi_app, f"{api}/session/{{session_id}}", remove_session, ["DELETE"], tags=["Session"])
