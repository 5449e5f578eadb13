"""Errors that mean "the request or the file is bad", each with the HTTP status a server should answer.

They are Starlette ``HTTPException`` subclasses, so wherever one escapes inside the MONAI Label server (an infer
task, a datastore call made directly by a MONAI Label endpoint) the client gets that 4xx status with the message as
``detail``, instead of a 500. Outside a server they behave as ordinary ``ValueError`` exceptions.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException


class InputError(HTTPException, ValueError):
    """Bad input from a user or a file. ``status`` is the HTTP status to answer (4xx)."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None):
        if status is not None:
            self.status = status
        super().__init__(status_code=self.status, detail=message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.detail)

    @property
    def message(self) -> str:
        return str(self.detail)


class NotFound(InputError):
    """An unknown image, label, model or version."""

    status = 404


class Conflict(InputError):
    """The request is well-formed but the current state does not allow it (e.g. no trained model yet)."""

    status = 409


class TooLarge(InputError):
    """A file or an image larger than the configured limits."""

    status = 413


class Unprocessable(InputError):
    """A readable file whose content is not acceptable (wrong dimensionality, label ids, geometry, NaN)."""

    status = 422
