"""How a label version is named in a DICOM store: its SEG's SeriesDescription and its series and instance UIDs.

Every label version a reader needs in a DICOM viewer (a case's pre-label, each round's submitted version, reviewers'
edits, drafts stored from OHIF, the consensus final) goes to the DICOMweb server as one SEG. Its SeriesDescription
names what it is, the label version (the case history's ``v<id>``), the round and the author, as a pseudonym only
(``junior #4``: the user's role and number, never a name; a description is visible to anyone who can read the
series). Its UIDs are derived from the case, the version and what it is, so sending the same SEG again (after an
outage) stores nothing twice, and the review pages can link to a version's SEG without asking the server.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Optional, Tuple

PREFIX = "AMOS Label"
_NAMESPACE = uuid.UUID("6f1c1f5e-6a8e-4d0c-9a55-6d2b1c0a7e15")  # this project's; fixed forever
MAX_DESCRIPTION = 64  # SeriesDescription is an LO: at most 64 characters


class SegKind(str, Enum):
    """What a label version's SEG shows a reader."""

    PRELABEL = "pre-label"
    DRAFT = "draft"
    SUBMITTED = "submitted"
    REVIEWER_EDIT = "reviewer edit"
    FINAL = "final"


PRELABEL_PREFIX = f"{PREFIX} {SegKind.PRELABEL.value}"
FINAL_PREFIX = f"{PREFIX} {SegKind.FINAL.value}"


def seg_description(kind: SegKind, version: Optional[int], round_: Optional[int], author: Optional[str] = None) -> str:
    """``AMOS Label submitted v12 round 2 by junior #4`` (a model's tag, ``unet:v3``, as the author of a pre-label).

    Args:
        kind: what the version is to a reader.
        version: the label version's id in the case history (None: not a recorded version, e.g. a bare infer).
        round_: the review round it belongs to.
        author: a pseudonym (:func:`review.auth.pseudonym`) or a model tag; never a user's name.
    """
    parts = [PREFIX, SegKind(kind).value]
    if version is not None:
        parts.append(f"v{version}")
    if round_ is not None:
        parts.append(f"round {round_}")
    if author:
        parts.append(f"by {author}")
    return " ".join(parts)[:MAX_DESCRIPTION]


def _uid(*parts: object) -> str:
    # PS3.5 B.2: a UUID as the decimal integer under the root 2.25
    return f"2.25.{uuid.uuid5(_NAMESPACE, '/'.join(str(p) for p in parts)).int}"


def seg_uids(case_id: str, version: int, kind: SegKind) -> Tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG that shows ``version`` of ``case_id`` as ``kind``."""
    kind = SegKind(kind).value
    return _uid(case_id, version, kind, "series"), _uid(case_id, version, kind, "instance")
