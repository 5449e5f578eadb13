"""One table of baseline models: each row trained and evaluated on the same dataset split, measured the same way.

Rows: the atlas prior; the course report's 2D models (per-position frequency prior, logistic regression on 3x3 and
5x5 patches, a fully connected network on downsampled slices, a 2D UNet with inverse-frequency-weighted
cross-entropy); and the 3D networks of the AMOS and AbdomenAtlas tables, trained and served by the app's own train
and infer tasks (UNet, VNet, SegResNet, UNETR, SwinUNETR), with parameters and GFLOPs at 1x1x128x128x128.

    python -m bench.baselines                      # synthetic split from the real AMOS label maps, every row
    python -m bench.baselines --dataset AMOS_DIR --models unet,atlas_prior --steps 2000 --preset full

The dataset is AMOS-layout: ``imagesTr``/``labelsTr`` train, ``imagesVa``/``labelsVa`` are scored. Without
``--dataset`` a SYNTHETIC split is made from the two real AMOS label maps in ../shared/data (train from amos_0024,
test from amos_0013, so no anatomy is shared): numbers on it are not AMOS numbers, and CPU presets on a few scans
are not AMOS settings. The point is that every row runs, on the same data, measured the same way.

Results: ``<out>/rows.json`` (a run replaces the rows it ran and keeps the others), ``<out>/table.md``, and per row
the evaluate report (CSV, tables, box plots) under ``<out>/reports/<row>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

from amoslabel.config import AppConfig, load_config  # noqa: E402
from amoslabel.data.datastore import AmosDatastore  # noqa: E402
from amoslabel.data.importer import import_source  # noqa: E402
from amoslabel.organs import ORGANS  # noqa: E402
from amoslabel.data.synthetic import write_split  # noqa: E402
from amoslabel.volume import read_label, strip_volume_suffix  # noqa: E402
from bench.course_models import COURSE_MODELS, predict_volume, to_slices, train_course_model  # noqa: E402
from evaluation.report import evaluate_folders, organ_means, summary, write_report  # noqa: E402
from models.atlas_placement import PriorSettings, label_with_prior  # noqa: E402
from models.atlas_prior import build_atlas  # noqa: E402
from models.infer_task import SegmentationInferTask  # noqa: E402
from models.networks import build_network, count_gflops, count_parameters  # noqa: E402
from models.preprocessing import (  # noqa: E402
    LoadVolumed,
    NormaliseIntensityd,
    ResampleToPland,
    ResolveModalityd,
    restore_label,
)
from models.train_task import SegmentationTrainTask  # noqa: E402
from models.versions import ModelStore  # noqa: E402

log = logging.getLogger("baselines")
SHARED = SHARED_DATA
NETWORKS_3D = ("unet", "vnet", "segresnet", "unetr", "swinunetr")
ALL_ROWS = ("atlas_prior", *COURSE_MODELS, *NETWORKS_3D)


@dataclass
class Row:
    """One model's line in the table."""

    model: str
    kind: str
    parameters: Optional[int] = None
    gflops: Optional[float] = None
    train_seconds: float = 0.0
    infer_seconds_per_case: float = 0.0
    mdice: float = float("nan")
    mnsd: float = float("nan")
    dice: Dict[str, float] = field(default_factory=dict)
    settings: Dict[str, object] = field(default_factory=dict)


@dataclass
class Split:
    """The dataset split and where each row writes its predictions."""

    dataset: Path
    work: Path
    config: AppConfig
    steps: int

    def cases(self, split: str) -> List[Path]:
        return sorted((self.dataset / f"images{split}").glob("*.nii*"))

    def label_of(self, image: Path, split: str) -> Path:
        return self.dataset / f"labels{split}" / image.name

    def prediction_dir(self, row: str) -> Path:
        folder = self.work / "predictions" / row
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def preprocessed(self, image: Path, label: Optional[Path]) -> Dict[str, object]:
        data = {"image": str(image), "case_id": strip_volume_suffix(image.name)}
        if label is not None:
            data["label"] = str(label)
        data = LoadVolumed(self.config.storage.max_image_voxels, with_label=label is not None)(data)
        data = ResolveModalityd()(data)
        data = NormaliseIntensityd({m: s.normalisation for m, s in self.config.modalities.items()})(data)
        return ResampleToPland(self.config.active.plans)(data)


