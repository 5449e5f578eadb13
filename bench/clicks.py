"""Clicks to a Dice goal (NoC@90) and the click round trip (``make bench-clicks``).

On SYNTHETIC volumes made from the real label maps (:mod:`amoslabel.data.synthetic`, the active-learning
simulation's cases at ``--spacing`` mm on a ``--grid``^3 grid) and on the REAL scans with labels in
``../shared/data``:

1. A segmentor (the simulation's small 3D UNet) trains ``--seg-steps`` on the synthetic pool. The click model is
   that network with MONAI DeepEdit's guidance channels, warm-started from it (:func:`models.click_network.warm_start`)
   and trained ``--click-steps`` more with DeepEdit's simulated clicks, by the same transforms and MONAI
   ``Interaction`` as the server's train task (:func:`models.click_train.simulated_clicks`).
2. Starts: the atlas prior's pre-label (an atlas of pool labels, placed on each scan as the server places it) and
   the segmentor's pre-label. Refiners: ``rules`` (the segmentor's network answers, the clicks act through
   :func:`models.click_merge.refine_organ`'s rules alone: the click model before any click training) and ``clicks``
   (the trained click model). Both run as the server does: :func:`models.click_region.organ_probability` on a region
   around the clicks, then :func:`~models.click_merge.refine_organ` on that probability.
3. The simulated annotator (:mod:`evaluation.clicks`) clicks at the centre of an organ's largest error region, one
   click a round, until Dice 0.90 or 20 clicks (NoC@90, a run that misses counts 20), per organ present in the
   reference, on validation volumes no model trained on and on the real scans. Per organ: the median NoC and the
   share that reached the goal; the headline is the median organ's NoC (goal: <= 5 on the synthetic set). With the
   trained click model also ``box + clicks``: the annotator first draws a box around the organ (its reference's
   extent and a voxel more, as Slicer's ROI; the server's :func:`models.click_merge.refine_in_box`), then clicks;
   the box counts as one interaction. And ``box + scribbles``: the box, then a scribble a round instead of a click
   (:func:`evaluation.clicks.next_scribble`: along the largest error's cross-section on its centre slice; its voxels
   act as clicks, as the server reads a scribble; the network sees them all as guidance, where the server gives it
   five per stroke: on this coarse grid a stroke is a few voxels). And ``box + lassos``: a lasso a round around that
   cross-section (:func:`evaluation.clicks.next_lasso`), every voxel inside acting as a click.
4. Minutes (assumptions, :mod:`evaluation.effort`, :data:`evaluation.clicks.T_CLICK_S`, ``T_BOX_S``,
   ``T_SCRIBBLE_S`` and ``T_LASSO_S``): voxel editing of the start against the interactions plus voxel editing of
   what they left; and *then brush*: an annotator who interacts until an interaction changes nothing they can see
   (Dice up by less than 0.01, :func:`evaluation.clicks.mixed_minutes`) and edits the rest by hand.
5. ``latency``: round trips through the real server (``monailabel.client``, a junior's token, each answer saved as
   a label version) on the real CHAOS CT series (512 x 512 x 78) and the real 3 mm CT, at the ``cpu-fast`` preset:
   p50 and p95 over ``--latency-clicks`` rounds of a click, a box, a scribble and a lasso (target: p95 <= 2 s on 2
   cores), and of the review API's undo and redo (target: p95 <= 300 ms); :mod:`bench.click_latency`.

    python -m bench.clicks [--parts synthetic,real,latency --seg-steps 1000 --click-steps 400 --cases 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT  # noqa: E402

import bench.al_simulation as simulation  # noqa: E402
from amoslabel.config import ClickSettings, load_config  # noqa: E402
from amoslabel.organs import ORGANS  # noqa: E402
from bench.attention import real_cases  # noqa: E402
from evaluation.clicks import (  # noqa: E402
    T_CLICK_S,
    T_LASSO_S,
    T_SCRIBBLE_S,
    Click,
    box_then_clicks,
    click_minutes,
    clicks_to_goal,
    mixed_minutes,
    next_lasso,
    next_scribble,
    one_click,
)
from evaluation.effort import correction_effort  # noqa: E402
from models.click_merge import click_box, refine_in_box, refine_organ  # noqa: E402
from models.click_network import build_click_network, warm_start  # noqa: E402
from models.click_request import BACKGROUND, ORGAN_NAMES  # noqa: E402
from models.click_region import organ_probability, region_around  # noqa: E402
from models.click_train import simulated_clicks, with_initial_clicks  # noqa: E402
from models.losses import build_loss  # noqa: E402

CHANNELS = (8, 16, 32, 64)
LOWER_GOAL = 0.85  # NoC@85 as well (Xu et al. 2016 report both), read off the same runs
STARTS = ("prior", "segmentor")
REFINERS = ("rules", "clicks")
PARTS = ("synthetic", "real", "latency")


class Refiner:
    """A click network answering as the server's click task does: on a region around the clicks, one organ."""

    def __init__(self, network: torch.nn.Module, case: simulation.Case, settings: ClickSettings):
        self.network = network.eval()
        self.case = case
        self.settings = settings
        self.spacing = (simulation.SPACING,) * 3
        self.device = str(next(network.parameters()).device)
        # the server's rule: at least one training patch of context (this network trained on the whole volume)
        self.patch_mm = [n * simulation.SPACING for n in case.label.shape]

    def __call__(self, label: np.ndarray, clicks: List[Click]) -> np.ndarray:
        organ = clicks[0].organ
        positives = [c.voxel for c in clicks if c.positive]
        negatives = [c.voxel for c in clicks if not c.positive]
        box = click_box([c.voxel for c in clicks], label.shape, self.settings.margin_mm, self.spacing)
        roi = region_around([box], label.shape, self.settings.context_mm, self.spacing, self.patch_mm)
        local = {
            ORGAN_NAMES[organ]: [_local(p, roi) for p in positives],
            BACKGROUND: [_local(p, roi) for p in negatives],
        }
        image = self.case.input[(slice(None),) + roi]
        probability = organ_probability(self.network, image, local, organ, (simulation.GRID,) * 3, self.device)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, roi))
        return refine_organ(label, organ, probability[inner], positives, negatives, box)


