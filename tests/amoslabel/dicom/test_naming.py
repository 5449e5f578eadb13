"""How a label version is named in a DICOM store: descriptions that fit a DICOM LO and name no person; UIDs that are
valid, stable, and different for each case, version and kind."""

from __future__ import annotations

import re

import pytest

from amoslabel.dicom.naming import FINAL_PREFIX, MAX_DESCRIPTION, PRELABEL_PREFIX, SegKind, seg_description, seg_uids
from review.auth import Principal, pseudonym

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_descriptions_name_version_round_and_a_pseudonym():
    author = Principal(4, "Dr Jane Quincy", "junior").pseudonym
    assert author == pseudonym(4, "junior") == "junior #4" and "Jane" not in author
    assert seg_description(SegKind.SUBMITTED, 12, 2, author) == "AMOS Label submitted v12 round 2 by junior #4"
    assert seg_description("reviewer edit", 13, 2, "senior #7") == "AMOS Label reviewer edit v13 round 2 by senior #7"
    assert seg_description(SegKind.FINAL, 14, 2).startswith(FINAL_PREFIX)
    assert seg_description(SegKind.PRELABEL, 1, 1, "unet:v3").startswith(PRELABEL_PREFIX)
    assert seg_description(SegKind.PRELABEL, None, None) == PRELABEL_PREFIX
    assert len(seg_description(SegKind.REVIEWER_EDIT, 10**9, 10**6, "x" * 80)) == MAX_DESCRIPTION
    with pytest.raises(ValueError):
        seg_description("approved", 1, 1)


def test_uids_are_valid_stable_and_distinct():
    series, instance = seg_uids("1.2.840.1", 12, SegKind.SUBMITTED)
    for uid in (series, instance):
        assert UID.match(uid) and len(uid) <= 64 and uid.startswith("2.25.")
    assert seg_uids("1.2.840.1", 12, SegKind.SUBMITTED) == (series, instance)  # a resend stores nothing twice
    others = {seg_uids("1.2.840.1", 12, k)[0] for k in SegKind} | {seg_uids("1.2.840.2", 12, SegKind.SUBMITTED)[0]}
    assert len(others | {seg_uids("1.2.840.1", 13, SegKind.SUBMITTED)[0]}) == len(SegKind) + 2
