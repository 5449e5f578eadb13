"""The baseline table command, run as a user runs it on a small synthetic split (real AMOS label maps, deformed)."""

from __future__ import annotations

import json
import sys

from pathlib import Path

import SimpleITK as sitk
import yaml

from amoslabel.data.synthetic import draw_params, synthesise
from tests.conftest import ROOT, SHARED
from tests.preloaded_python import run_module

# VNet, UNETR and SwinUNETR take minutes per step on 2 CPU cores; they are built and run forward in
# tests/models/test_networks.py, and trained in `make baselines`.
ROWS = "atlas_prior,frequency_prior,logreg3,logreg5,fcn_slices,unet2d,unet,segresnet"


def coarse_config(folder: Path) -> Path:
    """apps.yaml with a 6 mm preset on top of cpu-fast (the smallest grid that still tests every row's path: train,
    validate, infer, restore, evaluate); the synthetic split is made at 6 mm too, so nothing is resampled up."""
    config = yaml.safe_load((ROOT / "apps.yaml").read_text())
    config["presets"]["tests-6mm"] = {"inherits": "cpu-fast", "plans": {"ct": {"spacing": [6.0, 6.0, 6.0]}}}
    path = folder / "apps.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_synthetic_cases_are_replayable_from_their_parameters():
    label = sitk.ReadImage(str(SHARED / "labels" / "amos_0024_label.nii.gz"))
    params = draw_params(7)
    first, first_label = synthesise(label, params)
    again, again_label = synthesise(label, params)
    assert sitk.GetArrayViewFromImage(first).tobytes() == sitk.GetArrayViewFromImage(again).tobytes()
    assert sitk.GetArrayViewFromImage(first_label).tobytes() == sitk.GetArrayViewFromImage(again_label).tobytes()
    other, _ = synthesise(label, draw_params(8))
    assert sitk.GetArrayViewFromImage(other).tobytes() != sitk.GetArrayViewFromImage(first).tobytes()
    assert first.GetSpacing() == (3.0, 3.0, 3.0)
    organs = set(int(v) for v in set(sitk.GetArrayViewFromImage(first_label).ravel())) - {0}
    assert organs == set(range(1, 16))  # AMOS maps hold all 15 organs, and deformation keeps them


def test_every_row_runs_and_lands_in_one_table(tmp_path):
    out = tmp_path / "baselines"
    done = run_module(
        [
            sys.executable,
            "-m",
            "bench.baselines",
            "--models",
            ROWS,
            "--steps",
            "2",
            "--train-cases",
            "2",
            "--test-cases",
            "1",
            "--out",
            str(out),
            "--config",
            str(coarse_config(tmp_path)),
            "--preset",
            "tests-6mm",
            "--spacing",
            "6",
        ],
        ROOT,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "rows.json").read_text())
    assert set(rows) == set(ROWS.split(","))
    assert rows["unet"]["parameters"] > 1e6 and rows["unet"]["gflops"] > 10
    assert rows["logreg3"]["parameters"] == 16 * 9 + 16 and rows["logreg5"]["parameters"] == 16 * 25 + 16
    # the course report's per-position prior predicts background everywhere; the atlas prior must not
    assert rows["frequency_prior"]["mdice"] < 0.05
    assert rows["atlas_prior"]["mdice"] > 0.2 and rows["atlas_prior"]["dice"]["liver"] > 0.5
    table = (out / "table.md").read_text()
    assert "SYNTHETIC" in table and "| atlas_prior | 3D prior |" in table and "| unet2d | 2D |" in table
    assert (out / "reports" / "unet" / "cases.csv").is_file()
    # a second run of one row replaces that row and keeps the others
    again = run_module(
        [sys.executable, "-m", "bench.baselines", "--models", "frequency_prior", "--out", str(out), "--steps", "1"],
        ROOT,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(json.loads((out / "rows.json").read_text())) == set(ROWS.split(","))


def test_unknown_row_is_refused(tmp_path):
    done = run_module([sys.executable, "-m", "bench.baselines", "--models", "segformer", "--out", str(tmp_path)], ROOT)
    assert done.returncode == 2 and "unknown rows ['segformer']" in done.stderr
