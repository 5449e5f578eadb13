"""Does our selection beat random? An active-learning simulation on SYNTHETIC volumes made from real label maps.

Pool: ``--per-source`` synthetic CT-like volumes (:mod:`amoslabel.data.synthetic`: deformed real anatomy, organ HU,
noise) from each real label map below, at ``--spacing`` mm on a ``--grid``^3 grid (default 10 mm, 40^3); two per
source are held out for validation. Models that segment: a small 3D UNet reaches a full-pool validation mDice of
about 0.6-0.65 in 1,200-1,600 steps on this grid (2 CPU cores: about 0.2 s a step).

Round 0, shared by every strategy of a seed: the first model and the disagreement member (another seed and width)
train ``--first-steps`` on the same ``--start`` cases. Each round a strategy picks ``--k`` more, the simulated junior
"corrects" them by taking the true label, and its models are fine-tuned ``--steps`` more steps from where they were
(never retrained from scratch). After each round: validation mDice of the first model. Full-pool reference: the
first model trained on every pool case for as many steps as a strategy's model gets in all. Each seed draws its own
pool, start set and weights; ``--jobs`` runs seeds in parallel processes.

Strategies: random, foreground-aware random (the baseline), uncertainty (flip-TTA predictive entropy over the
predicted foreground), ClaSP-style class-stratified entropy with scheduled power noise (:mod:`strategies.clasp`),
attention (:mod:`strategies.attention`: the two models' disagreement, entropy, overlap, plus anatomical-prior
violations learned from the labelled cases), and attention + diversity (normalised attention plus the standardised
descriptor distance to the labelled set, picked greedily). As in the live scorer, the atlas prior
(:mod:`models.atlas_prior`, placed on each scan by :mod:`models.atlas_placement`) is the third disagreement member;
it is built once per seed from the start set rather than after every round.

Reported (:mod:`evaluation.learning_curves`): per strategy, the cases each seed needed to reach 90 % of its
full-pool mDice, their mean with a 95 % t-interval, and the paired difference and ratio against foreground-aware
random. Also per organ, the estimated correction minutes (:mod:`evaluation.effort`) and the mL the simulated junior
changed starting from the model's pre-label, against drawing from empty.

    python -m bench.al_simulation [--seeds 5 --rounds 5 --k 4 --first-steps 600 --steps 200 --jobs 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

from amoslabel.organs import NUM_CLASSES, ORGANS  # noqa: E402
from amoslabel.data.synthetic import draw_params, synthesise  # noqa: E402
from evaluation.learning_curves import cases_to_reach, compare  # noqa: E402
from evaluation.effort import EffortModel, OrganEffort, correction_effort, empty_effort  # noqa: E402
from models.losses import build_loss  # noqa: E402
from models.infer_task import resolve_device  # noqa: E402
from models.networks import build_network  # noqa: E402
from models.atlas_prior import build_atlas  # noqa: E402
from strategies.anatomy import learn  # noqa: E402
from strategies.attention import attention  # noqa: E402
from strategies.clasp import ClaspSelector, class_entropies, organ_case_counts  # noqa: E402
from strategies.diversity import diversity_scores  # noqa: E402
from strategies.members import prior_probabilities  # noqa: E402

SHARED = SHARED_DATA
SOURCES = {
    "amos_0013": SHARED / "labels" / "amos_0013_label.nii.gz",
    "amos_0024": SHARED / "labels" / "amos_0024_label.nii.gz",
    "ts_ct": SHARED / "ct" / "ts_abdomen_ct_label.nii.gz",
    "ts_mr": SHARED / "mr" / "ts_abdomen_mr_small_label.nii.gz",
    "ts_series": SHARED / "dicom" / "ts_ct_series_label.nii.gz",
}
GRID, SPACING = 40, 10.0  # set from the command line before any case is made
STRATEGIES = ("random", "foreground_random", "uncertainty", "clasp", "attention", "attention_diversity")
BASELINE = "foreground_random"  # the baseline nnActive found no method reliably beats; the paired comparisons use it


class Case:
    """One synthetic volume on the fixed grid: normalised image, label, and the SimpleITK label for the prior."""

    def __init__(self, name: str, image: sitk.Image, label: sitk.Image):
        self.name = name
        self.label_image = _fit(label, sitk.sitkNearestNeighbor, 0)
        self.image = _fit(image, sitk.sitkLinear, -1000)
        self.image_array = sitk.GetArrayFromImage(self.image).astype(np.float32)
        self.label = sitk.GetArrayFromImage(self.label_image).astype(np.int64)
        self.input = np.clip((self.image_array + 200) / 500, 0, 1)[None].astype(np.float32)
        self.foreground = float((self.image_array > -500).sum())
        body = self.image_array[self.image_array > -500]
        self.descriptor = [float(np.percentile(body, q)) for q in (5, 50, 95)] + [
            float(self.label.any(axis=(1, 2)).sum())
        ]


def _fit(image: sitk.Image, interpolator: int, default: float) -> sitk.Image:
    """``image`` on a GRID^3 grid of SPACING mm centred on the image's own centre (LPS)."""
    image = sitk.DICOMOrient(image, "LPS")
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    origin = [c - (GRID - 1) / 2 * SPACING for c in centre]
    return sitk.Resample(
        image, [GRID] * 3, sitk.Transform(), interpolator, origin, [SPACING] * 3, [1, 0, 0, 0, 1, 0, 0, 0, 1], default
    )