def _local(voxel, roi):
    return tuple(int(v) - r.start for v, r in zip(voxel, roi))


def click_network_from(segmentor: torch.nn.Module) -> torch.nn.Module:
    """A click network warm-started from ``segmentor``, on the segmentor's device."""
    network = build_click_network("dynunet", {"filters": list(CHANNELS), "norm": "instance"})
    warm_start(network, {k: v.cpu() for k, v in segmentor.state_dict().items()})
    return network.to(next(segmentor.parameters()).device)


def train_click_model(segmentor, pool: Sequence[simulation.Case], steps: int, seed: int, lr: float):
    """The segmentor warm-started into a click network and trained with MONAI DeepEdit's simulated clicks."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose
    from ignite.engine import Events
    from torch.utils.data import RandomSampler

    network = click_network_from(segmentor)
    items = [{"image": c.input, "label": c.label[None].astype(np.float32)} for c in pool]
    data = Dataset(items, Compose(with_initial_clicks(seed)))
    loader = DataLoader(data, batch_size=2, sampler=RandomSampler(data, replacement=True, num_samples=2 * steps))
    trainer = SupervisedTrainer(
        device=next(network.parameters()).device,
        max_epochs=1,
        epoch_length=steps,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5),
        loss_function=build_loss("dice_balanced_ce"),
        inferer=SimpleInferer(),
        iteration_update=simulated_clicks(ClickSettings()),
    )
    bar = tqdm(total=steps, desc="click model (simulated clicks)", unit="step")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: bar.update(1))
    trainer.run()
    bar.close()
    return network.eval()


#: The settings a trained network depends on: a saved pair is reused only when all of them match.
TRAINING_KEYS = ("grid", "spacing", "per_source", "seg_steps", "click_steps", "lr", "click_lr", "seed")


def trained_networks(args, pool: Sequence[simulation.Case]):
    """The segmentor and the click model, trained, or loaded from ``--networks`` where a pair trained with the same
    settings was saved (so that click rules can be compared without training again). Returns both networks and the
    seconds each took to train (those of the run that trained them)."""
    settings = {key: getattr(args, key) for key in TRAINING_KEYS}
    saved = args.networks / "networks.pt" if args.networks else None
    segmentor = simulation.Learner(args.seed, CHANNELS, args.lr)
    if saved and saved.exists():
        state = torch.load(saved, map_location="cpu", weights_only=True)
        if state["settings"] == settings:
            print(f"networks: loaded from {saved}")
            segmentor.network.load_state_dict(state["segmentor"])
            clicks = click_network_from(segmentor.network)
            clicks.load_state_dict(state["clicks"])
            return segmentor, clicks.eval(), state["seconds"][0], state["seconds"][1]
        print(f"networks: {saved} was trained with other settings; training again")
    started = time.time()
    for _ in tqdm(range(args.seg_steps // 50 or 1), desc=f"segmentor ({args.seg_steps} steps)", unit="x50 steps"):
        segmentor.train(pool, min(50, args.seg_steps))
    seg_s = time.time() - started
    started = time.time()
    clicks = train_click_model(segmentor.network, pool, args.click_steps, args.seed, args.click_lr)
    click_s = time.time() - started
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        state = {"settings": settings, "segmentor": segmentor.network.state_dict(), "clicks": clicks.state_dict()}
        torch.save({**state, "seconds": [seg_s, click_s]}, saved)
    return segmentor, clicks, seg_s, click_s


class BoxRefiner(Refiner):
    """A drawn box answered as the server's click task does: the network on a region around the box, with the box's
    centre as the organ's guidance, then :func:`models.click_merge.refine_in_box`."""

    def box(self, label: np.ndarray, organ: int, box) -> np.ndarray:
        roi = region_around([box], label.shape, self.settings.context_mm, self.spacing, self.patch_mm)
        centre = tuple((b.start + b.stop - 1) // 2 for b in box)
        image = self.case.input[(slice(None),) + roi]
        guidance = {ORGAN_NAMES[organ]: [_local(centre, roi)]}
        probability = organ_probability(self.network, image, guidance, organ, (simulation.GRID,) * 3, self.device)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, roi))
        return refine_in_box(label, organ, probability[inner], box)


