"""Does the quality estimator find the organs that fail, and what would the pass policy save? (``make
bench-attention`` runs it after the attention bench.)

1. Two small 3D UNets train on a synthetic pool, as in :mod:`bench.attention`; the figures are made at each of
   ``--steps``.
2. **Cold start**: the estimator (:mod:`strategies.quality`) learns from simulated corrections: other synthetic
   volumes pre-labelled by the networks at every stage, each (case, organ) a unit that failed (Dice < 0.8 against
   its reference) or not. No test volume is among them.
3. **Held out**: ``--seeds`` test sets of new synthetic volumes (``--unusual-share`` of them unusual scans), and the
   real scans with labels in ``../shared/data``, each pre-labelled by the first network; per set:

   * organ-level AUROC of the predicted probability of failing;
   * the share of failing cases among the top 20 % of cases by expected failures (the sum over organs), against
     the attention score, per-organ entropy and random. Where half the cases fail, no ranking finds more than 40 %
     of them in 20 % of the cases (the table's *best possible*); so the same figure is also given at
     ``--failing-share`` (20 %) of failing cases, as a team's queue holds them, where a perfect ranking finds all:
     each set resampled (every passing case, failing cases drawn to the share, 200 draws);
   * the pass policy: organs with a predicted probability below a threshold need one approval; the threshold (one
     per model stage) is chosen on the estimator's own training units of that stage (out-of-fold) as the largest
     that lets at most ``--max-missed`` of the failing organs through, then applied to the held-out sets: organ
     reviews saved, and failing organs passed with one reader;
   * the same with the server's ``threshold: auto`` (:func:`review.pass_policy.choose_threshold`), chosen without
     labels from each held-out set's own predictions (every organ of its cases, as a team's open cases hold them);
   * and with ``threshold: auto`` once the team has a history (:func:`review.pass_policy.history_threshold`, the
     split-conformal rule): chosen on the other synthetic sets of the stage, labelled, as a team's finished cases
     are, and applied to this one (for the real scans: on every synthetic set); and the same as that history grows
     (:func:`history_growth`: each set with 1, 2, ... other sets as its history, the second table).

Failing counts only *segmentable* organs (median Dice >= 0.8 on the estimator's training units): at 10 mm the
adrenal glands never reach 0.8 and every case would fail. The curve (reviews saved against failures let through)
is plotted to ``docs/quality-pass-policy.png`` with ``--plot``.

    python -m bench.quality [--steps 300 1200 --seeds 5 --test-per-source 6 --fit-per-source 6]  (make: --seeds 10)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT  # noqa: E402

import bench.al_simulation as simulation  # noqa: E402
from bench.attention import real_cases, test_cases  # noqa: E402
from evaluation.error_detection import (  # noqa: E402
    FAILURE_DICE,
    best_recall,
    organ_dice,
    random_recall,
    recall_at_failing_share,
    top_fraction_recall,
)
from review import pass_policy  # noqa: E402
from strategies.anatomy import learn  # noqa: E402
from strategies.attention import attention  # noqa: E402
from strategies.clasp import class_entropies  # noqa: E402
from strategies.quality import ALL_FEATURES, OUTLINE, QualityEstimator, feature_vector, organ_features  # noqa: E402

FAILURE = FAILURE_DICE  # set from --failure-dice (tiny test settings never reach 0.8)
FAILING_SHARE = 0.2  # set from --failing-share
THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 3)


def measure(case: simulation.Case, models, prior: np.ndarray, anatomy) -> dict:
    """One case's units: per organ of its reference, the features, the Dice, and the baselines' scores."""
    sharp = models[0].probabilities(case, flips=True)
    prelabel = sharp.argmax(0)
    networks = [m.probabilities(case) for m in models]
    result = attention(networks + [prior], case.label_image, anatomy, entropy_from=list(range(len(networks))))
    dice = organ_dice(prelabel, case.label)
    features = organ_features(
        prelabel, networks, case.label_image, anatomy, prior, case.image, result.graded(), judge=list(dice)
    )
    entropy = class_entropies(sharp)
    return {
        "dice": dice,
        "features": {o: features[o] for o in dice},
        "attention_ml": result.score_ml,
        "entropy": {o: entropy.get(o, 0.0) for o in dice},
    }


def units(measured: Dict[str, dict], organs: Sequence[int]):
    """(names, feature rows, failed) over every (case, counted organ)."""
    names, rows, failed = [], [], []
    for case, m in measured.items():
        for organ in m["dice"]:
            if organ in organs:
                names.append((case, organ))
                rows.append(feature_vector(organ, m["features"][organ]))
                failed.append(m["dice"][organ] < FAILURE)
    return names, np.array(rows), np.array(failed, dtype=int)


def without_outline(rows: np.ndarray) -> np.ndarray:
    """The rows with the boundary-error features at 0: what the estimator had before them (the bench's peer)."""
    out = np.array(rows, dtype=np.float64, copy=True)
    if len(out):
        out[:, [ALL_FEATURES.index(name) for name in OUTLINE]] = 0.0
    return out


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else float("nan")


def policy_curve(p_fail: np.ndarray, failed: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> List[dict]:
    """Per threshold: the share of organ reviews passed with one reader, and of failing organs among them."""
    out = []
    for t in thresholds:
        passed = p_fail < t
        out.append(
            {
                "threshold": float(t),
                "saved": float(passed.mean()) if len(passed) else 0.0,
                "missed": float((passed & (failed == 1)).sum() / max(failed.sum(), 1)),
            }
        )
    return out


def choose_threshold(curve: List[dict], max_missed: float) -> float:
    """The largest threshold that lets at most ``max_missed`` of the failing organs through."""
    allowed = [row["threshold"] for row in curve if row["missed"] <= max_missed]
    return max(allowed) if allowed else 0.0


def evaluate(
    estimator: QualityEstimator,
    measured: Dict[str, dict],
    organs: Sequence[int],
    threshold: float,
    plain: QualityEstimator,
    max_missed: float,
    history: tuple,
) -> dict:
    """One held-out set's figures; ``plain`` is the estimator fitted without the outline features. The set is also
    the queue of ``threshold: auto`` (:func:`review.pass_policy.choose_threshold`): every organ of its cases.
    ``history``: (probabilities, failed) of other held-out units, labelled, for the history's threshold."""
    names, rows, failed = units(measured, organs)
    p_fail = estimator.probabilities(rows) if len(rows) else np.zeros(0)
    _, queue_rows, _ = units(measured, sorted({o for m in measured.values() for o in m["dice"]}))
    auto = pass_policy.choose_threshold(estimator.probabilities(queue_rows), max_missed)
    p_plain = plain.probabilities(without_outline(rows)) if len(rows) else np.zeros(0)
    by_case: Dict[str, Dict[int, float]] = {}
    for (case, organ), p in zip(names, p_fail):
        by_case.setdefault(case, {})[organ] = float(p)
    failing = sorted({case for (case, _), f in zip(names, failed) if f})
    case_scores = {
        "expected failures": {c: sum(by_case.get(c, {}).values()) for c in measured},
        "attention mL": {c: m["attention_ml"] for c, m in measured.items()},
        "entropy per organ": {c: max(m["entropy"].values(), default=0.0) for c, m in measured.items()},
    }
    out = {
        "cases": len(measured),
        "failing cases": len(failing),
        "organ units": len(names),
        "failing organs": int(failed.sum()),
        "organ auroc": auroc(p_fail, failed),
        "organ auroc (entropy)": auroc(np.array([measured[c]["entropy"][o] for c, o in names]), failed),
        "organ auroc (without outline)": auroc(p_plain, failed),
        "cases top 20%": {k: top_fraction_recall(v, failing, 0.2) for k, v in case_scores.items()},
        "best top 20%": best_recall(len(measured), len(failing), 0.2),
        # as a team's queue holds them: FAILING_SHARE of the cases fail, where a perfect ranking finds them all
        "cases top 20% at share": {
            k: recall_at_failing_share(v, failing, 0.2, FAILING_SHARE) for k, v in case_scores.items()
        },
        "random top 20%": random_recall(len(measured), 0.2),
        "curve": policy_curve(p_fail, failed),
    }
    at = next(row for row in out["curve"] if row["threshold"] == threshold)
    out["policy"] = {"threshold": threshold, "saved": at["saved"], "missed": at["missed"]}
    at = next(row for row in policy_curve(p_fail, failed, [auto]))
    out["auto"] = {"threshold": auto, "saved": at["saved"], "missed": at["missed"]}
    p_history, failed_history = history
    chosen = pass_policy.history_threshold(pass_policy.by_hundredth(p_history[failed_history == 1]), max_missed)
    at = policy_curve(p_fail, failed, [chosen])[0] if chosen is not None else {}
    out["history"] = {"threshold": chosen, "saved": at.get("saved"), "missed": at.get("missed")}
    out["history"] = {k: float("nan") if v is None else v for k, v in out["history"].items()}
    return out


def predicted(estimator: QualityEstimator, measured: Dict[str, dict], organs: Sequence[int]) -> tuple:
    """(the estimator's probabilities, failed) over the set's units: a history for :func:`evaluate`."""
    _, rows, failed = units(measured, organs)
    return (estimator.probabilities(rows) if len(rows) else np.zeros(0)), failed


def pooled(sets: Dict[str, tuple], leaving_out=None) -> tuple:
    """The units of every set but ``leaving_out``, as one history."""
    chosen = [v for k, v in sets.items() if k != leaving_out]
    if not chosen:  # one seed: no other set to be its history
        return np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate([p for p, _ in chosen]), np.concatenate([f for _, f in chosen])


def history_growth(histories: Dict[str, tuple], max_missed: float) -> List[dict]:
    """``threshold: auto`` from the history as a team's history grows: each synthetic set (its (probabilities,
    failed) in ``histories``) with the 1, 2, ... sets after it, in turn, as its history. Per size: the failing organs
    in the history, how many sets got no threshold (too few failing), and over those that did, the threshold, the
    reviews saved and the failing organs passed (per set, averaged; and pooled over the sets)."""
    names = list(histories)
    growth = []
    for size in range(1, len(names)):
        failing, chosen, saved, missed, passed_failing, all_failing = [], [], [], [], 0, 0
        for i, name in enumerate(names):
            others = [names[(i + j) % len(names)] for j in range(1, size + 1)]
            p_history = np.concatenate([histories[o][0] for o in others])
            failed_history = np.concatenate([histories[o][1] for o in others])
            failing.append(int(failed_history.sum()))
            t = pass_policy.history_threshold(pass_policy.by_hundredth(p_history[failed_history == 1]), max_missed)
            if t is None:
                continue
            p, failed = histories[name]
            at = policy_curve(p, failed, [t])[0]
            chosen.append(t)
            saved.append(at["saved"])
            missed.append(at["missed"])
            passed_failing += int(((p < t) & (failed == 1)).sum())
            all_failing += int(failed.sum())
        growth.append(
            {
                "other sets": size,
                "failing organs in the history": float(np.mean(failing)),
                "sets without a threshold": len(names) - len(chosen),
                "threshold": float(np.mean(chosen)) if chosen else float("nan"),
                "saved": float(np.mean(saved)) if saved else float("nan"),
                "missed": float(np.mean(missed)) if missed else float("nan"),
                "missed, pooled": passed_failing / all_failing if all_failing else float("nan"),
            }
        )
    return growth


def growth_table(results: dict) -> str:
    """The history's growth (:func:`history_growth`) per stage and definition, as a markdown table."""
    lines = [
        "| model steps | organs | history: other sets | failing organs in it | sets without a threshold | "
        "threshold | reviews saved | failing organs passed (mean; pooled) |",
        "|---" * 8 + "|",
    ]
    for stage in results["stages"]:
        for row in stage.get("history growth", []):
            lines.append(
                f"| {stage['steps']} | {stage['definition']} | {row['other sets']} | "
                f"{row['failing organs in the history']:.0f} | {row['sets without a threshold']} | "
                f"{row['threshold']:.2f} | {row['saved']:.1%} | {row['missed']:.1%}; {row['missed, pooled']:.1%} |"
            )
    return "\n".join(lines)


def segmentable(sets: Dict[str, Dict[str, dict]]) -> List[int]:
    """The organs whose median Dice over these cases reaches the failure threshold (at 10 mm the adrenal glands never
    do, and under the plain definition every case would fail)."""
    dice: Dict[int, List[float]] = {}
    for cases in sets.values():
        for m in cases.values():
            for organ, d in m["dice"].items():
                dice.setdefault(organ, []).append(d)
    return sorted(o for o, values in dice.items() if np.median(values) >= FAILURE)


def out_of_fold(rows: np.ndarray, failed: np.ndarray, folds: int = 5) -> np.ndarray:
    """Each training unit's probability from an estimator fitted without its fold (to choose the threshold)."""
    from sklearn.model_selection import StratifiedKFold

    p = np.zeros(len(rows))
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(rows, failed):
        p[held] = QualityEstimator.fit(rows[fit], failed[fit]).probabilities(rows[held])
    return p


def table(results: dict) -> str:
    lines = [
        "| set | model steps | cases (failing) | organs (failing) | organ AUROC | without outline | AUROC entropy | "
        "top 20 %: expected "
        "failures | attention mL | entropy per organ | random | best possible | top 20 % at "
        f"{FAILING_SHARE:.0%} failing: expected failures | attention mL | entropy per organ | reviews saved | "
        "failing organs passed | auto: threshold | reviews saved | failing organs passed | auto from history: "
        "threshold | reviews saved | failing organs passed |",
        "|---" * 23 + "|",
    ]
    for stage in results["stages"]:
        for name, part in stage["sets"].items():
            r, a = part["cases top 20%"], part["cases top 20% at share"]
            lines.append(
                f"| {name} | {stage['steps']} | {part['cases']} ({part['failing cases']}) | {part['organ units']} "
                f"({part['failing organs']}) | {part['organ auroc']:.3f} | "
                f"{part['organ auroc (without outline)']:.3f} | {part['organ auroc (entropy)']:.3f} | "
                f"{r['expected failures']:.2f} | {r['attention mL']:.2f} | {r['entropy per organ']:.2f} | "
                f"{part['random top 20%']:.2f} | {part['best top 20%']:.2f} | {a['expected failures']:.2f} | "
                f"{a['attention mL']:.2f} | {a['entropy per organ']:.2f} | {part['policy']['saved']:.1%} | "
                f"{part['policy']['missed']:.1%} | {part['auto']['threshold']:.2f} | {part['auto']['saved']:.1%} | "
                f"{part['auto']['missed']:.1%} | " + history_cells(part["history"]) + " |"
            )
    return "\n".join(lines)


def history_cells(history: dict) -> str:
    """The history's threshold and figures, or why there are none (too few failing organs in the history)."""
    if history["threshold"] != history["threshold"]:
        return "too few failing | - | -"
    return f"{history['threshold']:.2f} | {history['saved']:.1%} | {history['missed']:.1%}"


def summarise_seeds(parts: List[dict]) -> dict:
    """The synthetic test sets' figures as mean (and sd) over seeds."""

    def stat(values):
        values = [v for v in values if v == v]
        return float(np.mean(values)) if values else float("nan"), float(np.std(values)) if values else float("nan")

    out = {
        "cases": sum(p["cases"] for p in parts),
        "failing cases": sum(p["failing cases"] for p in parts),
        "organ units": sum(p["organ units"] for p in parts),
        "failing organs": sum(p["failing organs"] for p in parts),
        "random top 20%": stat([p["random top 20%"] for p in parts])[0],
    }
    for key in ("organ auroc", "organ auroc (entropy)", "organ auroc (without outline)"):
        out[key], out[f"{key} sd"] = stat([p[key] for p in parts])
    out["best top 20%"] = stat([p["best top 20%"] for p in parts])[0]
    for key in ("cases top 20%", "cases top 20% at share"):
        out[key] = {k: stat([p[key][k] for p in parts])[0] for k in parts[0][key]}
        out[f"{key} sd"] = {k: stat([p[key][k] for p in parts])[1] for k in parts[0][key]}
    for key in ("policy", "auto", "history"):
        out[key] = {k: stat([p[key][k] for p in parts])[0] for k in ("threshold", "saved", "missed")}
    out["curve"] = [
        {k: stat([p["curve"][i][k] for p in parts])[0] for k in ("threshold", "saved", "missed")}
        for i in range(len(parts[0]["curve"]))
    ]
    kept = ("organ auroc", "cases top 20%", "cases top 20% at share", "policy", "auto", "history")
    out["per seed"] = [{k: p[k] for k in kept} for p in parts]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in results["stages"]:
        for name, part in stage["sets"].items():
            curve = part["curve"]
            ax.plot(
                [100 * r["missed"] for r in curve],
                [100 * r["saved"] for r in curve],
                label=f"{name}, {stage['steps']} steps",
            )
    ax.axvline(2, color="grey", linestyle=":", label="2 % of failing organs")
    ax.set_xlabel("failing organs passed with one reader (%)")
    ax.set_ylabel("organ reviews passed with one reader (%)")
    ax.set_title("Pass policy: reviews saved against failures let through")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish_cold_start(studies: Path, estimator: QualityEstimator, learned: dict):
    """The cold start as the serving quality estimator of a studies folder's server."""
    from amoslabel.config import load_config
    from amoslabel.data.locations import working_folder
    from amoslabel.workspace import Workspace
    from models.versions import ModelStore
    from strategies.quality_history import QUALITY_MODEL, publish

    models_dir = Workspace(working_folder(str(studies), None)).models(load_config().storage.models_dir)
    meta = {"source": "cold start (bench.quality: simulated corrections)"} | {
        k: learned[k] for k in ("units", "failing", "threshold")
    }
    return publish(ModelStore(models_dir, QUALITY_MODEL), estimator, meta, True, "cold start")


def main(argv: Sequence[str] | None = None) -> int:
    global FAILURE, FAILING_SHARE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1200], help="model stages (training steps)")
    parser.add_argument("--per-source", type=int, default=10, help="synthetic training volumes per real label map")
    parser.add_argument("--fit-per-source", type=int, default=6, help="estimator cold-start volumes per map, per stage")
    parser.add_argument("--test-per-source", type=int, default=6, help="held-out volumes per map, per seed")
    parser.add_argument("--seeds", type=int, default=5, help="held-out synthetic test sets")
    parser.add_argument("--unusual-share", type=float, default=0.25, help="volumes made as unusual scans")
    parser.add_argument("--max-missed", type=float, default=0.02, help="failing organs the threshold may let through")
    parser.add_argument("--failure-dice", type=float, default=FAILURE_DICE, help="an organ below this Dice fails")
    parser.add_argument(
        "--failing-share",
        type=float,
        default=FAILING_SHARE,
        help="the share of failing cases the second top-20 %% figure is measured at (each set resampled to it)",
    )
    parser.add_argument("--grid", type=int, default=simulation.GRID)
    parser.add_argument("--spacing", type=float, default=simulation.SPACING)
    parser.add_argument("--no-real", action="store_true", help="synthetic test cases only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="where to draw the pass-policy curve (a .png)")
    parser.add_argument("--publish", type=Path, default=None, help="a studies folder: serve this cold start there")
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "quality")
    args = parser.parse_args(argv)
    simulation.GRID, simulation.SPACING = args.grid, args.spacing
    if not 0 < args.failing_share < 1:
        parser.error(f"--failing-share is a fraction between 0 and 1, not {args.failing_share}")
    FAILURE, FAILING_SHARE = args.failure_dice, args.failing_share
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train, _ = simulation.make_cases(args.per_source, args.seed)
    anatomy = learn([(c.label_image, None) for c in train])
    models = [simulation.Learner(args.seed, (8, 16, 32)), simulation.Learner(args.seed + 7, (6, 12, 24))]
    stages = sorted(args.steps)
    # the estimator's simulated corrections: new volumes (their own seeds) at every stage
    fit_sets = [test_cases(args.fit_per_source, args.seed + 300 + n, args.unusual_share) for n in range(len(stages))]
    held = {
        f"synthetic seed {n}": test_cases(args.test_per_source, args.seed + 600 + n, args.unusual_share)
        for n in range(args.seeds)
    }
    if not args.no_real:
        held["real"] = real_cases()
    every = [c for cases in fit_sets for c in cases] + [c for cases in held.values() for c in cases]
    prior = simulation.prior_members(train, every)
    measured: Dict[int, Dict[str, Dict[str, dict]]] = {}
    fit_measured: Dict[str, dict] = {}
    trained = 0
    for n, steps in enumerate(stages):
        for m in tqdm(models, desc=f"training to {steps} steps", unit="model"):
            m.train(train, steps - trained)
        trained = steps
        for c in tqdm(fit_sets[n], desc=f"simulated corrections at {steps} steps", unit="case"):
            fit_measured[f"{steps}/{c.name}"] = measure(c, models, prior[c.name], anatomy)
        measured[steps] = {
            name: {c.name: measure(c, models, prior[c.name], anatomy) for c in tqdm(cases, desc=name, unit="case")}
            for name, cases in held.items()
        }
    every_organ = sorted({o for m in fit_measured.values() for o in m["dice"]})
    # the estimator learns from every organ (its base rates too)
    fit_names, rows, failed = units(fit_measured, every_organ)
    estimator = QualityEstimator.fit(rows, failed)
    plain = QualityEstimator.fit(without_outline(rows), failed)
    # the pass policy's threshold per model stage, from that stage's units (out of fold), as a team sets it from its
    # current model's audited history: one pooled over the stages lets the trained stage's failures through
    oof = out_of_fold(rows, failed)
    stage_of = np.array([int(case.split("/", 1)[0]) for case, _ in fit_names])
    thresholds = {
        steps: choose_threshold(policy_curve(oof[stage_of == steps], failed[stage_of == steps]), args.max_missed)
        for steps in stages
    }
    threshold = thresholds[stages[-1]]
    results = {
        "settings": vars(args) | {"out": str(args.out), "plot": str(args.plot), "publish": str(args.publish)},
        "estimator": {
            "units": len(rows),
            "failing": int(failed.sum()),
            "threshold": threshold,
            "thresholds": thresholds,
            "largest": estimator.largest(8),
            "params": estimator.params(),
        },
        "stages": [],
        "units": [],
    }
    held_rows: List[List[float]] = []  # the held-out units' features, in results["units"] order
    for steps in stages:
        synthetic = {k: v for k, v in measured[steps].items() if k != "real"}
        counted = {"all": every_organ, "segmentable": segmentable(synthetic)}
        for definition, organs in counted.items():
            if not organs:
                continue
            # the team's history for each set: the other sets, labelled
            histories = {k: predicted(estimator, m, organs) for k, m in synthetic.items()}
            parts = [
                evaluate(estimator, m, organs, thresholds[steps], plain, args.max_missed, pooled(histories, k))
                for k, m in synthetic.items()
            ]
            sets = {f"synthetic, {definition} (mean of {len(parts)} seeds)": summarise_seeds(parts)}
            if "real" in measured[steps]:
                real = measured[steps]["real"]
                sets[f"real, {definition}"] = evaluate(
                    estimator, real, organs, thresholds[steps], plain, args.max_missed, pooled(histories)
                )
            results["stages"].append(
                {
                    "steps": steps,
                    "definition": definition,
                    "counted": organs,
                    "sets": sets,
                    "history growth": history_growth(histories, args.max_missed),
                }
            )
        for name, cases in measured[steps].items():
            names, unit_rows, _ = units(cases, every_organ)
            held_rows.extend(unit_rows.tolist())
            for (case, organ), p in zip(names, estimator.probabilities(unit_rows) if len(unit_rows) else []):
                results["units"].append([steps, name, case, organ, round(cases[case]["dice"][organ], 4), round(p, 4)])
    results["minutes"] = round((time.time() - started) / 60, 1)
    results["table"] = table(results)
    results["growth table"] = growth_table(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "table.md").write_text(results["table"] + "\n\n" + results["growth table"] + "\n")
    # every unit's features, to study other estimators without measuring again (columns: strategies.quality's)
    np.savez_compressed(
        args.out / "units.npz",
        features=np.array(ALL_FEATURES),
        fit_rows=rows,
        fit_failed=failed,
        fit_units=np.array([f"{case}/{organ}" for case, organ in fit_names]),
        held_rows=np.array(held_rows),
    )
    if args.plot:
        plot(results, args.plot)
    if args.publish:
        version = publish_cold_start(args.publish, estimator, results["estimator"])
        print(f"published {version.tag} in {version.path} (it serves: the cold start)")
    print(results["table"])
    print(results["growth table"])
    print(f"thresholds per stage {thresholds}; largest features {estimator.largest(6)}")
    print(f"{results['minutes']} min; results.json and table.md in {args.out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
