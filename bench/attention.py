"""Does the attention map point reviewers at the pre-label's errors? Error detection measured (``make
bench-attention``).

AbdomenAtlas's claim for its attention map, tested: the voxels it marks are where the pre-label is wrong. On
SYNTHETIC held-out volumes (made from the real label maps, :mod:`amoslabel.data.synthetic`) and on the REAL scans
with labels in ``../shared/data``:

1. Two small 3D UNets (the active-learning simulation's pre-labeler and its disagreement member) train on a
   synthetic pool; the table is made at each of ``--steps`` (a weak and a trained model).
2. Each test case is pre-labelled by the first network; the error map is pre-label != reference.
3. Heats: the attention heat (:mod:`strategies.attention`: the two networks and the atlas prior, anatomy learned
   from the training labels, as the server scores), and plain predictive entropy (the first network, flip TTA).
4. Voxel level: AUROC and average precision inside the body (:mod:`evaluation.error_detection`). Case level: the
   share of failing cases (an organ of the reference with Dice < 0.8) in the top 10 % and 20 % by attention mL, by
   mean foreground entropy, and for a random order. Organ level: the same with each (case, organ) as a unit, ranked
   by that organ's attention mL or mean entropy, since at this grid nearly every case has some organ failing.

The real scans are few (no case-level figures) and the networks never saw a real scan: they say how the heat
behaves under a domain shift, not how it does on a team's own trained model.

    python -m bench.attention [--steps 300 1200 --per-source 10 --test-per-source 8 --grid 40 --spacing 10]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

import bench.al_simulation as simulation  # noqa: E402
from amoslabel.dicom.series import read_series  # noqa: E402
from amoslabel.organs import ORGAN_BY_ID  # noqa: E402
from evaluation.error_detection import (  # noqa: E402
    failed_organs,
    organ_dice,
    random_recall,
    top_fraction_recall,
    voxel_detection,
)
from strategies.anatomy import learn  # noqa: E402
from strategies.attention import attention  # noqa: E402

REAL = {
    "ts_abdomen_ct": (SHARED_DATA / "ct" / "ts_abdomen_ct.nii.gz", SHARED_DATA / "ct" / "ts_abdomen_ct_label.nii.gz"),
    "ts_ct_series": (
        SHARED_DATA / "dicom" / "ts_ct_series_uncompressed",
        SHARED_DATA / "dicom" / "ts_ct_series_label.nii.gz",
    ),
    "ts_abdomen_mr_small (MRI)": (
        SHARED_DATA / "mr" / "ts_abdomen_mr_small.nii.gz",
        SHARED_DATA / "mr" / "ts_abdomen_mr_small_label.nii.gz",
    ),
}
HEATS = ("attention", "entropy")
BUDGETS = (0.1, 0.2)


def real_cases() -> List[simulation.Case]:
    """The real scans with full organ labels, on the simulation grid (the liver-only CHAOS label is left out: its
    other organs would count as errors)."""
    cases = []
    for name, (image, label) in REAL.items():
        scan = read_series(image) if image.is_dir() else sitk.ReadImage(str(image))
        cases.append(simulation.Case(name, scan, sitk.ReadImage(str(label))))
    return cases


def voxel_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per voxel, the predictive entropy (bits) of (C, z, y, x) probabilities."""
    p = np.clip(probabilities, 1e-8, 1.0)
    return -(p * np.log2(p)).sum(axis=0)


def measure_case(case: simulation.Case, models, prior: np.ndarray, anatomy) -> dict:
    """One case's pre-label, error map and heats, reduced to what the tables need."""
    sharp = models[0].probabilities(case, flips=True)
    prelabel = sharp.argmax(0)
    members = [m.probabilities(case) for m in models] + [prior]
    result = attention(members, case.label_image, anatomy, entropy_from=list(range(len(models))))
    entropy = voxel_entropy(sharp)
    error = prelabel != case.label
    body = case.image_array > -500
    voxel = {
        "attention": voxel_detection(result.heat, error, body),
        "entropy": voxel_detection(entropy, error, body),
    }
    foreground = prelabel > 0
    per_organ_entropy = {}
    for organ in organ_dice(prelabel, case.label):
        region = (prelabel == organ) | (sharp[organ] > 0.1)  # where the model has it in play: no peeking
        per_organ_entropy[organ] = float(entropy[region].mean()) if region.any() else 0.0
    return {
        "voxel": {h: vars(v) for h, v in voxel.items()},
        "failed": failed_organs(prelabel, case.label),
        "dice": organ_dice(prelabel, case.label),
        "score": {
            "attention": result.score_ml,
            "entropy": float(entropy[foreground].mean()) if foreground.any() else 0,
        },
        "organ_score": {
            "attention": {o: result.per_organ_ml.get(ORGAN_BY_ID[o].name, 0.0) for o in per_organ_entropy},
            "entropy": per_organ_entropy,
        },
    }