def run_atlas_prior(split: Split, row: Row, out: Path) -> None:
    started = time.time()
    maps = [(p.name, read_label(split.label_of(p, "Tr"))) for p in split.cases("Tr")]
    atlas = build_atlas(maps, split.config.prior.spacing_mm, split.config.prior.smoothing_mm)
    row.train_seconds = time.time() - started
    started = time.time()
    for image_path in split.cases("Va"):
        image = sitk.ReadImage(str(image_path))
        modality = ResolveModalityd()({"image": image, "image_path": str(image_path)})["modality"]
        label, _ = label_with_prior(atlas, image, modality, PriorSettings(threshold=split.config.prior.threshold))
        sitk.WriteImage(label, str(out / image_path.name))
    row.infer_seconds_per_case = (time.time() - started) / max(len(split.cases("Va")), 1)
    row.settings = {"atlas_maps": len(maps), "threshold": split.config.prior.threshold}


def run_course_model(name: str) -> Callable[[Split, Row, Path], None]:
    def run(split: Split, row: Row, out: Path) -> None:
        images, labels = [], []
        for image_path in split.cases("Tr"):
            data = split.preprocessed(image_path, split.label_of(image_path, "Tr"))
            x, y = to_slices(data["image"], data["label"])
            images.append(x)
            labels.append(y)
        model, row.train_seconds = train_course_model(COURSE_MODELS[name], images, labels, split.steps)
        row.parameters = count_parameters(model)
        started = time.time()
        for image_path in split.cases("Va"):
            data = split.preprocessed(image_path, None)
            label = restore_label(predict_volume(model, data["image"]), data["grid"], data["image_geometry"])
            sitk.WriteImage(label, str(out / image_path.name))
        row.infer_seconds_per_case = (time.time() - started) / max(len(split.cases("Va")), 1)
        row.settings = {"steps": split.steps if name != "frequency_prior" else 0, "slice_size": x.shape[-1]}

    return run