def prior_prelabels(pool, cases, threshold: float) -> Dict[str, np.ndarray]:
    """The atlas prior's pre-label of each case: the most probable organ where it reaches ``threshold``."""
    labels = {}
    for name, probabilities in simulation.prior_members(pool, cases).items():
        organs = probabilities[1:]
        labels[name] = np.where(organs.max(axis=0) >= threshold, organs.argmax(axis=0) + 1, 0)
    return labels


def measure(
    cases,
    starts: Dict[str, Dict[str, np.ndarray]],
    refiners,
    goal: float,
    cap: int,
    desc: str,
    box_first: Sequence[str] = (),
    organs: Sequence[int] = (),
) -> dict:
    """Interactions to the goal per (start, refiner, case, organ), with the minutes by voxel editing and by clicks.
    For the refiners in ``box_first``, also a run that draws a box around the organ first (``START + box +
    REFINER``), and runs that then draw scribbles or lassos instead of clicks (``START + box + scribbles
    (REFINER)``, ``... lassos ...``). ``organs``: the organ ids measured (all of them when empty)."""
    measured = [o for o in ORGANS if not organs or o.id in organs]
    spacing = (simulation.SPACING,) * 3
    runs: Dict[str, List[dict]] = {}
    variants = [(name, network, False, one_click, T_CLICK_S) for name, network in refiners.items()]
    variants += [(f"box + {name}", refiners[name], True, one_click, T_CLICK_S) for name in box_first]
    for stroke, annotator, seconds in (("scribbles", next_scribble, T_SCRIBBLE_S), ("lassos", next_lasso, T_LASSO_S)):
        variants += [(f"box + {stroke} ({name})", refiners[name], True, annotator, seconds) for name in box_first]
    bar = tqdm(total=len(starts) * len(variants) * len(cases), desc=desc, unit="case")
    for start_name, labels in starts.items():
        for refiner_name, network, boxed, annotator, seconds in variants:
            key = f"{start_name} + {refiner_name}"
            runs[key] = []
            for case in cases:
                start = labels[case.name].astype(np.uint8)
                truth = case.label.astype(np.uint8)
                voxel = correction_effort(start, truth, spacing)
                refine = BoxRefiner(network, case, ClickSettings())
                for organ in measured:
                    if not (truth == organ.id).any():
                        continue
                    if boxed:
                        run = box_then_clicks(
                            start, truth, organ.id, refine.box, refine, goal, cap, spacing, annotator=annotator
                        )
                    else:
                        run = clicks_to_goal(start, truth, organ.id, refine, goal, cap, spacing)
                    left = correction_effort(run.final, truth, spacing, organs=[organ]).get(organ.id)
                    if run.at_stall is not None:
                        at_stall = correction_effort(run.at_stall, truth, spacing, organs=[organ]).get(organ.id)
                    else:
                        at_stall = left
                    runs[key].append(
                        {
                            "case": case.name,
                            "organ": organ.name,
                            "border_share": border_share(truth == organ.id),
                            "noc": run.noc(cap),
                            "noc_lower": run.clicks_to(LOWER_GOAL, cap),
                            "clicks": run.rounds,  # after the box; fewer than the cap: no error left to fix
                            "boxes": run.boxes,
                            "reached": run.reached_at is not None,
                            "dice": [round(d, 4) for d in run.dice],
                            "voxel_minutes": round(voxel[organ.id].minutes if organ.id in voxel else 0.0, 3),
                            "click_minutes": round(click_minutes(run, left.minutes if left else 0.0, seconds), 3),
                            "stalled_at": run.stalled_at,
                            "mixed_minutes": round(
                                mixed_minutes(run, at_stall.minutes if at_stall else 0.0, seconds), 3
                            ),
                        }
                    )
                bar.update(1)
    bar.close()
    return {key: {"runs": rows, **summary(rows)} for key, rows in runs.items()}


