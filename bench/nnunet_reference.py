"""Train the reference nnU-Net v2 model that the effort benchmark imports, with nnU-Net's own commands, on CPU.

It is **not TotalSegmentator** and not trained on real images: a synthetic split made from the two real AMOS label
maps (``amoslabel.data.synthetic``, the same code as ``python -m amoslabel synth``), planned and preprocessed by
``nnUNetv2_plan_and_preprocess``, trained by ``nnUNetv2_train`` on the CPU. What it stands for is the workflow a team
follows with its own nnU-Net model: a result folder that ``python -m amoslabel models import --format nnunetv2``
takes as it is. The real CT it is scored on never feeds it (its label map is not a source).

nnU-Net's default plan for these volumes (a 30 M-parameter network, 250 iterations per epoch) takes hours per epoch
on 2 cores, so the plan gets one more configuration, ``3d_cpu``: nnU-Net's documented way (a configuration in
``nnUNetPlans.json`` that inherits from ``3d_fullres``), with a smaller patch and half the features per stage. The
preprocessed data are shared with ``3d_fullres``.

    python -m bench.nnunet_reference [--epochs 10] [--per-map 12] [--spacing 4]     # about an hour on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.organs import ORGANS  # noqa: E402
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402

log = logging.getLogger("bench.nnunet_reference")

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID}_AMOSLabelSynthetic"
#: the label maps the synthetic cases are made from; the real CT's own label map is never one of them
SOURCES = ("amos_0013_label", "amos_0024_label")
CONFIGURATION = "3d_cpu"
#: shipped nnU-Net trainer variants, by epoch count (a custom trainer class would have to be installed wherever the
#: model is served: nnU-Net's predictor finds the trainer by name inside its own package)
TRAINERS = {
    1: "nnUNetTrainer_1epoch",
    5: "nnUNetTrainer_5epochs",
    10: "nnUNetTrainer_10epochs",
    20: "nnUNetTrainer_20epochs",
    50: "nnUNetTrainer_50epochs",
}


def nnunet_class_names() -> dict:
    """nnU-Net's label table for the AMOS ids: names without spaces, as nnU-Net and TotalSegmentator write them."""
    return {"background": 0, **{o.name.replace(" ", "_").replace("/", "_"): o.id for o in ORGANS}}


