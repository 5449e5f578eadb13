"""Does the attention map point reviewers at the pre-label's errors? Error detection measured (``make
bench-attention``).

AbdomenAtlas's claim for its attention map, tested: the voxels it marks are where the pre-label is wrong. On
SYNTHETIC held-out volumes (made from the real label maps, :mod:`amoslabel.data.synthetic`) and on the REAL scans
with labels in ``../shared/data``:

1. Two small 3D UNets (the active-learning simulation's pre-labeler and its disagreement member) train on a
   synthetic pool; the table is made at each of ``--steps`` (a weak and a trained model).
2. Test volumes come from other seeds than any training volume; ``--unusual-share`` of them (a quarter) are unusual
   scans (organ contrast spread four times the usual, three times the noise), where pre-labels fail as they do on
   a team's odd scans. Each is pre-labelled by the first network; the error map is pre-label != reference.
3. Heats: the attention heat (:mod:`strategies.attention`: the two networks and the atlas prior, anatomy learned
   from the training labels, as the server scores) graded by the networks' doubt, its 15 saved levels, the bare
   count of criteria (the heat before grading), and plain predictive entropy (the first network, flip TTA).
4. Voxel level: AUROC and average precision inside the body (:mod:`evaluation.error_detection`). Case level: the
   share of failing cases (an organ of the reference with Dice < 0.8) in the top 10 % and 20 % by the server's
   attention mL, by the worst organ's mean graded heat (attention per organ), by mean foreground entropy, by the
   worst organ's mean entropy, and for a random order. Organ level: the same with each (case, organ) as a unit,
   ranked by that organ's attention mL, mean graded heat or mean entropy. At 10 mm the small organs (adrenal glands,
   esophagus) never reach 0.8, so under that plain definition every case fails and every ranking finds the budget's
   share; the table adds the same figures counting only the *segmentable* organs (median test Dice >= 0.8).

The real scans are few (no case-level figures) and the networks never saw a real scan: they say how the heat
behaves under a domain shift, not how it does on a team's own trained model.

    python -m bench.attention [--steps 300 1200 --per-source 10 --test-per-source 10 --unusual-share 0.25]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

import bench.al_simulation as simulation  # noqa: E402
from amoslabel.dicom.series import read_series  # noqa: E402
from amoslabel.data.synthetic import SyntheticParams, draw_params, synthesise  # noqa: E402
from amoslabel.organs import ORGAN_BY_ID, ORGANS  # noqa: E402
from evaluation.error_detection import (  # noqa: E402
    FAILURE_DICE,
    failed_organs,
    organ_dice,
    random_recall,
    top_fraction_recall,
    voxel_detection,
)
from strategies.anatomy import learn  # noqa: E402
from strategies.attention import attention  # noqa: E402
from strategies.clasp import IN_PLAY, class_entropies  # noqa: E402

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
# voxel heats: the graded attention (what ranks), its saved levels, the bare criteria count, and plain entropy
HEATS = ("attention", "attention levels", "criteria count", "entropy")
# case scores: the server's attention mL; the worst organ's mean graded heat over its region; the mean entropy over
# the predicted foreground; the worst organ's mean entropy. Organ units: the same per organ.
SCORES = ("attention mL", "attention per organ", "entropy", "entropy per organ")
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
    heats = {
        "attention": result.graded(),
        "attention levels": result.levels(),
        "criteria count": result.heat,
        "entropy": entropy,
    }
    voxel = {name: voxel_detection(heat, error, body) for name, heat in heats.items()}
    foreground = prelabel > 0
    graded = heats["attention"]
    # each organ's region as ClaSP's per-organ entropy takes it (the model's own regions: no peeking at the reference)
    in_play = {o.id: (prelabel == o.id) | (sharp[o.id] > IN_PLAY) for o in ORGANS}
    share = {o: float(graded[r].mean()) for o, r in in_play.items() if r.any()}
    doubt = class_entropies(sharp)
    units = organ_dice(prelabel, case.label)  # the reference's organs are the organ-level units
    return {
        "voxel": {h: vars(v) for h, v in voxel.items()},
        "failed": failed_organs(prelabel, case.label),
        "dice": units,
        "score": {
            "attention mL": result.score_ml,
            "attention per organ": max(share.values(), default=0.0),
            "entropy": float(entropy[foreground].mean()) if foreground.any() else 0.0,
            "entropy per organ": max(doubt.values(), default=0.0),
        },
        "organ_score": {
            "attention mL": {o: result.per_organ_ml.get(ORGAN_BY_ID[o].name, 0.0) for o in units},
            "attention per organ": {o: share.get(o, 0.0) for o in units},
            "entropy": {o: doubt.get(o, 0.0) for o in units},
            "entropy per organ": {o: doubt.get(o, 0.0) for o in units},
        },
    }


def segmentable_organs(measured: Dict[str, dict], threshold: float = FAILURE_DICE) -> List[int]:
    """The organs whose median Dice over the test cases reaches ``threshold``: those the model can segment at all
    (at 10 mm an adrenal gland never reaches 0.8, so under the plain definition every case fails)."""
    organs = {o for m in measured.values() for o in m["dice"]}
    return sorted(
        o for o in organs if np.median([m["dice"][o] for m in measured.values() if o in m["dice"]]) >= threshold
    )


def case_level(measured: Dict[str, dict], organs: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """Recall of failing cases, and of failing (case, organ) units, in the top budgets per heat and at random.

    Args:
        organs: the organs whose failure counts (default: every organ of the reference, the plain definition).
    """
    counted = (lambda o: True) if organs is None else (lambda o: o in set(organs))
    units = {(c, o): m for c, m in measured.items() for o in m["dice"] if counted(o)}
    failing_units = [f"{c}/{o}" for (c, o), m in units.items() if o in m["failed"]]
    failing = sorted({unit.split("/")[0] for unit in failing_units})
    out: Dict[str, Dict[str, float]] = {}
    for heat in SCORES:
        cases = {c: m["score"][heat] for c, m in measured.items()}
        scored = {f"{c}/{o}": m["organ_score"][heat][o] for (c, o), m in units.items()}
        out[heat] = {
            **{f"cases top {b:.0%}": top_fraction_recall(cases, failing, b) for b in BUDGETS},
            **{f"organs top {b:.0%}": top_fraction_recall(scored, failing_units, b) for b in BUDGETS},
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
        "organs": "all" if organs is None else ", ".join(ORGAN_BY_ID[o].name for o in organs) or "none",
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
    """Markdown: voxel-level detection per set, stage and heat; then case- and organ-level recall per failure
    definition."""
    voxel = ["| set | model steps | pre-label mDice | heat | voxel AUROC | voxel AP | error rate |", "|---" * 7 + "|"]
    level = [
        "| set | model steps | failures counted on | failing cases | heat | cases top 10 % | cases top 20 % | "
        "failing organs | organs top 10 % | organs top 20 % |",
        "|---" * 10 + "|",
    ]
    for stage in results["stages"]:
        for name, part in stage["sets"].items():
            for heat in HEATS:
                v = part["voxel"][heat]
                voxel.append(
                    f"| {name} | {stage['steps']} | {part['mdice']:.3f} | {heat} | {v['auroc']:.3f} | "
                    f"{v['average_precision']:.3f} | {v['error_rate']:.3f} |"
                )
            for definition, recalls in part.get("case_level", {}).items():
                c = recalls["counts"]
                for heat in (*SCORES, "random"):
                    r = recalls[heat]
                    level.append(
                        f"| {name} | {stage['steps']} | {definition}: {c['organs']} | {c['failing cases']} of "
                        f"{c['cases']} | {heat} | {r['cases top 10%']:.2f} | {r['cases top 20%']:.2f} | "
                        f"{c['failing organ units']} of {c['organ units']} | {r['organs top 10%']:.2f} | "
                        f"{r['organs top 20%']:.2f} |"
                    )
    notes = (
        "\nVoxel level: mean over cases, inside the body (> -500 HU); the AP of a heat that knows nothing is the error "
        "rate. Case level: a case fails when a counted organ of its reference has Dice < 0.8 in the pre-label; the "
        "share of failing cases among the top 10 % / 20 % by each score (attention mL: the server's case score; per "
        "organ: the worst organ's mean graded heat or mean entropy over its region; entropy: over the predicted "
        "foreground), or at random (expected). Organ level: each (case, counted organ) a unit, ranked by that organ's "
        "attention mL, mean graded heat or mean entropy. 'all': the plain definition; 'segmentable': only organs "
        "whose median Dice over the test cases reaches 0.8."
    )
    return "\n".join(voxel) + "\n\n" + "\n".join(level) + "\n" + notes


def unusual(params: SyntheticParams) -> SyntheticParams:
    """An unusual scan, as pre-labels fail on them: organ contrast spread four times the usual (another phase or
    no contrast) and three times the noise (low dose). Recorded in the case's parameters like any draw."""
    return replace(params, organ_hu_offsets=tuple(4 * v for v in params.organ_hu_offsets), noise_hu=3 * params.noise_hu)


