"""Which modality (CT or MRI) a scan is, and how we know.

Resolvers are tried in order; the first that answers wins, and its name is recorded with the pre-label so a reader
can see why a scan was normalised as it was:

1. ``request``: the infer or train request names it (``{"modality": "mri"}``), overriding everything else;
2. ``case``: the case's import record (DICOM Modality tag, ``dataset.json``'s modality, or the uploader's word);
3. ``header``: the NIfTI ``descrip`` field or a DICOM-style ``Modality`` entry in the file's metadata;
4. ``amos_id``: AMOS case ids above 500 are MRI, the rest CT;
5. ``filename``: ``_mr`` / ``mri`` / ``_ct`` in the file name;
6. ``intensity``: CT holds air near -1000 HU; MRI has no such negative values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from amoslabel.errors import InputError

ALIASES = {"ct": "ct", "mr": "mri", "mri": "mri", "mrt": "mri"}
_AMOS_ID = re.compile(r"amos_(\d{4})")


@dataclass
class ModalityEvidence:
    """What is known about a scan when its modality is resolved."""

    case_id: str = ""
    path: str = ""
    requested: Optional[str] = None
    case_record: Mapping[str, Any] = field(default_factory=dict)
    image: Optional[sitk.Image | sitk.ImageFileReader] = None  # a header alone answers the ``header`` resolver


Resolver = Callable[[ModalityEvidence], Optional[str]]
_RESOLVERS: List[Tuple[str, Resolver]] = []


def register_resolver(name: str) -> Callable[[Resolver], Resolver]:
    """Decorator: append a resolver; order of registration is order of precedence."""

    def wrap(fn: Resolver) -> Resolver:
        _RESOLVERS.append((name, fn))
        return fn

    return wrap


def normalise_name(value: Any) -> Optional[str]:
    """'CT', 'MR', 'mri' ... -> 'ct' | 'mri'; None for anything else."""
    return ALIASES.get(str(value).strip().lower()) if value is not None else None


def resolve_modality(evidence: ModalityEvidence) -> Tuple[str, str]:
    """Return ``(modality, source)``, modality being ``ct`` or ``mri``.

    Raises:
        InputError: the request names a modality that is neither CT nor MRI.
    """
    if str(evidence.requested).strip().lower() in ("", "auto", "none"):
        evidence.requested = None
    if evidence.requested is not None and normalise_name(evidence.requested) is None:
        raise InputError(f"modality {evidence.requested!r} is not supported; use 'ct' or 'mri'")
    for name, resolver in _RESOLVERS:
        found = resolver(evidence)
        if found:
            return found, name
    return "ct", "default"


@register_resolver("request")
def _from_request(ev: ModalityEvidence) -> Optional[str]:
    return normalise_name(ev.requested)


@register_resolver("case")
def _from_case_record(ev: ModalityEvidence) -> Optional[str]:
    return normalise_name(ev.case_record.get("modality"))


@register_resolver("header")
def _from_header(ev: ModalityEvidence) -> Optional[str]:
    if ev.image is None:
        return None
    keys = set(ev.image.GetMetaDataKeys())
    for key in ("0008|0060", "Modality", "modality"):
        if key in keys:
            found = normalise_name(ev.image.GetMetaData(key))
            if found:
                return found
    if "descrip" in keys:
        match = re.search(r"modality\s*[=:]\s*(\w+)", ev.image.GetMetaData("descrip"), re.IGNORECASE)
        if match:
            return normalise_name(match.group(1))
    return None


@register_resolver("amos_id")
def _from_amos_id(ev: ModalityEvidence) -> Optional[str]:
    match = _AMOS_ID.search(ev.case_id or "") or _AMOS_ID.search(ev.path or "")
    if not match:
        return None
    return "mri" if int(match.group(1)) > 500 else "ct"


@register_resolver("filename")
def _from_filename(ev: ModalityEvidence) -> Optional[str]:
    name = (ev.case_id or ev.path.rsplit("/", 1)[-1]).lower()
    if re.search(r"(^|[_\-.])(mr|mri|t1|t2)([_\-.]|$)", name):
        return "mri"
    if re.search(r"(^|[_\-.])ct([_\-.]|$)", name):
        return "ct"
    return None


@register_resolver("intensity")
def _from_intensity(ev: ModalityEvidence) -> Optional[str]:
    if not isinstance(ev.image, sitk.Image):  # none, or a header read without its pixels (sitk.ImageFileReader)
        return None
    array = sitk.GetArrayViewFromImage(ev.image)
    # Air in CT is about -1000 HU and fills a good part of any body scan's field of view.
    return "ct" if float(np.percentile(array[::4, ::4, ::4], 5)) < -500 else "mri"


def resolver_names() -> Dict[str, int]:
    """Resolver names with their precedence (0 first)."""
    return {name: i for i, (name, _) in enumerate(_RESOLVERS)}