def case_level(measured: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """Recall of failing cases, and of failing (case, organ) units, in the top budgets per heat and at random."""
    failing = [c for c, m in measured.items() if m["failed"]]
    units = {(c, o): m for c, m in measured.items() for o in m["organ_score"]["attention"]}
    failing_units = [f"{c}/{o}" for (c, o), m in units.items() if o in m["failed"]]
    out: Dict[str, Dict[str, float]] = {}
    for heat in HEATS:
        cases = {c: m["score"][heat] for c, m in measured.items()}
        organs = {f"{c}/{o}": m["organ_score"][heat][o] for (c, o), m in units.items()}
        out[heat] = {
            **{f"cases top {b:.0%}": top_fraction_recall(cases, failing, b) for b in BUDGETS},
            **{f"organs top {b:.0%}": top_fraction_recall(organs, failing_units, b) for b in BUDGETS},
        }
    out["random"] = {
        **{f"cases top {b:.0%}": random_recall(len(measured), b) for b in BUDGETS},
        **{f"organs top {b:.0%}": random_recall(len(units), b) for b in BUDGETS},
    }
    out["counts"] = {
        "cases": len(measured),
        "failing cases": len(failing),
        "organ units": len(units),
        "failing organ units": len(failing_units),
    }
    return out


def summarise(measured: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """Per heat, the mean voxel AUROC and average precision over cases (and the mean error rate)."""
    out = {}
    for heat in HEATS:
        rows = [m["voxel"][heat] for m in measured.values()]
        out[heat] = {
            "auroc": float(np.nanmean([r["auroc"] for r in rows])),
            "average_precision": float(np.nanmean([r["average_precision"] for r in rows])),
            "error_rate": float(np.mean([r["error_voxels"] / r["body_voxels"] for r in rows])),
        }
    return out


def table(results: dict) -> str:
    lines = [
        "| set | model steps | heat | voxel AUROC | voxel AP | error rate | cases top 10 % | cases top 20 % | "
        "organs top 10 % | organs top 20 % |",
        "|---" * 10 + "|",
    ]
    for stage in results["stages"]:
        for name, part in stage["sets"].items():
            level = part.get("case_level", {})
            for heat in (*HEATS, "random"):
                v = part["voxel"].get(heat, {})
                recalls = level.get(heat, {})

                def cell(key: str, values=recalls) -> str:
                    return f"{values[key]:.2f}" if key in values else "-"

                lines.append(
                    f"| {name} | {stage['steps']} | {heat} | "
                    + " | ".join(f"{v[k]:.3f}" if k in v else "-" for k in ("auroc", "average_precision", "error_rate"))
                    + " | "
                    + " | ".join(
                        cell(k) for k in ("cases top 10%", "cases top 20%", "organs top 10%", "organs top 20%")
                    )
                    + " |"
                )
            if level:
                c = level["counts"]
                lines.append(
                    f"| {name} | {stage['steps']} | (counts) | | | | {c['failing cases']} of {c['cases']} cases fail "
                    f"| | {c['failing organ units']} of {c['organ units']} organs fail | |"
                )
            if "mdice" in part:
                lines.append(f"| {name} | {stage['steps']} | (pre-label mDice {part['mdice']:.3f}) | | | | | | | |")
    lines.append(
        "\nVoxel level: mean over cases, inside the body (> -500 HU); AP of a heat that knows nothing = the error "
        "rate. Case level: a case fails when an organ of its reference has Dice < 0.8; the share of failing cases "
        "among the top 10 % / 20 % by attention mL, mean foreground entropy, or at random (expected). Organ level: "
        "each (case, organ) a unit, ranked by that organ's attention mL or mean entropy."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1200], help="model stages (training steps)")
    parser.add_argument("--per-source", type=int, default=10, help="synthetic training volumes per real label map")
    parser.add_argument("--test-per-source", type=int, default=8, help="synthetic test volumes per real label map")
    parser.add_argument("--grid", type=int, default=simulation.GRID)
    parser.add_argument("--spacing", type=float, default=simulation.SPACING)
    parser.add_argument("--no-real", action="store_true", help="synthetic test cases only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "attention")
    args = parser.parse_args(argv)
    simulation.GRID, simulation.SPACING = args.grid, args.spacing
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train, held_out = simulation.make_cases(args.per_source, args.seed)
    test_pool, test_extra = simulation.make_cases(args.test_per_source, args.seed + 500)
    test = held_out + test_pool + test_extra  # other seeds: no test volume is a training volume
    sets = {"synthetic": test} | ({} if args.no_real else {"real": real_cases()})
    prior_cases = [c for cases in sets.values() for c in cases]
    prior = simulation.prior_members(train, prior_cases)
    anatomy = learn([(c.label_image, None) for c in train])
    models = [
        simulation.Learner(args.seed, (8, 16, 32)),
        simulation.Learner(args.seed + 7, (6, 12, 24)),
    ]
    results = {"settings": vars(args) | {"out": str(args.out)}, "stages": []}
    trained = 0
    for steps in sorted(args.steps):
        for m in tqdm(models, desc=f"training to {steps} steps", unit="model"):
            m.train(train, steps - trained)
        trained = steps
        stage = {"steps": steps, "sets": {}}
        for name, cases in sets.items():
            measured = {
                c.name: measure_case(c, models, prior[c.name], anatomy)
                for c in tqdm(cases, desc=f"{name} at {steps} steps", unit="case")
            }
            part = {
                "voxel": summarise(measured),
                "mdice": float(np.mean([np.mean(list(m["dice"].values())) for m in measured.values()])),
                "cases": measured,
            }
            if len(cases) >= 10:
                part["case_level"] = case_level(measured)
            stage["sets"][name] = part
        results["stages"].append(stage)
        print(table({"stages": [stage]}), flush=True)
    results["minutes"] = round((time.time() - started) / 60, 1)
    results["table"] = table(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "table.md").write_text(results["table"] + "\n")
    print(results["table"])
    print(f"{results['minutes']} min; results.json and table.md in {args.out}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    torch.set_num_threads(2)
    sys.exit(main())
