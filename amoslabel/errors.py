"""Errors a server answers with a status and a message: the request or the file is bad (:class:`InputError`, 4xx),
or the server cannot do it now (:class:`ServerUnable`, 5xx: its database down, its disk full).

They are Starlette ``HTTPException`` subclasses, so wherever one escapes inside the MONAI Label server (an infer
task, a datastore call made directly by a MONAI Label endpoint) the client gets that status with the message as
``detail``, instead of a 500. Outside a server an :class:`InputError` behaves as an ordinary ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Dict

from starlette.exceptions import HTTPException


class AnsweredError(HTTPException):
    """An error a server answers with its HTTP ``status`` and a message for the user (``detail``).

    ``fields`` go into the answer beside ``detail``, for programs: the message is written for a person (a
    radiologist), the fields keep the internal words (e.g. ``state="in_review"``).
    """

    status: int = 500

    def __init__(self, message: str, status: int | None = None, headers: dict | None = None, **fields: Any):
        if status is not None:
            self.status = status
        super().__init__(status_code=self.status, detail=message, headers=headers)
        self.args = (message,)
        self.fields: Dict[str, Any] = fields

    def answer(self) -> Dict[str, Any]:
        """The JSON body: ``{"detail": message, **fields}``."""
        return {"detail": self.message, **self.fields}

    def __str__(self) -> str:
        return str(self.detail)

    @property
    def message(self) -> str:
        return str(self.detail)


class InputError(AnsweredError, ValueError):
    """Bad input from a user or a file. ``status`` is the HTTP status to answer (4xx)."""

    status: int = 400


class NotFound(InputError):
    """An unknown image, label, model or version."""

    status = 404


class Conflict(InputError):
    """The request is well-formed but the current state does not allow it (e.g. no trained model yet)."""

    status = 409


class TooLarge(InputError):
    """A file or an image larger than the configured limits."""

    status = 413


class TooManyRequests(InputError):
    """429: too many attempts or requests at once; ``Retry-After`` says when to try again."""

    status = 429

    def __init__(self, message: str, retry_after_s: float = 1):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


class Unprocessable(InputError):
    """A readable file whose content is not acceptable (wrong dimensionality, label ids, geometry, NaN)."""

    status = 422


class ServerUnable(AnsweredError):
    """The server cannot do what was asked now, through no fault of the request: a 5xx with a message.

    Not an :class:`InputError`: nothing is wrong with what was sent, and callers that skip bad input must not skip
    this.
    """


class Unavailable(ServerUnable):
    """Its database is down: 503, try again shortly."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StorageFull(ServerUnable):
    """The disk a file was being written to is full: 507 (Insufficient Storage); nothing was kept."""

    status = 507
