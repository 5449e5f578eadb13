"""The work a pre-label saves: estimated correction time from four starts, on the real scans with labels.

Starts, each scored on every real scan with a label in ``../shared/data`` (none of which any start has seen):
- **empty**: the junior draws everything;
- **prior**: the atlas prior, built from the two real AMOS label maps only (as ``make prior-check``);
- **unet**: our ``cpu`` preset's UNet (1.5 mm, 5.6 M parameters), trained by the app's own train task on the synthetic
  split below, for the preset's 20 x 25 steps;
- **nnunet**: an nnU-Net v2 model trained here with nnU-Net's own commands on the same synthetic split
  (``make bench-nnunet-model``, about an hour), imported with ``models import --format nnunetv2``. It is **not
  TotalSegmentator**, whose weights cannot be downloaded here.

The synthetic split (``bench/nnunet_reference.py``) is made from the two real AMOS label maps, deformed, with CT-like
intensities per organ: no real image trains either network. The effort model is ``evaluation/effort.py`` (its
constants and their sources are stated there); Dice and NSD are ``evaluation/metrics.py``'s. The reference labels
are TotalSegmentator output except CHAOS's liver (human), and only the organs a reference annotates are scored.

    python -m bench.effort          # .bench/effort/{results.json, table.md}; trains the UNet once (cached)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

from amoslabel.config import load_config  # noqa: E402
from amoslabel.dicom.series import read_series  # noqa: E402
from amoslabel.organs import ORGANS  # noqa: E402
from amoslabel.volume import read_image, read_label  # noqa: E402
from evaluation.effort import EffortModel, correction_effort, total  # noqa: E402
from evaluation.metrics import evaluate_case  # noqa: E402

log = logging.getLogger("bench.effort")
OUT = BENCH_OUTPUT / "effort"
STARTS = ("empty", "prior", "unet", "nnunet")
#: name -> (modality, image (file or DICOM series folder), reference label, the organs the reference annotates)
SCANS: Dict[str, Tuple[str, str, str, Tuple[int, ...]]] = {
    "ts_abdomen_ct": ("ct", "ct/ts_abdomen_ct.nii.gz", "ct/ts_abdomen_ct_label.nii.gz", tuple(o.id for o in ORGANS)),
    "ts_ct_series": (
        "ct",
        "dicom/ts_ct_series_uncompressed",
        "dicom/ts_ct_series_label.nii.gz",
        tuple(o.id for o in ORGANS),
    ),
    "chaos_ct_series": ("ct", "dicom/chaos_ct_series", "dicom/chaos_ct_series_liver_label.nii.gz", (6,)),
    "ts_abdomen_mr_small": (
        "mri",
        "mr/ts_abdomen_mr_small.nii.gz",
        "mr/ts_abdomen_mr_small_label.nii.gz",
        tuple(o.id for o in ORGANS),
    ),
}
GOAL = 0.30  # the best start needs at most 30 % of the empty start's time on the real CT


def load_scan(name: str) -> Tuple[sitk.Image, sitk.Image]:
    """The image and its reference on the image's grid (the DICOM label is resampled by physical coordinates)."""
    _, image_path, label_path, _ = SCANS[name]
    source = SHARED_DATA / image_path
    image = read_series(source) if source.is_dir() else read_image(source)
    label = read_label(SHARED_DATA / label_path)
    if label.GetSize() != image.GetSize() or label.GetDirection() != image.GetDirection():
        label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return image, label


def train_unet(synthetic: Path, work: Path, preset: str, epochs: int | None = None):
    """The app's own train task on the synthetic split (labels as finals); cached in ``work``."""
    from amoslabel.data.datastore import AmosDatastore
    from amoslabel.data.importer import import_source
    from models.train_task import SegmentationTrainTask
    from models.versions import ModelStore

    config = load_config(overrides={"preset": preset})
    store = ModelStore(work / "models", "unet")
    if store.latest() is not None:
        return config, store
    studies = work / "studies"
    if not studies.exists():
        import_source(synthetic, studies, labels_as="final", link_images=True, progress=True)
    datastore = AmosDatastore(str(studies), config.storage.max_image_voxels, 2**31)
    started = time.time()
    request = {"model": "unet", "multi_gpu": False}
    if epochs:  # a shorter run: one validation, at the end, on one case (5 cases at 1.5 mm cost 15 min on 2 cores)
        request.update({"max_epochs": epochs, "val_interval": epochs, "val_fraction": 0.05})
    SegmentationTrainTask("unet", config, store, str(studies))(request, datastore)
    log.info("UNet (%s preset) trained in %.1f min", preset, (time.time() - started) / 60)
    return config, store


def predictions(name: str, image: sitk.Image, starts: Dict[str, object], scratch: Path) -> Dict[str, np.ndarray]:
    """Each start's label map of one scan, (z, y, x), on the scan's grid."""
    from models.atlas_placement import PriorSettings, label_with_prior

    modality = SCANS[name][0]
    source = SHARED_DATA / SCANS[name][1]
    path = str(source)
    out = {"empty": np.zeros(image.GetSize()[::-1], np.uint8)}
    atlas, threshold = starts["prior"]
    out["prior"] = sitk.GetArrayFromImage(
        label_with_prior(atlas, image, modality, PriorSettings(threshold=threshold))[0]
    )
    for start in ("unet", "nnunet"):
        task = starts[start]
        label_file, _ = task({"image": path, "modality": modality, "model_version": "latest", "case_id": name})
        label = sitk.ReadImage(label_file)
        assert label.GetSize() == image.GetSize(), f"{start} on {name}: the pre-label is off the scan's grid"
        out[start] = sitk.GetArrayFromImage(label)
    return out


