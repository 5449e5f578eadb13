"""De-identification of real DICOM series: PHI gone, pixels and geometry intact, UIDs mapped consistently."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Dict, List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from amoslabel.dicom.deidentify import UidMap, deidentify_dataset, deidentify_series, find_phi
from amoslabel.dicom.series import read_series
from amoslabel.errors import Conflict, InputError, Unprocessable

PSEUDONYM = "AMOS_CASE_0001"
PLANTED = {
    "PatientName": "Doe^Plantedname^Jane",
    "PatientID": "PLANTEDID4711",
    "PatientBirthDate": "19450817",
    "InstitutionName": "Planted General Hospital",
    "InstitutionAddress": "1 Planted Street, Springfield",
    "AccessionNumber": "PLANTACC99",
    "ReferringPhysicianName": "Who^Plantedphysician",
    "OtherPatientIDs": "PLANTEDOTHER42",
    "StudyDate": "19870923",
    "StudyDescription": "Planted study of Jane Doe",
    "PatientAddress": "7 Plantedaddress Lane",
}
PRIVATE_VALUE = "PLANTEDPRIVATE88"
NESTED_VALUE = "PlantedNestedInstitution"
RETAINED = {"PatientSex": "F", "PatientAge": "063Y", "PatientWeight": "71.5"}
GEOMETRY = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Modality",
]
MAIN_UIDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"]
UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def plant_phi(src: Path, dst: Path) -> None:
    """Copy a series into ``dst`` with PHI planted in every file: plain, private and inside a sequence."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        for keyword, value in {**PLANTED, **RETAINED}.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0009, "PLANTED CREATOR", create=True).add_new(0x01, "LO", PRIVATE_VALUE)
        nested = Dataset()
        nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "T-D4000", "SRT", "Abdomen"
        nested.InstitutionName = NESTED_VALUE  # a PHI tag inside a sequence the profile keeps
        ds.AnatomicRegionSequence = [nested]
        ds.save_as(str(dst / f.name))


def headers(folder: Path) -> List[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.iterdir())]


def by_sop(datasets: List[pydicom.Dataset]) -> Dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for ds in datasets}


@pytest.fixture(scope="module")
def planted(shared, tmp_path_factory):
    """The uncompressed TotalSegmentator series with planted PHI, de-identified once for several tests."""
    root = tmp_path_factory.mktemp("deid")
    src = root / "src"
    plant_phi(shared / "dicom" / "ts_ct_series_uncompressed", src)
    uids = UidMap(root / "private" / "uids.sqlite")
    out = deidentify_series(src, root / "dst", uids, PSEUDONYM)
    return src, out, uids


@pytest.mark.parametrize("series", ["ts_ct_series_uncompressed", "dcmqi_ct_3slice"])
def test_planted_phi_is_nowhere_in_the_output_bytes(shared, tmp_path, series):
    src = tmp_path / "src"
    plant_phi(shared / "dicom" / series, src)
    originals = {str(ds.get(k)) for ds in headers(src) for k in MAIN_UIDS}
    out = deidentify_series(src, tmp_path / "dst", UidMap(tmp_path / "private" / "uids.sqlite"), PSEUDONYM)
    assert len(out) == len(list(src.iterdir()))
    secrets = [*PLANTED.values(), PRIVATE_VALUE, NESTED_VALUE, "Plantedname", *originals]
    for f in out:
        raw = f.read_bytes()
        leaks = [s for s in secrets if s.encode() in raw]
        assert not leaks, f"{f.name} still holds {leaks}"
        ds = pydicom.dcmread(f)
        assert find_phi(ds) == []
        assert not [e for e in ds.iterall() if e.tag.is_private]
        assert {k: str(ds.get(k)) for k in RETAINED} == RETAINED  # Retain Patient Characteristics Option


def test_find_phi_reports_planted_tags_by_name_not_value(planted):
    src, _, _ = planted
    found = find_phi(pydicom.dcmread(next(src.iterdir())))
    text = " ".join(found)
    for keyword in ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "private"]:
        assert keyword in text
    assert "InstitutionName" in text and text.count("InstitutionName") >= 2  # the nested one too
    assert PLANTED["PatientID"] not in text  # findings go to logs: they never repeat the PHI


@pytest.mark.parametrize("series", ["ts_ct_series_uncompressed", "ts_ct_series_j2k", "chaos_ct_series"])
def test_pixels_and_geometry_are_unchanged(shared, tmp_path, series):
    src = shared / "dicom" / series  # only read: de-identification writes into dst
    uids = UidMap(tmp_path / "private" / "uids.sqlite")
    out = deidentify_series(src, tmp_path / "dst", uids, PSEUDONYM)
    new = by_sop([pydicom.dcmread(f) for f in out])
    for before in headers(src):
        after = new[uids.new_uid(before.SOPInstanceUID)]
        assert after.PixelData == before.PixelData  # byte for byte, compressed or not
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        assert {k: after.get(k) for k in GEOMETRY} == {k: before.get(k) for k in GEOMETRY}
    a, b = read_series(src), read_series(tmp_path / "dst")
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())