def run_network(name: str) -> Callable[[Split, Row, Path], None]:
    def run(split: Split, row: Row, out: Path) -> None:
        config = split.config.model_copy(update={"models": [name]})
        spec = config.active.networks[name]
        network = build_network(spec.network, spec.params)
        row.parameters = count_parameters(network)
        # a fixed-size network (UNETR) is counted at 128^3 as AMOS Table 4 does, with its input size set to it
        sized = {**spec.params, "img_size": [128, 128, 128]} if "img_size" in spec.params else spec.params
        row.gflops = round(count_gflops(build_network(spec.network, sized)), 1)
        studies = split.work / "studies"
        if not studies.exists():
            _import_training_split(split, studies)
        datastore = AmosDatastore(str(studies), config.storage.max_image_voxels, 2**31)
        store = ModelStore(split.work / "models", name)
        shutil.rmtree(store.root, ignore_errors=True)
        iterations = min(25, split.steps)
        epochs = max(1, split.steps // iterations)
        started = time.time()
        SegmentationTrainTask(name, config, store, str(studies))(
            {
                "model": name,
                "max_epochs": epochs,
                "iterations_per_epoch": iterations,
                "val_interval": epochs,
                "multi_gpu": False,
            },
            datastore,
        )
        row.train_seconds = time.time() - started
        infer = SegmentationInferTask(name, config, store)
        started = time.time()
        for image_path in split.cases("Va"):
            label_file, _ = infer({"image": str(image_path), "case_id": strip_volume_suffix(image_path.name)})
            shutil.move(label_file, out / image_path.name)
        row.infer_seconds_per_case = (time.time() - started) / max(len(split.cases("Va")), 1)
        row.settings = {"steps": epochs * iterations, "preset": config.preset, "network": spec.network}

    return run


def _import_training_split(split: Split, studies: Path) -> None:
    # only the training split goes into the studies folder: the train task must never see a test case
    staging = split.work / "train-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for image in split.cases("Tr"):
        case = strip_volume_suffix(image.name)
        (staging / f"{case}.nii.gz").symlink_to(image.resolve())
        (staging / f"{case}_label.nii.gz").symlink_to(split.label_of(image, "Tr").resolve())
    import_source(staging, studies, link_images=True, progress=False)


RUNNERS: Dict[str, Callable[[Split, Row, Path], None]] = {
    "atlas_prior": run_atlas_prior,
    **{name: run_course_model(name) for name in COURSE_MODELS},
    **{name: run_network(name) for name in NETWORKS_3D},
}
KINDS = {"atlas_prior": "3D prior", **{n: "2D" for n in COURSE_MODELS}, **{n: "3D" for n in NETWORKS_3D}}


def run_row(name: str, split: Split) -> Row:
    row = Row(name, KINDS[name])
    out = split.prediction_dir(name)
    log.info("row %s: training and predicting", name)
    RUNNERS[name](split, row, out)
    evaluation = evaluate_folders(out, split.dataset / "labelsVa", name=name, progress=False)
    write_report(evaluation, split.work / "reports" / name)
    row.mdice, row.mnsd = summary(evaluation)
    row.dice = {k: round(v, 4) for k, v in organ_means(evaluation.scored, "dice").items() if v == v}
    return row


def table(rows: Dict[str, dict], note: str) -> str:
    """The markdown table, rows in the order of ALL_ROWS."""
    head = (
        "| model | kind | params (M) | GFLOPs @128³ | train s | infer s/case | mDice | mNSD | "
        + " | ".join(o.code for o in ORGANS)
        + " |\n|---|---|---:|---:|---:|---:|---:|---:|"
        + "---:|" * len(ORGANS)
    )
    lines = [head]
    for name in [n for n in ALL_ROWS if n in rows] + [n for n in rows if n not in ALL_ROWS]:
        r = rows[name]
        params = f"{r['parameters'] / 1e6:.3f}" if r.get("parameters") else "-"
        gflops = f"{r['gflops']:.1f}" if r.get("gflops") else "-"
        organs = [f"{100 * r['dice'][o.name]:.1f}" if o.name in r["dice"] else "-" for o in ORGANS]
        lines.append(
            f"| {name} | {r['kind']} | {params} | {gflops} | {r['train_seconds']:.0f} | "
            f"{r['infer_seconds_per_case']:.1f} | {100 * r['mdice']:.1f} | {100 * r['mnsd']:.1f} | "
            + " | ".join(organs)
            + " |"
        )
    return note + "\n\n" + "\n".join(lines) + "\n"


def default_dataset(work: Path, train_cases: int, test_cases: int, spacing_mm: float = 3.0) -> Path:
    dataset = work / "synthetic-split"
    if not (dataset / "dataset.json").is_file():
        sources = {
            "amos_0024": SHARED / "labels" / "amos_0024_label.nii.gz",
            "amos_0013": SHARED / "labels" / "amos_0013_label.nii.gz",
        }
        write_split(
            sources,
            dataset,
            ["amos_0024"],
            ["amos_0013"],
            {"amos_0024": train_cases, "amos_0013": test_cases},
            spacing_mm,
        )
    return dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=None, help="AMOS-layout split (default: synthetic)")
    parser.add_argument("--models", default=",".join(ALL_ROWS), help=f"rows to run, of {', '.join(ALL_ROWS)}")
    parser.add_argument("--steps", type=int, default=300, help="training steps per trained row")
    parser.add_argument("--preset", default="cpu-fast", help="apps.yaml preset for the 3D networks")
    parser.add_argument("--config", type=Path, default=None, help="the apps.yaml to read (default: the repository's)")
    parser.add_argument("--spacing", type=float, default=3.0, help="mm per voxel of the synthetic split")
    parser.add_argument("--train-cases", type=int, default=6, help="synthetic training cases")
    parser.add_argument("--test-cases", type=int, default=2, help="synthetic test cases")
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "baselines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(ALL_ROWS)}")
    torch.manual_seed(0)
    np.random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or default_dataset(args.out, args.train_cases, args.test_cases, args.spacing)
    split = Split(dataset, args.out, load_config(args.config, overrides={"preset": args.preset}), args.steps)
    if not split.cases("Tr") or not split.cases("Va"):
        parser.error(f"{dataset} needs imagesTr/labelsTr and imagesVa/labelsVa")
    rows_file = args.out / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    for name in names:
        row = run_row(name, split)
        rows[name] = asdict(row)
        rows_file.write_text(json.dumps(rows, indent=2))
        print(f"{name:16s} mDice {100 * row.mdice:5.1f}  mNSD {100 * row.mnsd:5.1f}  train {row.train_seconds:.0f} s")
    synthetic = args.dataset is None
    note = (
        f"Dataset: {'SYNTHETIC split from real AMOS label maps (not real scans)' if synthetic else dataset}; "
        f"{len(split.cases('Tr'))} training and {len(split.cases('Va'))} test cases; {args.steps} training steps per "
        f"trained row; 3D networks with the {args.preset} preset; {torch.get_num_threads()} CPU threads. "
        "CPU presets on a few scans are not AMOS numbers: the table shows that every row runs and is measured alike."
    )
    (args.out / "table.md").write_text(table(rows, note))
    print(f"\ntable: {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
