"""The ``evaluate`` command, run as a user runs it, on real AMOS label maps."""

from __future__ import annotations

import csv

import pytest
import SimpleITK as sitk

from tests.conftest import amoslabel_command, SHARED

LABELS = SHARED / "labels"


@pytest.fixture
def folders(tmp_path):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir()
    refs.mkdir()
    (refs / "amos_0013.nii.gz").symlink_to(LABELS / "amos_0013_label.nii.gz")
    (preds / "amos_0013.nii.gz").symlink_to(LABELS / "amos_0013_pred_perturbed.nii.gz")
    # an AMOS id above 500 is an MRI case: the report groups by modality
    (refs / "amos_0540.nii.gz").symlink_to(LABELS / "amos_0024_label.nii.gz")
    (preds / "amos_0540.nii.gz").symlink_to(LABELS / "amos_0024_label.nii.gz")
    # a reference nobody predicted, and a prediction on another grid
    (refs / "amos_0100.nii.gz").symlink_to(LABELS / "amos_0024_label.nii.gz")
    (refs / "amos_0200.nii.gz").symlink_to(LABELS / "amos_0024_label.nii.gz")
    shifted = sitk.ReadImage(str(LABELS / "amos_0024_label.nii.gz"))
    shifted.SetSpacing([s * 1.5 for s in shifted.GetSpacing()])
    sitk.WriteImage(shifted, str(preds / "amos_0200.nii.gz"))
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "amos_id,Manufacturer's Model Name\n13,Aquilion ONE\n540,Prisma\n100,Aquilion ONE\n200,SOMATOM Force\n"
    )
    return preds, refs, meta, tmp_path / "out"


def _run(*args):
    return amoslabel_command("evaluate", *args)


def test_evaluate_writes_csv_tables_and_plots(folders):
    preds, refs, meta, out = folders
    done = _run(preds, "--labels", refs, "--out", out, "--metadata", meta, "--in-distribution", "Aquilion ONE")
    assert done.returncode == 3, done.stderr  # one case refused
    assert "not on the reference's grid" in done.stderr and "spacing" in done.stderr

    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "cases.csv"))}
    assert set(rows) == {"amos_0013", "amos_0540", "amos_0100", "amos_0200"}
    assert rows["amos_0540"]["modality"] == "mri" and rows["amos_0013"]["modality"] == "ct"
    assert float(rows["amos_0540"]["dice_LIV"]) == 1.0  # identical maps
    assert 0.85 < float(rows["amos_0013"]["dice_LIV"]) < 0.95
    assert rows["amos_0100"]["missing_prediction"] == "1" and float(rows["amos_0100"]["dice_mean"]) == 0.0
    assert rows["amos_0200"]["error"] and rows["amos_0200"]["dice_mean"] == ""

    report = (out / "report.md").read_text()
    header = (
        "| | n | SPL | RKI | LKI | GBL | ESO | LIV | STO | AOR | IVC | PAN | RAG | LAG | DUO | BLA | PRO/UTE | mean |"
    )
    assert header in report
    for group in (
        "| all | 3 |",
        "| ct | 2 |",
        "| mri | 1 |",
        "| scanner: Prisma | 1 |",
        "| in-distribution | 2 |",
        "| out-of-distribution | 1 |",
    ):
        assert group in report, group
    assert "## NSD" in report and "## HD95 (mm)" in report and "amos_0200" in report
    for png in ("dice_boxplot.png", "nsd_boxplot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sitk.ReadImage(str(out / png)).GetSize()[0] > 500


def test_in_distribution_from_a_training_split(folders, tmp_path):
    preds, refs, meta, out = folders
    split = tmp_path / "dataset.json"
    split.write_text('{"training": [{"image": "./imagesTr/amos_0540.nii.gz", "label": "./labelsTr/amos_0540.nii.gz"}]}')
    done = _run(preds, "--labels", refs, "--out", out, "--metadata", meta, "--train-split", split)
    report = (out / "report.md").read_text()
    assert "| in-distribution | 1 |" in report and "| out-of-distribution | 2 |" in report, done.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--in-distribution", "X"], "need --metadata"),
        (["--metadata", "{tmp}/nothing.csv"], "cannot read the metadata CSV"),
    ],
)
def test_bad_arguments_get_clear_errors(folders, extra, message, tmp_path):
    preds, refs, _, out = folders
    done = _run(preds, "--labels", refs, "--out", out, *[e.format(tmp=tmp_path) for e in extra])
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_missing_folders_are_refused(tmp_path):
    done = _run(tmp_path / "nope", "--labels", tmp_path, "--out", tmp_path / "o")
    assert done.returncode == 2 and "is not a folder" in done.stderr