def test_uids_are_replaced_consistently_and_map_back(planted, tmp_path):
    src, out, uids = planted
    before, after = headers(src), [pydicom.dcmread(f) for f in out]
    for k in ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]:
        assert len({ds.get(k) for ds in after}) == 1
    assert len({ds.SOPInstanceUID for ds in after}) == len(after) == len(before)
    for ds in after:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for k in MAIN_UIDS:
            assert UID_SYNTAX.match(ds.get(k)) and len(ds.get(k)) <= 64
    original = before[0]
    new_sops = {ds.SOPInstanceUID for ds in after}
    for k in MAIN_UIDS:
        record = uids.by_original(original.get(k))
        assert record is not None and record.kind == k and uids.by_new(record.new) == record
        assert record.new in new_sops if k == "SOPInstanceUID" else record.new == after[0].get(k)
        assert record.pseudonym == PSEUDONYM and record.patient_id == PLANTED["PatientID"] and record.imported_at
    assert uids.patient_id(PSEUDONYM) == PLANTED["PatientID"]
    # a second import with the same installation maps to the same UIDs; another installation does not
    again = deidentify_series(src, tmp_path / "again", uids, PSEUDONYM)
    assert sorted(f.name for f in again) == sorted(f.name for f in out)
    other = deidentify_series(src, tmp_path / "other", UidMap(tmp_path / "elsewhere.sqlite"), PSEUDONYM)
    assert not {f.name for f in other} & {f.name for f in out}
    assert pydicom.dcmread(other[0]).StudyInstanceUID != after[0].StudyInstanceUID


def test_mapping_file_is_private(planted):
    _, _, uids = planted
    for f in [uids.path, *uids.path.parent.glob(uids.path.name + "-*")]:  # the WAL files too
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    assert UidMap(uids.path).new_uid("1.2.3") == uids.new_uid("1.2.3")  # the secret is kept in the file


def test_identity_removed_and_method_recorded(planted):
    _, out, _ = planted
    ds = pydicom.dcmread(out[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.PatientName) == ds.PatientID == PSEUDONYM
    codes = {(item.CodeValue, item.CodingSchemeDesignator) for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {("113100", "DCM"), ("113108", "DCM")}
    assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod


def test_deidentify_dataset_leaves_the_callers_dataset_alone(planted, tmp_path):
    src, _, _ = planted
    ds = pydicom.dcmread(next(src.iterdir()))
    out = deidentify_dataset(ds, UidMap(tmp_path / "uids.sqlite"), PSEUDONYM)
    assert str(ds.PatientName) == PLANTED["PatientName"] and out.PatientName == PSEUDONYM
    assert ds.private_block(0x0009, "PLANTED CREATOR")[0x01].value == PRIVATE_VALUE


@pytest.mark.parametrize(
    "damage, error",
    [("not_dicom", InputError), ("truncated", InputError), ("no_pixels", Unprocessable)],
)
def test_a_bad_file_fails_by_name_and_writes_nothing(planted, tmp_path, damage, error):
    src, _, _ = planted
    series = tmp_path / "series"
    series.mkdir()
    files = sorted(src.iterdir())
    for f in files:
        (series / f.name).write_bytes(f.read_bytes())
    bad = series / "zz_bad.dcm"  # sorted last, so that the good files are processed first
    if damage == "not_dicom":
        bad.write_text("this is a radiology report, not an image\n")
    elif damage == "truncated":
        bad.write_bytes(files[0].read_bytes()[:400])
    else:
        ds = pydicom.dcmread(files[0])
        del ds.PixelData
        ds.save_as(str(bad))
    uids = UidMap(tmp_path / "private" / "uids.sqlite")
    with pytest.raises(error, match="zz_bad.dcm"):
        deidentify_series(series, tmp_path / "dst", uids, PSEUDONYM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private", "series"]  # no dst, no temp folder
    assert uids.by_original(pydicom.dcmread(files[0]).StudyInstanceUID) is None  # the mapping rolled back


def test_refuses_a_non_empty_destination_and_a_bad_pseudonym(planted, tmp_path):
    src, _, uids = planted
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("x")
    with pytest.raises(Conflict):
        deidentify_series(src, tmp_path / "dst", uids, PSEUDONYM)
    with pytest.raises(InputError, match="pseudonym"):
        deidentify_series(src, tmp_path / "new", uids, "a\\b")