def border_share(organ: np.ndarray) -> float:
    """The share of an organ's voxels on its border (a face-neighbour outside it): the voxels whose label a scan at
    this spacing leaves most in doubt (partial volume), and which Dice 0.90 allows to be wrong only so often."""
    return round(float((organ & ~ndimage.binary_erosion(organ)).sum() / max(int(organ.sum()), 1)), 3)


def summary(rows: List[dict]) -> dict:
    """Per organ: median NoC and the share that reached the goal; the median organ's NoC; minutes in all."""
    organs = {}
    for organ in ORGANS:
        mine = [r for r in rows if r["organ"] == organ.name]
        if mine:
            organs[organ.name] = {
                "median_noc": float(statistics.median(r["noc"] for r in mine)),
                "median_noc_lower": float(statistics.median(r["noc_lower"] for r in mine)),
                "reached": round(sum(r["reached"] for r in mine) / len(mine), 3),
                "start_dice": round(float(np.mean([r["dice"][0] for r in mine])), 3),
                "border_share": round(float(np.mean([r["border_share"] for r in mine])), 3),
                "runs": len(mine),
            }
    return {
        "organs": organs,
        "median_organ_noc": _median_organ(organs, "median_noc"),
        "median_organ_noc_lower": _median_organ(organs, "median_noc_lower"),
        # mean organ Dice at the start, after 5 clicks and after the last (a run that reached the goal stopped there)
        "dice_start": _mean_dice(rows, 0),
        "dice_after_5": _mean_dice(rows, 5),
        "dice_last": _mean_dice(rows, None),
        "voxel_minutes": round(sum(r["voxel_minutes"] for r in rows), 1),
        "click_minutes": round(sum(r["click_minutes"] for r in rows), 1),
        "mixed_minutes": round(sum(r["mixed_minutes"] for r in rows), 1),
    }


def _mean_dice(rows: List[dict], clicks: int | None):
    if not rows:
        return None
    at = [r["dice"][-1 if clicks is None else min(clicks, len(r["dice"]) - 1)] for r in rows]
    return round(float(np.mean(at)), 3)


def _median_organ(organs: dict, key: str):
    return float(statistics.median(o[key] for o in organs.values())) if organs else None


def synthetic_and_real(args, parts: Sequence[str]) -> Dict[str, Any]:
    simulation.GRID, simulation.SPACING = args.grid, args.spacing
    torch.manual_seed(args.seed)
    pool, validation = simulation.make_cases(args.per_source, args.seed)
    validation = validation[: args.cases]
    segmentor, clicks, seg_s, click_s = trained_networks(args, pool)
    refiners = {"rules": click_network_from(segmentor.network).eval(), "clicks": clicks}
    refiners = {name: network for name, network in refiners.items() if name in args.refiners}
    threshold = load_config().prior.threshold
    out: Dict[str, Any] = {
        "training": {
            "pool": len(pool),
            "segmentor_steps": args.seg_steps,
            "segmentor_seconds": round(seg_s),
            "click_steps": args.click_steps,
            "click_seconds": round(click_s),
            "validation_mdice": round(simulation.validate(segmentor, validation), 4),
        }
    }
    sets = {"synthetic": validation, "real": real_cases() if "real" in parts else []}
    for name, cases in sets.items():
        if name not in parts or not cases:
            continue
        starts = {
            "prior": prior_prelabels(pool, cases, threshold),
            "segmentor": {c.name: segmentor.probabilities(c).argmax(0) for c in cases},
        }
        desc = f"NoC@{int(args.goal * 100)} {name}"
        box_first = [name for name in ("clicks",) if name in refiners]
        out[name] = measure(cases, starts, refiners, args.goal, args.cap, desc, box_first, args.organs or ())
    return out


