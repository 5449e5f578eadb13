"""DICOM SEG writing and reading on the real series in ../shared/data/dicom, codes checked against PS3.16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom_seg
import pytest
import SimpleITK as sitk
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes

from amoslabel.dicom.series import read_series, series_headers
from amoslabel.dicom.seg import (
    ANATOMICAL_STRUCTURE,
    ORGAN_CODES,
    Code,
    coding_for,
    organ_id_for,
    read_seg,
    rgb_to_dicom_lab,
    series_grid,
    write_seg,
)
from amoslabel.organs import ORGAN_BY_ID, ORGANS

# Written out independently: AMOS id -> (pydicom SCT keyword of the PS3.16 concept, CID 244 laterality keyword).
# Label 15 is sex-specific: (keyword for men, keyword for women).
PS316 = {
    1: ("Spleen", None),
    2: ("Kidney", "Right"),
    3: ("Kidney", "Left"),
    4: ("Gallbladder", None),
    5: ("Esophagus", None),
    6: ("Liver", None),
    7: ("Stomach", None),
    8: ("Aorta", None),
    9: ("InferiorVenaCava", None),
    10: ("Pancreas", None),
    11: ("AdrenalGland", "Right"),
    12: ("AdrenalGland", "Left"),
    13: ("Duodenum", None),
    14: ("Bladder", None),
}
PROSTATE_UTERUS = {"M": "Prostate", "F": "Uterus"}
CID_SEG_ANATOMY, CID_LATERALITY, CID_CATEGORY = 7192, 244, 7150


def _ps316(keyword: str, cid: int) -> Code:
    """The SCT concept with this pydicom keyword, checked to be a member of CID ``cid``."""
    code = getattr(codes.SCT, keyword)
    meaning, cids = concepts["SCT"][keyword][code.value]
    assert cid in cids, f"{keyword} {code.value} is not in CID {cid}"
    return Code(code.value, code.scheme_designator, meaning)


def _expected_id(segment: pydicom.Dataset) -> int:
    """AMOS id of a written segment, from the independent table."""
    value = segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
    mods = {m.CodeValue for m in segment.get("SegmentedPropertyTypeModifierCodeSequence", [])}
    for organ_id, (kw, side) in PS316.items():
        if codes.SCT.__getattr__(kw).value == value and mods == ({getattr(codes.SCT, side).value} if side else set()):
            return organ_id
    assert value in {codes.SCT.Prostate.value, codes.SCT.Uterus.value}, f"unexpected code {value}"
    return 15


@pytest.fixture(scope="module")
def dicom_dir(shared) -> Path:
    return shared / "dicom"


@pytest.fixture(scope="module")
def label(dicom_dir) -> sitk.Image:
    return sitk.ReadImage(str(dicom_dir / "ts_ct_series_label.nii.gz"))


@pytest.fixture(scope="module")
def series(dicom_dir) -> sitk.Image:
    return read_series(dicom_dir / "ts_ct_series_uncompressed")


@pytest.fixture(scope="module")
def expected(label, series) -> np.ndarray:
    """The label resampled by physical position onto the series grid (its y axis is flipped)."""
    out = sitk.Resample(label, series, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


@pytest.fixture(scope="module")
def written(label, dicom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "ts.dcm"
    return write_seg(label, dicom_dir / "ts_ct_series_uncompressed", out, "AMOS Label organs")


def test_code_table_matches_ps316():
    category = concepts["SCT"]["AnatomicalStructure"]
    assert ANATOMICAL_STRUCTURE == Code("123037004", "SCT", category["123037004"][0])
    assert CID_CATEGORY in category["123037004"][1]
    assert {o.id for o in ORGANS} == {c.organ_id for c in ORGAN_CODES}
    for organ_id, (kw, side) in PS316.items():
        coding = coding_for(organ_id)
        assert coding.label == next(o.name for o in ORGANS if o.id == organ_id)
        assert coding.type == _ps316(kw, CID_SEG_ANATOMY), organ_id
        assert coding.laterality == (_ps316(side, CID_LATERALITY) if side else None), organ_id
    for sex, kw in PROSTATE_UTERUS.items():
        coding = coding_for(15, sex)
        assert (coding.type, coding.laterality) == (_ps316(kw, CID_SEG_ANATOMY), None)
    with pytest.raises(ValueError, match="patient_sex"):
        coding_for(15, None)


def test_codes_map_back_including_snomed_rt():
    for c in ORGAN_CODES:
        assert organ_id_for(c.type, [c.laterality] if c.laterality else []) == c.organ_id
    assert organ_id_for(Code("T-62000", "SRT", "Liver")) == 6  # pre-2019 dcmqi files use SNOMED RT
    assert organ_id_for(Code("T-71000", "SRT", "Kidney"), [Code("G-A101", "SRT", "Left")]) == 3
    assert organ_id_for(Code("64033007", "SCT", "Kidney")) is None  # a kidney without side is not an AMOS label
    assert organ_id_for(Code(codes.SCT.Heart.value, "SCT", "Heart")) is None


def test_colours_from_the_organ_table_in_range():
    # the organ table's colours (tests/amoslabel/test_organs.py checks that they are far apart), one per label
    for c in ORGAN_CODES:
        assert c.rgb == ORGAN_BY_ID[c.organ_id].rgb, c.label
    labs = [rgb_to_dicom_lab(c.rgb) for c in ORGAN_CODES]
    assert all(0 <= v <= 65535 for lab in labs for v in lab)
    assert len({rgb_to_dicom_lab(o.rgb) for o in ORGANS}) == len(ORGANS)  # distinct per organ
    for c, lab in zip(ORGAN_CODES, labs):
        assert np.abs(np.subtract(lab, pydicom_seg.template.rgb_to_cielab(list(c.rgb)))).max() <= 1
    assert rgb_to_dicom_lab((255, 255, 255)) == (65535, 32896, 32896)  # L=100, a=b=0 (0 -> 128 * 65535 / 255)
    assert rgb_to_dicom_lab((0, 0, 0)) == (0, 32896, 32896)


@pytest.mark.parametrize("name", ["ts_ct_series_uncompressed", "ts_ct_series_j2k", "dcmqi_ct_3slice"])
def test_series_grid_matches_read_series(dicom_dir, name):
    grid, headers = series_grid(dicom_dir / name)
    image = read_series(dicom_dir / name)
    assert grid.GetSize() == image.GetSize() and len(headers) == image.GetSize()[2]
    np.testing.assert_allclose(grid.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(grid.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(grid.GetDirection(), image.GetDirection(), atol=1e-6)


def test_round_trip_voxel_exact(written, dicom_dir, label, series, expected):
    # The y flip is real: the same array indices would be wrong.
    assert not np.array_equal(expected, sitk.GetArrayFromImage(label))
    back = read_seg(written, dicom_dir / "ts_ct_series_uncompressed")
    assert back.GetSize() == series.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), series.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
    assert set(np.unique(expected)) == {0, 1, 6, 7, 8, 9, 10, 11}


def test_round_trip_with_pydicom_seg_reader(written, series, expected):
    ds = pydicom.dcmread(str(written))
    result = pydicom_seg.MultiClassReader().read(ds)
    on_series = sitk.Resample(result.image, series, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    lut = np.zeros(len(ds.SegmentSequence) + 1, dtype=np.uint8)
    for segment in ds.SegmentSequence:
        lut[segment.SegmentNumber] = _expected_id(segment)
    assert np.array_equal(lut[sitk.GetArrayFromImage(on_series)], expected)


def test_written_header(written, dicom_dir, expected):
    ds = pydicom.dcmread(str(written))
    source = next(iter(series_headers(dicom_dir / "ts_ct_series_uncompressed").values()))
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and ds.SeriesDescription == "AMOS Label organs"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced and referenced <= {h.SOPInstanceUID for h in source}
    segments = ds.SegmentSequence
    assert [s.SegmentNumber for s in segments] == list(range(1, len(segments) + 1))
    assert sorted(_expected_id(s) for s in segments) == [1, 6, 7, 8, 9, 10, 11]
    for s in segments:
        organ_id = _expected_id(s)
        assert s.SegmentLabel == coding_for(organ_id).label
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
        assert tuple(s.RecommendedDisplayCIELabValue) == rgb_to_dicom_lab(coding_for(organ_id).rgb)
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "AMOS Label"
    right_adrenal = next(s for s in segments if _expected_id(s) == 11)
    assert right_adrenal.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"


def test_jpeg2000_source(dicom_dir, label, expected, tmp_path):
    out = write_seg(label, dicom_dir / "ts_ct_series_j2k", tmp_path / "j2k.dcm", "from j2k", algorithm_type="MANUAL")
    ds = pydicom.dcmread(str(out))
    assert all(s.SegmentAlgorithmType == "MANUAL" and "SegmentAlgorithmName" not in s for s in ds.SegmentSequence)
    assert np.array_equal(sitk.GetArrayFromImage(read_seg(out, dicom_dir / "ts_ct_series_j2k")), expected)


def test_label_on_another_grid_is_resampled_physically(dicom_dir, label, series, tmp_path):
    coarse = sitk.Resample(
        label,
        [256, 256, 10],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        label.GetOrigin(),
        [2 * s for s in label.GetSpacing()],
        label.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    out = write_seg(coarse, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "coarse.dcm", "coarse")
    want = sitk.Resample(coarse, series, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    got = read_seg(out, dicom_dir / "ts_ct_series_uncompressed")
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))


def test_prostate_uterus_coded_by_sex(dicom_dir, label, tmp_path):
    array = sitk.GetArrayFromImage(label)
    array[array == 10] = 15  # real shape, relabelled
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(label)
    with pytest.raises(ValueError, match="sex"):  # this series has no PatientSex
        write_seg(relabelled, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "x.dcm", "x")
    out = write_seg(relabelled, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "f.dcm", "x", patient_sex="F")
    segment = next(s for s in pydicom.dcmread(str(out)).SegmentSequence if s.SegmentLabel == "uterus")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Uterus.value
    back = sitk.GetArrayFromImage(read_seg(out, dicom_dir / "ts_ct_series_uncompressed"))
    assert 15 in back and 10 not in back
    # asked for explicitly (the server, when PatientSex is empty): the region, which reads back as label 15 too
    out = write_seg(relabelled, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "u.dcm", "x", patient_sex="unknown")
    segment = next(s for s in pydicom.dcmread(str(out)).SegmentSequence if s.SegmentLabel == "prostate/uterus")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12921003"  # SCT Pelvic structure
    assert 15 in sitk.GetArrayFromImage(read_seg(out, dicom_dir / "ts_ct_series_uncompressed"))


def test_read_dcmqi_liver_seg(dicom_dir):
    seg = dicom_dir / "dcmqi_ct_3slice_liver_seg.dcm"
    # That file codes liver in SNOMED RT: SRT T-62000 "Liver" (category SRT T-D0050 "Tissue").
    assert pydicom.dcmread(str(seg)).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "T-62000"
    image = read_seg(seg, dicom_dir / "dcmqi_ct_3slice")
    source = read_series(dicom_dir / "dcmqi_ct_3slice")
    array = sitk.GetArrayFromImage(image)
    assert image.GetSize() == source.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert set(np.unique(array)) == {0, 6} and (array == 6).sum() > 10000


def test_unknown_segment_code(dicom_dir, tmp_path):
    ds = pydicom.dcmread(str(dicom_dir / "dcmqi_ct_3slice_liver_seg.dcm"))
    item = ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "80891009", "SCT", "Heart"
    ds.save_as(str(tmp_path / "heart.dcm"))
    with pytest.raises(ValueError, match="Heart.*none of the 15"):
        read_seg(tmp_path / "heart.dcm", dicom_dir / "dcmqi_ct_3slice")
    skipped = read_seg(tmp_path / "heart.dcm", dicom_dir / "dcmqi_ct_3slice", unknown="skip")
    assert not sitk.GetArrayFromImage(skipped).any()


@pytest.mark.parametrize("bad", [16, -1])
def test_out_of_range_ids(dicom_dir, label, tmp_path, bad):
    array = sitk.GetArrayFromImage(label).astype(np.int16)
    array[10, 200:210, 200:210] = bad
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(label)
    with pytest.raises(ValueError, match=f"label values {bad} "):
        write_seg(image, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "bad.dcm", "x")
    assert not (tmp_path / "bad.dcm").exists()


def test_label_elsewhere_in_space(dicom_dir, label, tmp_path):
    moved = sitk.Image(label)
    moved.SetOrigin([v + 1000.0 for v in label.GetOrigin()])
    with pytest.raises(ValueError, match="does not overlap"):
        write_seg(moved, dicom_dir / "ts_ct_series_uncompressed", tmp_path / "moved.dcm", "x")


def test_corrupt_or_wrong_files(written, dicom_dir, tmp_path):
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(written.read_bytes()[:-5000])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(ValueError, match="not a readable DICOM SEG"):
            read_seg(bad, dicom_dir / "ts_ct_series_uncompressed")
    ct = sorted((dicom_dir / "ts_ct_series_uncompressed").iterdir())[0]
    with pytest.raises(ValueError, match="not a DICOM SEG"):
        read_seg(ct, dicom_dir / "ts_ct_series_uncompressed")


def test_seg_of_another_series_is_refused(dicom_dir):
    with pytest.raises(ValueError, match="not the source series"):
        read_seg(dicom_dir / "dcmqi_ct_3slice_liver_seg.dcm", dicom_dir / "ts_ct_series_uncompressed")