def make_cases(per_source: int, seed: int) -> Tuple[List[Case], List[Case]]:
    pool, validation = [], []
    for s, (name, path) in enumerate(tqdm(SOURCES.items(), desc="synthesising", unit="source")):
        label = sitk.ReadImage(str(path))
        for i in range(per_source):
            image, synth_label = synthesise(label, draw_params(seed * 1000 + s * 100 + i, spacing_mm=SPACING))
            case = Case(f"{name}_{i:02d}", image, synth_label)
            (validation if i < 2 else pool).append(case)
    return pool, validation


class Learner:
    """A small 3D UNet that keeps training as its labelled set grows."""

    def __init__(self, seed: int, channels: Sequence[int], lr: float = 3e-3):
        torch.manual_seed(seed)
        self.device = torch.device(resolve_device("auto"))  # a GPU when there is one
        self.network = build_network("dynunet", {"filters": list(channels), "norm": "instance"}).to(self.device)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=1e-5)
        self.loss = build_loss("dice_balanced_ce")
        self.rng = random.Random(seed)

    def train(self, cases: Sequence[Case], steps: int, batch: int = 2) -> None:
        self.network.train()
        for _ in range(steps):
            chosen = [self.rng.choice(cases) for _ in range(batch)]
            x = torch.as_tensor(np.stack([c.input for c in chosen])).to(self.device)
            y = torch.as_tensor(np.stack([c.label[None] for c in chosen])).to(self.device)
            if self.rng.random() < 0.5:
                x, y = torch.flip(x, (4,)), torch.flip(y, (4,))
            self.optimizer.zero_grad()
            loss = self.loss(self.network(x), y)
            loss.backward()
            self.optimizer.step()

    @torch.inference_mode()
    def probabilities(self, case: Case, flips: bool = False) -> np.ndarray:
        self.network.eval()
        x = torch.as_tensor(case.input[None]).to(self.device)
        p = torch.softmax(self.network(x), 1)
        if flips:
            p = (p + torch.flip(torch.softmax(self.network(torch.flip(x, (4,))), 1), (4,))) / 2
        return p[0].cpu().numpy()


def mean_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    scores = []
    for organ in ORGANS:
        a, b = prediction == organ.id, truth == organ.id
        if a.any() or b.any():
            scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def validate(learner: Learner, validation: Sequence[Case]) -> float:
    return float(np.mean([mean_dice(learner.probabilities(c).argmax(0), c.label) for c in validation]))


def entropy(probabilities: np.ndarray) -> float:
    foreground = probabilities.argmax(0) > 0
    if not foreground.any():
        return float(np.log2(NUM_CLASSES))
    p = np.clip(probabilities[:, foreground], 1e-8, 1)
    return float((-(p * np.log2(p)).sum(0)).mean())


def prior_members(start: Sequence[Case], cases: Sequence[Case]) -> Dict[str, np.ndarray]:
    """The atlas prior's probabilities for each case, from an atlas of the start set's labels."""
    atlas = build_atlas([(c.name, c.label_image) for c in start], spacing_mm=SPACING, smoothing_mm=SPACING)
    return {
        c.name: prior_probabilities(atlas, c.image, "CT", c.label_image)
        for c in tqdm(cases, desc="placing the atlas prior", unit="case")
    }


ATTENTION_STRATEGIES = ("attention", "attention_diversity")


