"""Uploads to MONAI Label's routes: a size limit enforced while the body streams in, and temporary files that go on
every path, a refusal's as a success's.

MONAI Label reads a request body whole (to a temporary file) before its endpoint runs, with no limit: a 2 GiB body
was kept on disk for an hour. :class:`BodyLimit` counts the bytes as they arrive and answers 413 the moment a body
passes ``storage.max_upload_mb`` (or at once, when ``Content-Length`` says so); what was spooled is dropped with the
request. The review API has its own limit (Flask's ``MAX_CONTENT_LENGTH``) and is left to it.

MONAI Label's endpoints copy each upload to a temporary file and delete it in a background task, which FastAPI runs
only after a successful answer: every refused upload stayed in the temporary folder. The app's overrides run their
endpoint under :func:`temporary_files_go`, which deletes them when the endpoint raises.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fastapi import BackgroundTasks

log = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
OWN_LIMIT_PREFIXES = ("/review",)  # Flask caps these itself
REMOVALS = ("remove_file", "unlink")  # what MONAI Label's endpoints and ours schedule for their temporary files


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` is answered 413 as soon as it is seen to be."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _refusal(self) -> bytes:
        mb = self.max_bytes / 2**20
        return json.dumps({"detail": f"the upload is larger than this server's limit of {mb:,.0f} MB"}).encode()

    async def _answer_413(self, send) -> None:
        body = self._refusal()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or scope.get("path", "").startswith(OWN_LIMIT_PREFIXES)
        ):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._answer_413(send)
        state = {"received": 0, "refused": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["refused"] = True
                    if not state["started"]:
                        await self._answer_413(send)
                    log.warning("upload to %s refused past %d bytes", scope.get("path", "")[:200], self.max_bytes)
                    return {"type": "http.disconnect"}  # the endpoint stops reading; what it spooled is dropped
            return message

        async def guarded_send(message):
            if state["refused"]:
                return  # the endpoint's own answer to the cut-off body: the client has its 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise


@contextmanager
def temporary_files_go(background_tasks: BackgroundTasks) -> Iterator[None]:
    """Run an endpoint that schedules the removal of its temporary files; if it raises, remove them now (FastAPI
    runs background tasks after a successful answer only)."""
    try:
        yield
    except BaseException:
        for task in list(background_tasks.tasks):
            if getattr(task.func, "__name__", "") in REMOVALS and not task.is_async:
                try:
                    task.func(*task.args, **task.kwargs)
                except OSError:
                    pass
        background_tasks.tasks.clear()
        raise


def remove_later(background_tasks: BackgroundTasks, path: str) -> None:
    """Delete ``path`` after the answer (or at once on an error, under :func:`temporary_files_go`)."""
    background_tasks.add_task(Path(path).unlink, missing_ok=True)