def score(prediction: np.ndarray, reference: np.ndarray, spacing_zyx, organs) -> dict:
    keep = np.isin(prediction, organs)
    prediction = np.where(keep, prediction, 0).astype(np.uint8)
    chosen = [o for o in ORGANS if o.id in organs]
    efforts = correction_effort(prediction, reference, spacing_zyx, EffortModel(), chosen)
    scores = evaluate_case(prediction, reference, spacing_zyx)
    variants = {name: sum(model.minutes(e) for e in efforts.values()) for name, model in EffortModel.variants().items()}
    return {
        "minutes": sum(e.minutes for e in efforts.values()),
        "minutes_by_model": variants,
        "organs": {str(k): asdict(v) for k, v in efforts.items()},
        "total": asdict(total(efforts.values())) if efforts else None,
        "dice": {o.name: scores.per_organ["dice"][o.name] for o in chosen},
        "mean_dice": float(np.nanmean([scores.per_organ["dice"][o.name] for o in chosen])),
    }


def tables(results: dict) -> str:
    lines = ["| scan | " + " | ".join(f"{s}: min (x empty), mDice" for s in STARTS) + " |", "|---" * 5 + "|"]
    for scan, by_start in results["scans"].items():
        empty = by_start["empty"]["minutes"]
        cells = [f"{r['minutes']:.1f} ({r['minutes'] / empty:.2f}), {r['mean_dice']:.2f}" for r in by_start.values()]
        lines.append(f"| {scan} | " + " | ".join(cells) + " |")
    ct = results["scans"]["ts_abdomen_ct"]
    lines += ["", "Real CT (ts_abdomen_ct) per organ: minutes (Dice)", ""]
    lines += ["| organ | " + " | ".join(STARTS) + " | best / empty |", "|---" * (len(STARTS) + 2) + "|"]
    for organ in ORGANS:
        key = str(organ.id)
        if key not in ct["empty"]["organs"]:
            continue
        minutes = {s: ct[s]["organs"].get(key, {}).get("minutes", 0.0) for s in STARTS}
        cells = [f"{minutes[s]:.1f} ({ct[s]['dice'][organ.name]:.2f})" for s in STARTS]
        best = min(minutes[s] for s in STARTS[1:])
        lines.append(f"| {organ.name} | " + " | ".join(cells) + f" | {best / max(minutes['empty'], 1e-9):.2f} |")
    lines += ["", "Real CT, all organs, under the stated model and its two extremes (minutes, x empty):", ""]
    lines += ["| effort model | " + " | ".join(STARTS) + " |", "|---" * (len(STARTS) + 1) + "|"]
    for model in EffortModel.variants():
        empty = ct["empty"]["minutes_by_model"][model]
        cells = [
            f"{ct[s]['minutes_by_model'][model]:.1f} ({ct[s]['minutes_by_model'][model] / empty:.2f})" for s in STARTS
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    best = min(STARTS[1:], key=lambda s: ct[s]["minutes"])
    ratio = ct[best]["minutes"] / ct["empty"]["minutes"]
    lines += [
        "",
        f"Best start on the real CT: **{best}**, {ratio:.2f} x the empty start's time "
        f"(goal <= {GOAL:.2f}: {'met' if ratio <= GOAL else 'not met'}).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet", type=Path, default=BENCH_OUTPUT / "nnunet", help="bench.nnunet_reference's work")
    parser.add_argument("--preset", default="cpu", help="the UNet's preset")
    parser.add_argument("--scans", nargs="+", default=list(SCANS), choices=list(SCANS))
    parser.add_argument("--unet-epochs", type=int, default=None, help="default: the preset's (cpu: 20 x 25 steps)")
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the UNet, then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    from models.atlas_prior import build_atlas
    from models.infer_task import SegmentationInferTask
    from models.pretrained.importer import import_model
    from models.pretrained.task import ImportedInferTask
    from models.versions import ModelStore

    reference = (
        json.loads((args.nnunet / "reference.json").read_text()) if (args.nnunet / "reference.json").is_file() else None
    )
    config, unet_store = train_unet(args.nnunet / "synthetic", OUT / "unet", args.preset, args.unet_epochs)
    if args.train_only:
        return 0
    if reference is None:
        raise SystemExit(f"no nnU-Net reference model in {args.nnunet}: run `make bench-nnunet-model` first")
    nnunet_store = ModelStore(OUT / "imported", "nnunet")
    if nnunet_store.latest() is None:
        import_model("nnunetv2", [Path(reference["result_folder"])], "nnunet", "amos", OUT / "imported")
    paths = config.prior.label_map_paths(Path(config.source_dir))
    atlas = build_atlas([(p.name, read_label(p)) for p in paths], config.prior.spacing_mm, config.prior.smoothing_mm)
    starts = {
        "prior": (atlas, config.prior.threshold),
        "unet": SegmentationInferTask("unet", config, unet_store),
        "nnunet": ImportedInferTask("nnunet", config, nnunet_store, None),
    }
    results = {"nnunet_reference": reference, "unet": unet_store.latest().meta | {"plans": None}, "scans": {}}
    for name in args.scans:
        image, label = load_scan(name)
        spacing = image.GetSpacing()[::-1]
        reference_labels = sitk.GetArrayFromImage(label)
        started = time.time()
        made = predictions(name, image, starts, OUT)
        results["scans"][name] = {s: score(made[s], reference_labels, spacing, SCANS[name][3]) for s in STARTS}
        log.info("%s done in %.0f s", name, time.time() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = tables(results)
    (OUT / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