def select(
    strategy: str,
    unlabelled: List[Case],
    labelled: List[Case],
    k: int,
    models,
    rng: random.Random,
    prior: Dict[str, np.ndarray],
) -> List[Case]:
    if strategy == "random":
        return rng.sample(unlabelled, k)
    if strategy == "foreground_random":
        chosen: List[Case] = []
        left = list(unlabelled)
        for _ in range(k):
            pick = rng.choices(left, weights=[c.foreground for c in left])[0]
            chosen.append(pick)
            left.remove(pick)
        return chosen
    if strategy == "uncertainty":
        return sorted(unlabelled, key=lambda c: -entropy(models[0].probabilities(c, flips=True)))[:k]
    if strategy == "clasp":
        entropies = {c.name: class_entropies(models[0].probabilities(c, flips=True)) for c in unlabelled}
        selection = ClaspSelector().select(
            entropies,
            k,
            labelled_fraction=len(labelled) / (len(labelled) + len(unlabelled)),
            labelled_cases=organ_case_counts([c.label for c in labelled]),
            offset=len(labelled),
            seed=rng.randrange(2**31),
        )
        by_name = {c.name: c for c in unlabelled}
        return [by_name[name] for name in selection.cases]
    anatomy = learn([(c.label_image, None) for c in labelled])
    score = {}
    for c in unlabelled:
        members = [m.probabilities(c) for m in models] + [prior[c.name]]
        result = attention(members, c.label_image, anatomy, entropy_from=list(range(len(models))))
        score[c.name] = result.score_ml
    if strategy == "attention":
        return sorted(unlabelled, key=lambda c: -score[c.name])[:k]
    chosen, known = [], list(labelled)  # attention + diversity, greedy
    top = max(score.values()) or 1.0
    for _ in range(k):
        left = [c for c in unlabelled if c not in chosen]
        distance = diversity_scores({c.name: c.descriptor for c in left + known}, [c.name for c in known])
        far = max(distance.values()) or 1.0
        pick = max(left, key=lambda c: score[c.name] / top + distance[c.name] / far)
        chosen.append(pick)
        known.append(pick)
    return chosen


EFFORT_MODELS = EffortModel.variants()
STARTS = ("from_prelabel", "from_empty")


def minutes_key(start: str, model: str) -> str:
    """The effort entry of the minutes from ``start`` under the effort model ``model`` (a name in EFFORT_MODELS)."""
    return f"{start}_min" if model == "stated" else f"{start}_min ({model})"


def zero_effort() -> Dict[str, Dict[str, float]]:
    keys = [f"{s}_ml" for s in STARTS] + [minutes_key(s, m) for s in STARTS for m in EFFORT_MODELS]
    return {o.name: dict.fromkeys(keys, 0.0) for o in ORGANS}


def effort(models, cases: Sequence[Case]) -> Dict[str, Dict[str, float]]:
    """Per organ, summed over ``cases``: the mL the junior changes and the estimated minutes it takes
    (:mod:`evaluation.effort`, under each of its model variants), from the first model's pre-label and from empty."""
    voxel_ml = SPACING**3 / 1000
    spacing = (SPACING,) * 3  # the label maps are (z, y, x) arrays on the isotropic grid
    out = zero_effort()
    for c in cases:
        prediction = models[0].probabilities(c).argmax(0)
        counts = {
            "from_prelabel": correction_effort(prediction, c.label, spacing),
            "from_empty": empty_effort(c.label, spacing),
        }
        for o in ORGANS:
            row = out[o.name]
            for start, per_organ in counts.items():
                organ = per_organ.get(o.id, OrganEffort())
                row[f"{start}_ml"] += organ.voxels * voxel_ml
                for name, model in EFFORT_MODELS.items():
                    row[minutes_key(start, name)] += model.minutes(organ)
    return out


def start_models(start: Sequence[Case], args, seed: int) -> List[Learner]:
    """Round 0, shared by every strategy of a seed: the first model and the disagreement member, trained
    ``--first-steps`` on the start set (each strategy then fine-tunes its own copies)."""
    models = [Learner(seed, (8, 16, 32), args.lr), Learner(seed + 7, (6, 12, 24), args.lr)]
    for m in tqdm(models, desc="round 0 (shared)", unit="model", leave=False):
        m.train(start, args.first_steps)
    return models


def run_strategy(strategy, pool, validation, start, args, seed, prior, round0) -> Tuple[List[Tuple[int, float]], dict]:
    """The learning curve [(labelled cases, validation mDice)] and the correction effort of one strategy."""
    rng = random.Random(seed)
    labelled = list(start)
    unlabelled = [c for c in pool if c not in labelled]
    models = copy.deepcopy(round0[: 2 if strategy in ATTENTION_STRATEGIES else 1])
    curve: List[Tuple[int, float]] = []
    total = zero_effort()
    for round_ in range(args.rounds + 1):
        if round_:
            for m in models:
                m.train(labelled, args.steps)
        curve.append((len(labelled), validate(models[0], validation)))
        if round_ == args.rounds or not unlabelled:
            break
        picked = select(strategy, unlabelled, labelled, min(args.k, len(unlabelled)), models, rng, prior)
        for organ, v in effort(models, picked).items():
            for key, amount in v.items():
                total[organ][key] += amount
        for c in picked:
            unlabelled.remove(c)
            labelled.append(c)
    return curve, total


