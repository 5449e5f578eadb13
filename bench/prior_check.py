"""Atlas prior on the real scans, with an atlas that has never seen them.

The atlas is built from the two real AMOS label maps only (``apps.yaml``'s ``prior.label_maps``); the real CT
(``ts_abdomen_ct``) and MRI (``ts_abdomen_mr_small``) are then labelled and scored against their labels
(TotalSegmentator output). Neither scan nor the same patient's crop is in the atlas.

    python -m bench.prior_check        # prints the table, writes .bench/prior_check.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

from amoslabel.config import load_config  # noqa: E402
from amoslabel.organs import ORGANS  # noqa: E402
from amoslabel.volume import read_image, read_label  # noqa: E402
from evaluation.metrics import evaluate_case  # noqa: E402
from models.atlas_placement import PriorSettings, label_with_prior  # noqa: E402
from models.atlas_prior import build_atlas  # noqa: E402

SHARED = SHARED_DATA
CASES = {"ts_abdomen_ct": ("ct", "ct/ts_abdomen_ct"), "ts_abdomen_mr_small": ("mri", "mr/ts_abdomen_mr_small")}


def main() -> int:
    config = load_config()
    paths = config.prior.label_map_paths(Path(config.source_dir))
    started = time.time()
    atlas = build_atlas([(p.name, read_label(p)) for p in paths], config.prior.spacing_mm, config.prior.smoothing_mm)
    report = {"atlas_sources": atlas.sources, "atlas_build_seconds": round(time.time() - started, 1), "cases": {}}
    for case, (modality, stem) in CASES.items():
        image = read_image(SHARED / f"{stem}.nii.gz")
        reference = read_label(SHARED / f"{stem}_label.nii.gz")
        started = time.time()
        label, record = label_with_prior(atlas, image, modality, PriorSettings(threshold=config.prior.threshold))
        seconds = time.time() - started
        scores = evaluate_case(
            sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(reference), reference.GetSpacing()[::-1]
        )
        report["cases"][case] = {
            "seconds": round(seconds, 1),
            "mdice": round(scores.mean("dice"), 4),
            "mnsd": round(scores.mean("nsd"), 4),
            "miou": round(scores.mean("iou"), 4),
            "dice": {o.code: round(scores.per_organ["dice"][o.name], 3) for o in ORGANS},
            "placement": record["placement"],
        }
        print(
            f"\n{case} ({modality}): mDice {scores.mean('dice'):.3f}  mIoU {scores.mean('iou'):.3f}  "
            f"mNSD {scores.mean('nsd'):.3f}  ({seconds:.1f} s)"
        )
        print("  " + "  ".join(f"{o.code} {scores.per_organ['dice'][o.name]:.2f}" for o in ORGANS))
    out = BENCH_OUTPUT / "prior_check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