def markdown(results: Dict[str, Any], goal: float, cap: int) -> str:
    lines = [f"# Clicks to Dice {goal:.2f} (NoC@{int(goal * 100)}, capped at {cap})", ""]
    if "training" in results:
        t = results["training"]
        lines += [
            f"Segmentor: {t['segmentor_steps']} steps ({t['segmentor_seconds']} s), validation mDice "
            f"{t['validation_mdice']}; click model: {t['click_steps']} steps with simulated clicks "
            f"({t['click_seconds']} s); pool {t['pool']} synthetic volumes.",
            "",
        ]
    for name in ("synthetic", "real"):
        if name not in results:
            continue
        lower = int(LOWER_GOAL * 100)
        lines += [f"## {name}", ""]
        lines += [
            f"| start + refiner | median organ NoC | median organ NoC@{lower} | mean Dice: start, 5 interactions, last "
            "| voxel-editing min | click min | then brush min |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for key, s in results[name].items():
            dice = f"{s['dice_start']}, {s['dice_after_5']}, {s['dice_last']}"
            lines.append(
                f"| {key} | {s['median_organ_noc']} | {s['median_organ_noc_lower']} | {dice} "
                f"| {s['voxel_minutes']} | {s['click_minutes']} | {s['mixed_minutes']} |"
            )
        header = "| organ | border share | " + " | ".join(results[name]) + " |"
        lines += ["", header, "|---" * (2 + len(results[name])) + "|"]
        for organ in ORGANS:
            cells, share = [], "-"
            for s in results[name].values():
                o = s["organs"].get(organ.name)
                cells.append(f"{o['median_noc']:g} ({o['reached']:.0%}, Dice {o['start_dice']})" if o else "-")
                share = f"{o['border_share']:.0%}" if o else share
            lines.append(f"| {organ.name} | {share} | " + " | ".join(cells) + " |")
        lines.append("")
    if "latency" in results:
        lines += ["## Round trips (real server, cpu-fast, 2 cores)", "", "| scan | size | kind | p50 s | p95 s | n |"]
        lines.append("|---|---|---|---|---|---|")
        for scan, r in results["latency"].items():
            for kind, t in r.items():
                if isinstance(t, dict):
                    lines.append(f"| {scan} | {r['size']} | {kind} | {t['p50_s']} | {t['p95_s']} | {t['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--grid", type=int, default=48, help="voxels per side of the synthetic grid")
    parser.add_argument("--spacing", type=float, default=8.0, help="mm per voxel of the synthetic grid")
    parser.add_argument("--per-source", type=int, default=8, help="synthetic volumes per real label map (2 held out)")
    parser.add_argument("--cases", type=int, default=6, help="synthetic validation volumes measured")
    parser.add_argument("--seg-steps", type=int, default=1000)
    parser.add_argument("--click-steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--click-lr", type=float, default=1e-3)
    parser.add_argument(
        "--refiners",
        type=lambda text: [r.strip() for r in text.split(",") if r.strip()],
        default=list(REFINERS),
        help=f"comma-separated, of {', '.join(REFINERS)} (the box runs go with clicks)",
    )
    parser.add_argument("--goal", type=float, default=0.9)
    parser.add_argument("--organs", type=int, nargs="+", default=None, help="organ ids measured (default: all 15)")
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--latency-clicks", type=int, default=20)
    parser.add_argument("--sam2", type=Path, default=None, help="latency: a SAM2 checkpoint, to time the sam2 engine")
    parser.add_argument("--sam2-image-size", type=int, default=1024, help="latency: SAM2's input size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "clicks")
    parser.add_argument(
        "--networks",
        type=Path,
        default=BENCH_OUTPUT / "clicks" / "networks",
        help="where the trained pair is saved and reused when trained with the same settings ('' for never)",
    )
    args = parser.parse_args(argv)
    args.networks = args.networks if str(args.networks) not in ("", ".") else None
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    if args.organs and not set(args.organs) <= {o.id for o in ORGANS}:
        parser.error(f"--organs: ids from 1 to {len(ORGANS)}, not {args.organs}")
    if not args.refiners or set(args.refiners) - set(REFINERS):
        parser.error(f"--refiners: of {', '.join(REFINERS)}")
    results: Dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if {"synthetic", "real"} & set(parts):
        results.update(synthetic_and_real(args, parts))
    if "latency" in parts:
        from bench.click_latency import measure_round_trips

        results["latency"] = measure_round_trips(
            args.latency_clicks, sam2=args.sam2, sam2_image_size=args.sam2_image_size
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results, args.goal, args.cap)
    (args.out / "table.md").write_text(table)
    print(table)
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