def test_cases(per_source: int, seed: int, unusual_share: float) -> List[simulation.Case]:
    """Synthetic test volumes from seeds no training volume uses; ``unusual_share`` of them unusual scans."""
    rng = random.Random(seed)
    cases = []
    for s, (name, path) in enumerate(tqdm(simulation.SOURCES.items(), desc="test volumes", unit="source")):
        label = sitk.ReadImage(str(path))
        for i in range(per_source):
            params = draw_params(seed * 1000 + s * 100 + i, spacing_mm=simulation.SPACING)
            odd = rng.random() < unusual_share
            image, synthetic_label = synthesise(label, unusual(params) if odd else params)
            cases.append(simulation.Case(f"{name}_{i:02d}{'_unusual' if odd else ''}", image, synthetic_label))
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1200], help="model stages (training steps)")
    parser.add_argument("--per-source", type=int, default=10, help="synthetic training volumes per real label map")
    parser.add_argument("--test-per-source", type=int, default=10, help="synthetic test volumes per real label map")
    parser.add_argument("--unusual-share", type=float, default=0.25, help="test volumes made as unusual scans")
    parser.add_argument("--grid", type=int, default=simulation.GRID)
    parser.add_argument("--spacing", type=float, default=simulation.SPACING)
    parser.add_argument("--no-real", action="store_true", help="synthetic test cases only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "attention")
    args = parser.parse_args(argv)
    simulation.GRID, simulation.SPACING = args.grid, args.spacing
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train, _ = simulation.make_cases(args.per_source, args.seed)  # (its held-out volumes are not used here)
    test = test_cases(args.test_per_source, args.seed + 500, args.unusual_share)
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
                part["case_level"] = {
                    "all": case_level(measured),
                    "segmentable": case_level(measured, segmentable_organs(measured)),
                }
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