def full_pool(pool, validation, args, seed) -> float:
    """The reference: the first model trained on the whole pool for as many steps as a strategy's model gets."""
    learner = Learner(seed, (8, 16, 32), args.lr)
    learner.train(pool, args.first_steps + args.steps * args.rounds)
    return validate(learner, validation)


def plot(curves: Dict[str, List[Tuple[int, float]]], reference: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, curve in curves.items():
        ax.plot([n for n, _ in curve], [d for _, d in curve], marker="o", label=name)
    ax.axhline(reference, color="grey", linestyle="--", label="full pool")
    ax.axhline(0.9 * reference, color="grey", linestyle=":", label="90% of full pool")
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("validation mDice")
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def mean_curves(seeds: Sequence[dict]) -> Dict[str, List[Tuple[int, float]]]:
    """Per strategy, the validation mDice at each labelled-set size averaged over seeds."""
    out = {}
    for strategy in seeds[0]["curves"]:
        points = zip(*(r["curves"][strategy] for r in seeds))
        out[strategy] = [(p[0][0], float(np.mean([d for _, d in p]))) for p in points]
    return out


def table(seeds: Sequence[dict]) -> str:
    """Markdown: the mean curve per strategy; the cases each seed needed to reach 90 % of its full-pool mDice, their
    mean with a 95 % interval, and the paired difference and ratio against foreground-aware random."""
    curves = mean_curves(seeds)
    sizes = [n for n, _ in next(iter(curves.values()))]
    strategies = list(curves)
    baseline = BASELINE if BASELINE in strategies else strategies[0]
    needed = {s: [r["cases_to_90pct"][s] for r in seeds] for s in strategies}
    compared = compare(needed, {s: [r["curves"][s] for r in seeds] for s in strategies}, baseline)
    lines = [
        "| strategy | "
        + " | ".join(str(n) for n in sizes)
        + f" | cases to 90 % (per seed) | mean [95 % CI] | minus {baseline} | over {baseline} |",
        "|---" * (len(sizes) + 5) + "|",
    ]
    for strategy, curve in curves.items():
        c = compared[strategy]
        censored = f", {c.censored} censored" if c.censored else ""
        lines.append(
            f"| {strategy} | "
            + " | ".join(f"{d:.3f}" for _, d in curve)
            + f" | {needed[strategy]} | {c.cases}{censored} | {c.difference} | {c.ratio} |"
        )
    full = [r["full_pool_mdice"] for r in seeds]
    lines.append(
        f"\nFull-pool mDice per seed: {', '.join(f'{v:.3f}' for v in full)} (mean {np.mean(full):.3f}). "
        "Cases to 90 %: the first labelled-set size whose validation mDice reaches 90 % of the seed's full-pool "
        "mDice; None: never within the run, counted as one round beyond the last (a lower bound) and marked "
        "censored. Intervals: Student's t over seeds; paired: each seed's strategy against its own baseline."
    )
    return "\n".join(lines)


def effort_table(seeds: Sequence[dict]) -> str:
    """Markdown: per organ, the estimated minutes and the litres the simulated junior changed over the picked cases,
    from the model's pre-label against from empty (mean over seeds and strategies), and a line naming the effort
    model with the all-organ ratio under each of its variants."""
    organs = [o.name for o in ORGANS]
    runs = [r["effort"][strategy] for r in seeds for strategy in r["effort"]]

    def mean(pick: Sequence[str], key: str) -> float:  # nan for a results.json from before the minutes
        return float(np.mean([sum(run[o].get(key, np.nan) for o in pick) for run in runs]))

    def ratio(pre: float, empty: float) -> str:
        return f"{pre / empty:.2f}" if empty > 0 else "n/a"

    lines = [
        "| organ | from pre-label (min) | from empty (min) | ratio | from pre-label (L) | from empty (L) |",
        "|---" * 6 + "|",
    ]
    for organ in organs + ["all organs"]:
        pick = organs if organ == "all organs" else [organ]
        pre, empty = mean(pick, "from_prelabel_min"), mean(pick, "from_empty_min")
        pre_l, empty_l = mean(pick, "from_prelabel_ml") / 1000, mean(pick, "from_empty_ml") / 1000
        lines.append(f"| {organ} | {pre:.1f} | {empty:.1f} | {ratio(pre, empty)} | {pre_l:.2f} | {empty_l:.2f} |")
    variants = ", ".join(
        f"{m} {ratio(mean(organs, minutes_key('from_prelabel', m)), mean(organs, minutes_key('from_empty', m)))}"
        for m in EFFORT_MODELS
    )
    stated = EffortModel()
    lines.append(
        f"\nMinutes: estimated correction time, evaluation/effort.py ({stated.t_slice_s:g} s per slice to edit, "
        f"{stated.draw_speed_mm_s:g} mm/s of contour wrong beyond the organ's NSD tolerance, {stated.t_piece_s:g} s "
        f"per piece to add or remove, {stated.t_check_s:g} s per slice only looked at; assumptions, not "
        f"measurements). All-organ ratio under its variants: {variants}."
    )
    return "\n".join(lines)


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    """One seed: its pool, the full-pool reference, and every strategy's curve and correction effort."""
    global GRID, SPACING
    GRID, SPACING = args.grid, args.spacing  # a spawned worker starts from the module's defaults
    torch.set_num_threads(args.threads)
    pool, validation = make_cases(args.per_source, seed)
    start = random.Random(seed).sample(pool, args.start)
    reference = full_pool(pool, validation, args, seed)
    print(f"seed {seed}: pool {len(pool)}, validation {len(validation)}, full-pool mDice {reference:.3f}", flush=True)
    needs_prior = any(s in ATTENTION_STRATEGIES for s in args.strategies)
    prior = prior_members(start, [c for c in pool if c not in start]) if needs_prior else {}
    round0 = start_models(start, args, seed)
    curves, efforts = {}, {}
    for strategy in tqdm(args.strategies, desc=f"seed {seed}", unit="strategy"):
        curves[strategy], efforts[strategy] = run_strategy(strategy, pool, validation, start, args, seed, prior, round0)
        print(f"  seed {seed} {strategy}: " + ", ".join(f"{n}:{d:.3f}" for n, d in curves[strategy]), flush=True)
    needed = {s: cases_to_reach(c, 0.9 * reference) for s, c in curves.items()}
    title = f"Active learning on synthetic volumes ({SPACING:g} mm), seed {seed}"
    plot(curves, reference, args.out / f"learning_curves_seed{seed}.png", title)
    result = {"seed": seed, "full_pool_mdice": reference, "curves": curves, "cases_to_90pct": needed, "effort": efforts}
    (args.out / f"seed{seed}.json").write_text(json.dumps(result, indent=1))  # kept if a later seed is interrupted
    return result


def load_seeds(path: Path) -> List[dict]:
    """The seeds of an earlier run: its results.json, or a folder's seedN.json files (an interrupted run's)."""
    if path.is_dir():
        return [json.loads(f.read_text()) for f in sorted(path.glob("seed*.json"), key=lambda f: int(f.stem[4:]))]
    return json.loads(path.read_text())["seeds"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-source", type=int, default=10, help="synthetic volumes per real label map (2 held out)")
    parser.add_argument("--start", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--first-steps", type=int, default=600, help="training steps on the start set (round 0)")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps after each round's picks")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--grid", type=int, default=GRID, help="voxels per side of the simulation grid")
    parser.add_argument("--spacing", type=float, default=SPACING, help="mm per voxel of the simulation grid")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, in separate processes")
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "al_simulation")
    parser.add_argument(
        "--report", type=Path, help="only print the tables of an earlier run (results.json, or a folder of seedN.json)"
    )
    args = parser.parse_args(argv)
    if args.report:
        seeds = load_seeds(args.report)
        print(table(seeds) + "\n\n" + effort_table(seeds))
        return 0
    if BASELINE not in args.strategies:
        args.strategies.insert(0, BASELINE)
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"settings": vars(args) | {"out": str(args.out)}, "seeds": []}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as workers:
            results["seeds"] = list(workers.map(run_seed, seeds, [args] * len(seeds)))
    else:
        results["seeds"] = [run_seed(seed, args) for seed in seeds]
    reference = float(np.mean([r["full_pool_mdice"] for r in results["seeds"]]))
    title = f"Active learning on synthetic volumes ({args.spacing:g} mm), mean of {args.seeds} seeds"
    plot(mean_curves(results["seeds"]), reference, args.out / "learning_curves.png", title)
    results["minutes"] = round((time.time() - started) / 60, 1)
    results["table"] = table(results["seeds"]) + "\n\n" + effort_table(results["seeds"])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(results["table"] + "\n")
    print(results["table"])
    print(f"{results['minutes']} min; results, table.md and plots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
