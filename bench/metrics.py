"""Speed of the metrics: Dice + NSD (+ HD95, IoU, accuracy) for the 15 organs of the real AMOS label pair.

Compared in the same run with DeepMind's surface-distance (the reference implementation), organ by organ. The
label maps are read once, before timing; each figure is the median of ``--repeats`` runs.

    python -m bench.metrics
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

from amoslabel.organs import ORGANS  # noqa: E402
from evaluation.metrics import evaluate_case  # noqa: E402

LABELS = SHARED_DATA / "labels"


def _deepmind(pred: np.ndarray, ref: np.ndarray, spacing) -> None:
    import surface_distance

    for organ in ORGANS:
        p, r = pred == organ.id, ref == organ.id
        if p.any() and r.any():
            distances = surface_distance.compute_surface_distances(r, p, spacing)
            surface_distance.compute_surface_dice_at_tolerance(distances, organ.nsd_tolerance_mm)
            surface_distance.compute_dice_coefficient(r, p)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    reference = nib.load(str(LABELS / "amos_0013_label.nii.gz"))
    ref = np.asarray(reference.dataobj)
    pred = np.asarray(nib.load(str(LABELS / "amos_0013_pred_perturbed.nii.gz")).dataobj)
    spacing = [float(s) for s in reference.header.get_zooms()]
    evaluate_case(pred, ref, spacing)  # warm-up: first-call imports and caches
    figures = {
        "volume": list(ref.shape),
        "spacing_mm": spacing,
        "ours_dice_nsd_hd95_iou_acc_s": _median_seconds(lambda: evaluate_case(pred, ref, spacing), args.repeats),
        "ours_dice_only_s": _median_seconds(lambda: evaluate_case(pred, ref, spacing, surface=False), args.repeats),
        "deepmind_dice_nsd_s": _median_seconds(lambda: _deepmind(pred, ref, spacing), max(1, args.repeats // 2)),
    }
    figures = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}
    print(json.dumps(figures, indent=2))
    print(
        f"\nDice+NSD (+HD95, IoU, accuracy), 15 organs, {ref.shape}: ours {figures['ours_dice_nsd_hd95_iou_acc_s']} s "
        f"(target <= 2 s), DeepMind surface-distance {figures['deepmind_dice_nsd_s']} s"
    )
    out = BENCH_OUTPUT / "metrics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
