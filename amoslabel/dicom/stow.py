"""STOW-RS message bodies (DICOM PS3.18 10.5): ``multipart/related; type="application/dicom"``, read and written.

A viewer stores instances by POSTing one such body to ``{root}/studies``; the server answers with a JSON dataset
(PS3.18 10.5.3) that lists what it stored and what it refused (``FailedSOPSequence`` with a ``FailureReason``).
"""

from __future__ import annotations

import io
import uuid
from email.message import Message
from typing import List, Optional, Sequence, Tuple

import pydicom

from amoslabel.errors import InputError

DICOM_TYPE = "application/dicom"
MAX_INSTANCES = 16  # a viewer stores one SEG at a time; a bulk upload goes to the import command


def _param(content_type: str, name: str) -> Optional[str]:
    message = Message()
    message["content-type"] = content_type
    value = message.get_param(name)
    return str(value) if value is not None else None


def read_stow(body: bytes, content_type: str) -> List[pydicom.Dataset]:
    """The DICOM instances of a STOW-RS request body.

    Raises:
        InputError: not ``multipart/related`` with a boundary, a part that is not ``application/dicom``, a part
            that is not readable DICOM, no instance, or more than :data:`MAX_INSTANCES`.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise InputError(f'a store needs Content-Type multipart/related; type="{DICOM_TYPE}", not {content_type!r}')
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise InputError("the multipart/related Content-Type names no boundary")
    instances = []
    for chunk in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise InputError("a part of the multipart body has no header block")
        part_type = next(
            (
                line.split(b":", 1)[1].strip().decode("latin-1")
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-type:")
            ),
            DICOM_TYPE,
        )
        if not part_type.lower().startswith(DICOM_TYPE):
            raise InputError(f"each part must be {DICOM_TYPE}, not {part_type!r} (JSON metadata stores are not taken)")
        payload = payload[:-2] if payload.endswith(b"\r\n") else payload
        try:
            instances.append(pydicom.dcmread(io.BytesIO(payload)))
        except Exception as error:  # pydicom raises many types for damaged data
            raise InputError(f"a part is not readable DICOM ({type(error).__name__})") from None
        if len(instances) > MAX_INSTANCES:
            raise InputError(f"at most {MAX_INSTANCES} instances per store")
    if not instances:
        raise InputError("the store holds no DICOM instance")
    return instances


def write_stow(instances: Sequence[pydicom.Dataset]) -> Tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request storing ``instances``."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for ds in instances:
        encoded = io.BytesIO()
        ds.save_as(encoded, write_like_original=False)
        out.write(f"--{boundary}\r\nContent-Type: {DICOM_TYPE}\r\n\r\n".encode())
        out.write(encoded.getvalue())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="{DICOM_TYPE}"; boundary={boundary}'