def write_raw_dataset(synth: Path, raw: Path) -> int:
    """nnU-Net's raw layout (``imagesTr/<case>_0000.nii.gz``, ``labelsTr``, ``dataset.json``), files linked."""
    folder = raw / DATASET_NAME
    spec = json.loads((synth / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for entry in spec["training"]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        for target, source in (
            (folder / "imagesTr" / f"{case}_0000.nii.gz", synth / entry["image"]),
            (folder / "labelsTr" / f"{case}.nii.gz", synth / entry["label"]),
        ):
            if not target.exists():
                target.symlink_to(source.resolve())
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "name": "AMOS Label synthetic (NOT real scans, NOT TotalSegmentator)",
                "channel_names": {"0": "CT"},
                "labels": nnunet_class_names(),
                "numTraining": len(spec["training"]),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    return len(spec["training"])


def add_cpu_configuration(plans_file: Path, patch: int, max_stages: int = 5, feature_divisor: int = 2) -> None:
    """A ``3d_cpu`` configuration inheriting ``3d_fullres``: a smaller patch, fewer features, the same data."""
    plans = json.loads(plans_file.read_text())
    full = plans["configurations"]["3d_fullres"]
    arch = json.loads(json.dumps(full["architecture"]))
    kwargs = arch["arch_kwargs"]
    stages = min(kwargs["n_stages"], max_stages)
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_conv_per_stage_decoder"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = kwargs[key][: stages if key != "n_conv_per_stage_decoder" else stages - 1]
    kwargs["n_stages"] = stages
    kwargs["features_per_stage"] = [max(f // feature_divisor, 4) for f in kwargs["features_per_stage"]]
    plans["configurations"][CONFIGURATION] = {
        "inherits_from": "3d_fullres",
        "patch_size": [patch] * 3,
        "batch_size": 2,
        "architecture": arch,
    }
    plans_file.write_text(json.dumps(plans, indent=2))


def run(command, env) -> None:
    log.info("$ %s", " ".join(command))
    subprocess.run(command, env=env, check=True)


def nnunet_env(work: Path) -> dict:
    """nnU-Net's folders under ``work``; one augmentation worker (2 cores); no torch.compile on a CPU."""
    return dict(
        os.environ,
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "preprocessed"),
        nnUNet_results=str(work / "results"),
        nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "1"),
        nnUNet_compile="false",
    )


def train_reference(
    work: Path,
    epochs: int,
    per_map: int,
    spacing: float,
    patch: int,
    fold: str = "0",
    max_stages: int = 5,
    feature_divisor: int = 2,
    iterations: int = 0,
) -> Path:
    """Synthesise, plan, preprocess and train with nnU-Net's commands; returns the result folder.

    ``iterations`` > 0 (tests): nnU-Net's trainer for that many iterations per epoch, without its final validation.
    """
    from amoslabel.data.synthetic import write_split

    work = work.resolve()
    env = nnunet_env(work)
    bin_dir = Path(sys.executable).parent
    synth = work / "synthetic"
    if not (synth / "dataset.json").is_file():
        sources = {name: SHARED_DATA / "labels" / f"{name}.nii.gz" for name in SOURCES}
        write_split(sources, synth, list(SOURCES), [], {n: per_map for n in SOURCES}, spacing, seed=7)
    cases = write_raw_dataset(synth, work / "raw")
    log.info("%d synthetic training cases in nnU-Net's raw layout", cases)
    plans_file = work / "preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    if not plans_file.is_file():
        command = [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres"]
        # two processes for the fingerprint and the preprocessing (nnU-Net's fingerprint default is 8, each a spawned
        # Python that imports torch: on 2 cores, 6 of them only cost their start)
        run(command + ["-np", "2", "-npfp", "2", "--verify_dataset_integrity"], env)
    add_cpu_configuration(plans_file, patch, max_stages, feature_divisor)
    trainer = TRAINERS[epochs]
    if iterations:
        run([sys.executable, "-c", _FEW_ITERATIONS.format(fold=fold, trainer=trainer, iterations=iterations)], env)
    else:
        command = [str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, fold, "-tr", trainer]
        run(command + ["-device", "cpu"], env)
    return work / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__{CONFIGURATION}"


# nnU-Net's own trainer, as nnUNetv2_train builds it, for a few iterations and without the final validation: for tests
_FEW_ITERATIONS = """
import torch
from nnunetv2.run.run_training import get_trainer_from_args
cpu = torch.device("cpu")
trainer = get_trainer_from_args("{DATASET_ID}", "{CONFIGURATION}", "{{fold}}", "{{trainer}}", device=cpu)
trainer.num_iterations_per_epoch = {{iterations}}
trainer.num_val_iterations_per_epoch = 1
trainer.run_training()
""".format(DATASET_ID=DATASET_ID, CONFIGURATION=CONFIGURATION)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, choices=sorted(TRAINERS))
    parser.add_argument("--per-map", type=int, default=12, help="synthetic cases made from each real label map")
    parser.add_argument("--spacing", type=float, default=4.0, help="voxel size of the synthetic cases, mm")
    parser.add_argument("--patch", type=int, default=64, help="patch edge of the 3d_cpu configuration, voxels")
    parser.add_argument("--work", type=Path, default=BENCH_OUTPUT / "nnunet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    result = train_reference(args.work, args.epochs, args.per_map, args.spacing, args.patch)
    summary = result / "fold_0" / "validation" / "summary.json"
    figures = {
        "result_folder": str(result),
        "epochs": args.epochs,
        "configuration": CONFIGURATION,
        "wall_s": round(time.monotonic() - started),
    }
    if summary.is_file():
        figures["synthetic_validation_mean_dice"] = json.loads(summary.read_text())["foreground_mean"]["Dice"]
    (args.work / "reference.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
