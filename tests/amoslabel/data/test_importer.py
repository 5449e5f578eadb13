"""Import AMOS-layout datasets, NIfTI folders and DICOM series, case by case, never half."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from amoslabel.data.records import CaseRecords
from amoslabel.dicom.deidentify import UID_MAP, UidMap, private_folder
from amoslabel.data.importer import discover, import_source
from amoslabel.volume import Geometry
from tests.badfiles import corrupt, label_wrong_shape


@pytest.fixture()
def amos_dataset(shared, tmp_path):
    """An AMOS-layout folder made of links to the real scans (AMOS images themselves are not available here)."""
    root = tmp_path / "amos"
    for d in ("imagesTr", "labelsTr", "imagesVa", "labelsVa", "imagesTs"):
        (root / d).mkdir(parents=True)
    ct, ct_small, mr = shared / "ct", shared / "ct", shared / "mr"
    links = {
        "imagesTr/amos_0001.nii.gz": ct / "ts_abdomen_ct.nii.gz",
        "labelsTr/amos_0001.nii.gz": ct / "ts_abdomen_ct_label.nii.gz",
        "imagesTr/amos_0540.nii.gz": mr / "ts_abdomen_mr_small.nii.gz",
        "labelsTr/amos_0540.nii.gz": mr / "ts_abdomen_mr_small_label.nii.gz",
        "imagesVa/amos_0010.nii.gz": ct_small / "ts_abdomen_ct_small.nii.gz",
        "labelsVa/amos_0010.nii.gz": ct_small / "ts_abdomen_ct_small_label.nii.gz",
        "imagesTs/amos_0020.nii.gz": ct_small / "ts_abdomen_ct_small.nii.gz",
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)
    (root / "dataset.json").write_text(json.dumps({"name": "AMOS", "modality": {"0": "CT"}}))
    return root


def test_amos_layout_imports_every_split_with_labels_and_modality(amos_dataset, tmp_path):
    studies = tmp_path / "studies"
    report = import_source(amos_dataset, studies, progress=False)
    assert sorted(report.imported) == ["amos_0001", "amos_0010", "amos_0020", "amos_0540"] and not report.skipped
    assert sorted(p.name for p in (studies / "labels" / "final").iterdir()) == [
        "amos_0001.nii.gz",
        "amos_0010.nii.gz",
        "amos_0540.nii.gz",
    ]
    records = CaseRecords(studies)
    assert records.get("amos_0540")["modality"] == "mri" and records.get("amos_0001")["modality"] == "ct"
    assert records.get("amos_0010")["split"] == "validation" and records.get("amos_0020")["split"] == "test"
    assert not (studies / "amos_0001.nii.gz").is_symlink()  # copied by default
    again = import_source(amos_dataset, studies, progress=False)
    assert sorted(again.unchanged) == sorted(report.imported) and not again.imported


def test_a_case_named_like_a_channel_suffix_keeps_its_name_unless_every_image_has_one(shared, tmp_path):
    ct, label = shared / "ct" / "ts_abdomen_ct_small.nii.gz", shared / "ct" / "ts_abdomen_ct_small_label.nii.gz"
    for layout, names in (("ours", ["synth_0000", "synth_0001"]), ("nnunet", ["case_a_0000", "case_b_0000"])):
        root = tmp_path / layout
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        (root / "dataset.json").write_text(json.dumps({"name": layout, "modality": {"0": "CT"}}))
        for name in names:
            os.symlink(ct, root / "imagesTr" / f"{name}.nii.gz")
            case = name.removesuffix("_0000") if layout == "nnunet" else name
            os.symlink(label, root / "labelsTr" / f"{case}.nii.gz")
        report = import_source(root, tmp_path / f"studies-{layout}", link_images=True, progress=False)
        expected = ["synth_0000", "synth_0001"] if layout == "ours" else ["case_a", "case_b"]
        assert sorted(report.imported) == expected and not report.skipped
        assert len(list((tmp_path / f"studies-{layout}" / "labels" / "final").iterdir())) == 2


def test_labels_can_come_in_as_prelabels(amos_dataset, tmp_path):
    studies = tmp_path / "studies"
    import_source(amos_dataset, studies, labels_as="prelabel", progress=False)
    assert not (studies / "labels" / "final").exists()
    assert len(list((studies / "labels" / "original").iterdir())) == 3


def test_a_bad_case_is_reported_by_name_and_the_rest_goes_in(amos_dataset, tmp_path):
    corrupt(amos_dataset / "imagesTr" / "amos_0100.nii.gz")
    os.unlink(amos_dataset / "labelsVa" / "amos_0010.nii.gz")
    label_wrong_shape(amos_dataset / "labelsVa" / "amos_0010.nii.gz")
    studies = tmp_path / "studies"
    report = import_source(amos_dataset, studies, progress=False)
    skipped = {s["case"]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"amos_0100", "amos_0010"}
    assert "amos_0100.nii.gz" in skipped["amos_0100"] and "size" in skipped["amos_0010"]
    assert sorted(report.imported) == ["amos_0001", "amos_0020", "amos_0540"]
    # nothing of a skipped case was written: no image without its label, no temporary files
    assert not (studies / "amos_0010.nii.gz").exists() and not (studies / "amos_0100.nii.gz").exists()
    assert list((studies / ".amoslabel" / "tmp").glob("*")) == []


def test_plain_folder_with_dicom_series_and_sibling_labels(shared, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copytree(shared / "dicom" / "ts_ct_series_j2k", src / "series_a")
    shutil.copy(shared / "dicom" / "ts_ct_series_label.nii.gz", src / "series_a_label.nii.gz")
    shutil.copy(shared / "ct" / "ts_abdomen_ct_small.nii.gz", src / "scan_b.nii.gz")
    shutil.copy(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz", src / "scan_b_label.nii.gz")
    items = {i.case_id: i for i in discover(src)}
    assert set(items) == {"series_a", "scan_b"} and items["scan_b"].label.name == "scan_b_label.nii.gz"
    studies = tmp_path / "studies"
    report = import_source(src, studies, progress=False)
    assert sorted(report.imported) == ["scan_b", "series_a"]
    image = sitk.ReadImage(str(studies / "series_a.nii.gz"))
    label = sitk.ReadImage(str(studies / "labels" / "final" / "series_a.nii.gz"))
    assert Geometry.of(image) == Geometry.of(label)  # the flipped-y label now lies on the series' grid
    original = sitk.ReadImage(str(shared / "dicom" / "ts_ct_series_label.nii.gz"))
    assert np.array_equal(
        np.bincount(sitk.GetArrayViewFromImage(label).ravel()),
        np.bincount(sitk.GetArrayViewFromImage(original).ravel()),
    )
    record = CaseRecords(studies).get("series_a")
    assert record["modality"] == "ct" and record["modality_source"] == "dicom" and "resampled" in record["label_note"]
    # de-identified: the record names the series by its new UID; only the private mapping knows the original
    original_uid = str(pydicom.dcmread(next((src / "series_a").iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    assert (
        record["series_uid"].startswith("2.25.")
        and original_uid not in (studies / ".amoslabel").joinpath("cases").joinpath("series_a.json").read_text()
    )
    uids = UidMap(private_folder(studies) / UID_MAP)
    assert uids.by_new(record["series_uid"]).original == original_uid
    uids.close()


def test_single_file_and_manifest(shared, tmp_path):
    studies = tmp_path / "studies"
    report = import_source(
        shared / "mr" / "ts_abdomen_mr_small.nii.gz", studies, modality="mri", link_images=True, progress=False
    )
    assert report.imported == ["ts_abdomen_mr_small"]
    assert (studies / "ts_abdomen_mr_small.nii.gz").is_symlink()
    assert (studies / "labels" / "final" / "ts_abdomen_mr_small.nii.gz").exists()  # the _label sibling
    assert CaseRecords(studies).modality("ts_abdomen_mr_small") == "mri"
