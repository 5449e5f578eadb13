"""Pre-labelling benchmark: end-to-end time and peak RSS, ours against MONAI Label's radiology SegResNet.

For each volume, each pipeline runs in a fresh process (so peak RSS is its own), on the CPU, and is timed from the
file on disk to the label file written: read, preprocess, infer, restore to the input grid, write.

* ours: the app's infer task with the UNet of a preset (``cpu``: 1.5 mm; ``cpu-fast``: 3 mm), random weights
  published as a version so the real code path runs (timing does not depend on the weights).
* peer: MONAI Label's radiology ``segmentation`` configuration built from MONAI (SegResNet, init filters 32, blocks
  down 1,2,2,4; Orientation RAS, 1.5 mm, intensity window [-175, 250]; 96^3 window, overlap 0.4, Gaussian blending,
  batch 2), random weights too. Its ``Restored`` post-transform needs torchvision, which cannot be installed here,
  so the prediction goes back with MONAI's ``Invertd`` instead.

Volumes: ``ts_abdomen_ct`` (122x101x112, 3 mm), the 512x512x20 DICOM series, and a 512x512x300 volume made by
resampling the real CT onto a clinical-size grid (the same field of view), written to .bench/volumes.

    python -m bench.prelabel                  # everything (about 20 minutes on 2 cores)
    python -m bench.prelabel --volumes ct     # one volume
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA  # noqa: E402
from amoslabel.server.launch import reexec_with_malloc_tuning  # noqa: E402

SHARED = SHARED_DATA
OUT = BENCH_OUTPUT
VOLUMES = OUT / "volumes"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- volumes ------------------------------------------------------------------------------------------------------
def prepare_volumes() -> Dict[str, Path]:
    import numpy as np
    import SimpleITK as sitk

    from amoslabel.dicom.series import read_series

    VOLUMES.mkdir(parents=True, exist_ok=True)
    volumes = {"ct": SHARED / "ct" / "ts_abdomen_ct.nii.gz"}
    dicom = VOLUMES / "ts_ct_series.nii.gz"
    if not dicom.exists():
        sitk.WriteImage(read_series(SHARED / "dicom" / "ts_ct_series_uncompressed"), str(dicom))
    volumes["dicom"] = dicom
    big = VOLUMES / "ts_abdomen_ct_512x512x300.nii.gz"
    if not big.exists():
        ct = sitk.ReadImage(str(volumes["ct"]))
        size = (512, 512, 300)
        extent = np.asarray(ct.GetSize()) * np.asarray(ct.GetSpacing())
        spacing = tuple(float(s) for s in extent / np.asarray(size))
        origin = np.asarray(ct.GetOrigin()) + np.asarray(ct.GetDirection()).reshape(3, 3) @ (
            (np.asarray(spacing) - np.asarray(ct.GetSpacing())) / 2
        )
        resampled = sitk.Resample(
            ct,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            tuple(origin),
            spacing,
            ct.GetDirection(),
            -1024.0,
            sitk.sitkInt16,
        )
        sitk.WriteImage(resampled, str(big))
    volumes["ct512x300"] = big
    return volumes


# -- one measurement, in its own process ---------------------------------------------------------------------------
def run_ours(volume: Path, preset: str, model: str) -> Dict:
    import torch

    from amoslabel.config import load_config
    from models.infer_task import SegmentationInferTask
    from models.networks import build_network
    from models.versions import ModelStore

    config = load_config(overrides={"preset": preset, "device": "cpu"})
    spec = config.active.networks[model]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(tmp, model)
        store.publish(
            build_network(spec.network, spec.params).state_dict(),
            {
                "network": {"name": spec.network, "params": dict(spec.params)},
                "plans": {m: p.model_dump(mode="json") for m, p in config.active.plans.items()},
                "normalisation": {m: s.normalisation.model_dump(mode="json") for m, s in config.modalities.items()},
                "train_patch_size": list(config.active.plans["ct"].patch_size),
                "note": "random weights, for timing only",
            },
        )
        task = SegmentationInferTask(model, config, store)
        started = time.perf_counter()
        label_file, result = task({"image": str(volume), "modality": "ct"})
        seconds = time.perf_counter() - started
        os.unlink(label_file)
    return {
        "seconds": seconds,
        "latencies": result["latencies"],
        "grid": result["preprocessing"]["network_grid_xyz"],
        "spacing": config.active.plans["ct"].spacing,
        "network": spec.network,
        "parameters": sum(p.numel() for p in build_network(spec.network, spec.params).parameters()),
    }


def run_peer(volume: Path) -> Dict:
    import torch
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    torch.manual_seed(0)
    network = SegResNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=16,
        init_filters=32,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        dropout_prob=0.2,
    ).eval()
    pre = Compose(
        [
            LoadImaged(keys="image", reader="ITKReader"),
            EnsureTyped(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.5, 1.5, 1.5)),
            ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            EnsureTyped(keys="image"),
        ]
    )
    inferer = SlidingWindowInferer(
        roi_size=(96, 96, 96), sw_batch_size=2, overlap=0.4, padding_mode="replicate", mode="gaussian"
    )
    with tempfile.TemporaryDirectory() as tmp:
        post = Compose(
            [
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys="pred", argmax=True),
                Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True),
                SaveImaged(
                    keys="pred",
                    output_dir=tmp,
                    output_postfix="seg",
                    separate_folder=False,
                    print_log=False,
                    output_dtype="uint8",
                ),
            ]
        )
        started = time.perf_counter()
        data = pre({"image": str(volume)})
        grid = list(data["image"].shape[1:])
        with torch.inference_mode():
            data["pred"] = inferer(data["image"][None], network)[0]
        data["pred"] = MetaTensor(
            data["pred"], meta=data["image"].meta, applied_operations=data["image"].applied_operations
        )
        post(data)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "grid": grid,
        "spacing": [1.5, 1.5, 1.5],
        "network": "SegResNet",
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def run_restore(volume: Path) -> Dict:
    """Restoration alone, fed a realistic prediction: the real CT label as soft probabilities on the 1.5 mm grid.

    With random weights every organ "wins" somewhere all over the volume, which is restoration's worst case; a
    trained model's organs are compact, and only their regions are resampled.
    """
    import numpy as np
    import SimpleITK as sitk
    import torch

    from amoslabel.volume import Geometry
    from models.preprocessing import restore_label, target_grid

    label = sitk.DICOMOrient(sitk.ReadImage(str(SHARED / "ct" / "ts_abdomen_ct_label.nii.gz")), "LPS")
    original = Geometry.of(sitk.ReadImage(str(volume)))
    grid = target_grid(Geometry.of(sitk.DICOMOrient(sitk.ReadImage(str(volume)), "LPS")), (1.5, 1.5, 1.5))
    reference = sitk.Image(list(grid.size), sitk.sitkUInt8)
    grid.apply_to(reference)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(on_grid.astype(np.int64)), 16).permute(3, 0, 1, 2).float()
    soft = torch.nn.functional.avg_pool3d(one_hot[None], 3, stride=1, padding=1)[0]
    soft /= soft.sum(0, keepdim=True)
    started = time.perf_counter()
    restore_label(soft, grid, original)
    return {
        "seconds": time.perf_counter() - started,
        "grid": list(grid.size),
        "spacing": [1.5, 1.5, 1.5],
        "network": "none (restore only)",
        "parameters": 0,
    }


def one(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    runners = {
        "peer": lambda: run_peer(Path(args.volume)),
        "restore": lambda: run_restore(Path(args.volume)),
        "ours": lambda: run_ours(Path(args.volume), args.preset, args.model),
    }
    result = runners[args.one]()
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def measure(kind: str, volume: Path, preset: str, model: str, threads: int) -> Dict:
    from amoslabel.server.launch import MALLOC_TUNING

    cmd = [
        sys.executable,
        "-m",
        "bench.prelabel",
        "--one",
        kind,
        "--volume",
        str(volume),
        "--preset",
        preset,
        "--model",
        model,
        "--threads",
        str(threads),
    ]
    env = {**os.environ, **MALLOC_TUNING, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{kind} on {volume.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", default="ct,dicom,ct512x300")
    parser.add_argument("--presets", default="cpu,cpu-fast")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--one", choices=["ours", "peer", "restore"], help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    reexec_with_malloc_tuning()
    if args.one:
        one(args)
        return 0

    volumes = prepare_volumes()
    rows: List[Dict] = []
    for name in args.volumes.split(","):
        volume = volumes[name]
        peer = None if args.skip_peer else measure("peer", volume, "", args.model, args.threads)
        if peer:
            rows.append({"volume": name, "pipeline": "peer SegResNet 1.5 mm", **peer})
            print(f"{name:10s} peer            {peer['seconds']:7.1f} s  {peer['peak_rss_mb']:6.0f} MB", flush=True)
        for preset in args.presets.split(","):
            ours = measure("ours", volume, preset, args.model, args.threads)
            ratio = ours["seconds"] / peer["seconds"] if peer else None
            rows.append({"volume": name, "pipeline": f"ours {args.model} {preset}", "ratio_to_peer": ratio, **ours})
            print(
                f"{name:10s} {preset:15s} {ours['seconds']:7.1f} s  {ours['peak_rss_mb']:6.0f} MB"
                + (f"  ratio {ratio:.2f}" if ratio else ""),
                flush=True,
            )
        restore = measure("restore", volume, "", args.model, args.threads)
        rows.append({"volume": name, "pipeline": "restore only, real organ layout", **restore})
        print(f"{name:10s} restore only    {restore['seconds']:7.1f} s  {restore['peak_rss_mb']:6.0f} MB", flush=True)
    write_report(rows, args)
    return 0


def write_report(rows: List[Dict], args) -> None:
    OUT.mkdir(exist_ok=True)
    accuracy = {}
    for preset in args.presets.split(","):
        path = OUT / f"learning_check_{preset}.json"
        if path.exists():
            report = json.loads(path.read_text())
            accuracy[preset] = ", ".join(f"{k} {report['dice'][k]:.2f}" for k in report["checked"])
    lines = [
        f"threads: {args.threads}; machine: {os.cpu_count()} cores; times are end to end, file to file",
        "",
        "| volume | pipeline | network grid | parameters | time (s) | peak RSS (MB) | ratio to peer | "
        "learning-check Dice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        preset = r["pipeline"].split()[-1]
        ratio = "" if r.get("ratio_to_peer") is None else f"{r['ratio_to_peer']:.2f}"
        lines.append(
            f"| {r['volume']} | {r['pipeline']} | {'x'.join(map(str, r['grid']))} | "
            f"{r['parameters'] / 1e6:.1f} M | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} | "
            f"{accuracy.get(preset, '')} |"
        )
    (OUT / "prelabel.json").write_text(json.dumps(rows, indent=2))
    (OUT / "prelabel.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
