"""Modality comes from the request, the case record, the header, the AMOS id, the file name or the pixels."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from amoslabel.errors import InputError
from amoslabel.modality import ModalityEvidence, resolve_modality


@pytest.fixture(scope="module")
def ct(shared):
    return sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"))


@pytest.fixture(scope="module")
def mr(shared):
    return sitk.ReadImage(str(shared / "mr" / "ts_abdomen_mr_small.nii.gz"))


def test_precedence(ct):
    assert resolve_modality(ModalityEvidence(case_id="amos_0600", requested="CT", image=ct)) == ("ct", "request")
    assert resolve_modality(ModalityEvidence(case_id="amos_0600", case_record={"modality": "ct"})) == ("ct", "case")
    assert resolve_modality(ModalityEvidence(case_id="amos_0600")) == ("mri", "amos_id")
    assert resolve_modality(ModalityEvidence(case_id="amos_0123")) == ("ct", "amos_id")
    assert resolve_modality(ModalityEvidence(case_id="liver_t2_mri")) == ("mri", "filename")


def test_header_tags(ct):
    tagged = sitk.Image(ct)
    tagged.SetMetaData("0008|0060", "MR")
    assert resolve_modality(ModalityEvidence(case_id="scan", image=tagged)) == ("mri", "header")
    described = sitk.Image(ct)
    described.SetMetaData("descrip", "abdomen modality=MR")
    assert resolve_modality(ModalityEvidence(case_id="scan", image=described)) == ("mri", "header")


def test_intensities_tell_ct_from_mri(ct, mr):
    assert resolve_modality(ModalityEvidence(case_id="case1", image=ct)) == ("ct", "intensity")
    assert resolve_modality(ModalityEvidence(case_id="case2", image=mr)) == ("mri", "intensity")


def test_auto_means_unset_and_unknown_is_refused(mr):
    assert resolve_modality(ModalityEvidence(case_id="x", requested="auto", image=mr))[0] == "mri"
    with pytest.raises(InputError, match="not supported"):
        resolve_modality(ModalityEvidence(case_id="x", requested="PET"))
