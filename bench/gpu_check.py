"""``make gpu-check``: what one GPU does for this project, in one JSON, in a few minutes.

Written for a GPU machine that has torch but none of MONAI Label, SimpleITK or Ray (README: *The GPU check*): it
imports only torch, MONAI (with pytorch-ignite, for MONAI's trainer), pydantic and PyYAML (the configuration) and
this project's own modules that need nothing more. It measures, with the ``full`` preset of ``apps.yaml``:

1. **pre-label**: a 512x512x300 CT (0.78 mm in plane, 1.5 mm slices) normalised with the CT window, resampled onto
   the preset's grid, the UNet's sliding window over it (:class:`models.inference.SlidingWindowPredictor`), the
   argmax and the label back on the scan's grid; with and without flip test-time augmentation; wall time and peak
   GPU memory. (The server resamples with SimpleITK on the CPU; here torch resamples on the device, which the
   machine can run. The network's share is reported apart.)
2. **training**: steps per second of the preset's UNet, loss and optimiser at its patch and batch size through
   MONAI's ``SupervisedTrainer`` (what :class:`models.train_task.SegmentationTrainTask` runs), with AMP and in fp32.
3. **DDP**: one training step over NCCL (gloo on a CPU), world size 1, launched as ``train --nproc-per-node`` launches
   (:func:`models.distributed.torchrun_command`), with the same DDP pieces (:func:`models.distributed.default_backend`,
   :func:`~models.distributed.rank_device`, :func:`~models.distributed.wrap_ddp`,
   :class:`~models.distributed.RankConsistencyCheck`). MONAI Label's train task itself cannot run there.
4. **clicks**: the click model's round trip on a 512x512x78 CT: the region around a click
   (:func:`models.click_region.region_around`), the click network on it (:func:`models.click_region.organ_probability`)
   and the organ refined (:func:`models.click_merge.refine_organ`).

``--device cpu --small`` runs the same code at a size a CPU finishes in a minute (the ``cpu-fast`` preset, small
volumes, one timed step): the test suite runs it, so the script cannot rot. Random weights and synthetic intensities:
the check measures speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amoslabel.config import AppConfig, load_config  # noqa: E402
from amoslabel.organs import NUM_CLASSES, ORGAN_BY_ID  # noqa: E402
from models.click_merge import click_box, refine_organ  # noqa: E402
from models.click_network import build_click_network  # noqa: E402
from models.click_region import in_box, organ_probability, region_around  # noqa: E402
from models.inference import SlidingWindowPredictor  # noqa: E402
from models.losses import build_loss  # noqa: E402
from models.networks import build_network  # noqa: E402
from models.optimizers import build_optimizer  # noqa: E402

DEFAULT_OUT = ROOT / ".bench" / "gpu-check.json"
MODEL = "unet"


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the preset, the scans (x, y, z voxels and mm) and how many repeats."""

    preset: str
    ct: Tuple[int, int, int]
    ct_spacing: Tuple[float, float, float]
    click_ct: Tuple[int, int, int]
    click_spacing: Tuple[float, float, float]
    warmup_steps: int
    timed_steps: int
    clicks: int


FULL = Sizes("full", (512, 512, 300), (0.78, 0.78, 1.5), (512, 512, 78), (0.78, 0.78, 2.5), 3, 20, 10)
SMALL = Sizes("cpu-fast", (48, 48, 40), (4.0, 4.0, 3.0), (64, 64, 24), (3.0, 3.0, 4.0), 1, 1, 2)


# -- timing ---------------------------------------------------------------------------------------------------
def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def timed(device: torch.device, work: Callable[..., Any], *args: Any) -> Tuple[float, Any]:
    """Seconds ``work(*args)`` takes, the device's queue drained before and after; and what it returned."""
    synchronise(device)
    started = time.perf_counter()
    result = work(*args)
    synchronise(device)
    return time.perf_counter() - started, result


def say(text: str) -> None:
    print(f"[gpu-check] {text}", flush=True)


# -- the scans ------------------------------------------------------------------------------------------------
def synthetic_ct(size_xyz: Sequence[int], seed: int = 0) -> np.ndarray:
    """A CT-like volume (z, y, x) in HU: air outside an elliptic body of soft tissue with a brighter 'organ'."""
    rng = np.random.default_rng(seed)
    x, y, z = size_xyz
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (z, y, x)), indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1
    organ = ((xx - 0.3) / 0.3) ** 2 + (yy / 0.3) ** 2 + (zz / 0.6) ** 2 < 1
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + np.where(organ, 60.0, 0.0).astype(np.float32)
    return ct + rng.normal(0, 20, ct.shape).astype(np.float32)


def network_grid(size_xyz: Sequence[int], spacing_xyz: Sequence[float], plan_spacing: Sequence[float]) -> List[int]:
    """The scan's shape (z, y, x) on the preset's grid."""
    triples = zip(reversed(size_xyz), reversed(spacing_xyz), reversed(plan_spacing))
    return [max(1, round(n * s / p)) for n, s, p in triples]


def normalised_on_grid(ct: torch.Tensor, config: AppConfig, shape_zyx: Sequence[int]) -> torch.Tensor:
    """(1, 1, z, y, x) on the device: the CT window of ``apps.yaml``, then trilinear onto the preset's grid."""
    norm = config.modalities["ct"].normalisation
    low, high = norm.window
    x = (ct.clamp(low, high) - norm.mean) / norm.std
    return F.interpolate(x[None, None], size=tuple(shape_zyx), mode="trilinear", align_corners=False)


# -- 1. pre-label ---------------------------------------------------------------------------------------------
def prelabel(config: AppConfig, sizes: Sizes, device: torch.device) -> Dict[str, Any]:
    preset = config.active
    plan = preset.plans["ct"]
    settings = preset.networks[MODEL]
    network = build_network(settings.network, settings.params).to(device).eval()
    scan = torch.as_tensor(synthetic_ct(sizes.ct)).to(device)
    grid = network_grid(sizes.ct, sizes.ct_spacing, plan.spacing)
    patch = tuple(reversed(plan.patch_size))
    out: Dict[str, Any] = {
        "scan_xyz": list(sizes.ct),
        "spacing_mm": list(sizes.ct_spacing),
        "network_grid_zyx": grid,
        "patch_zyx": list(patch),
        "sw_overlap": preset.inference.sw_overlap,
        "sw_batch_size": preset.inference.sw_batch_size,
        "network": settings.network,
    }
    for name, flips in (("no_tta", False), ("tta_flip", True)):
        predictor = SlidingWindowPredictor(patch, preset.inference.sw_overlap, preset.inference.sw_batch_size, flips)
        if name == "no_tta":  # the first pass pays for cuDNN's autotuning and the allocator's growth
            prelabel_once(scan, config, grid, predictor, network, device)
        reset_peak(device)
        wall, (parts, label) = timed(device, prelabel_once, scan, config, grid, predictor, network, device)
        out[name] = {
            "wall_s": round(wall, 3),
            **{k: round(v, 3) for k, v in parts.items()},
            "passes": len(predictor.flips),
            "peak_gpu_gib": peak_gib(device),
            "label_zyx": list(label.shape),
        }
        say(f"pre-label {name}: {wall:.2f} s (network {parts['network_s']:.2f} s), peak {peak_gib(device)} GiB")
        del label
    return out


def prelabel_once(
    scan: torch.Tensor,
    config: AppConfig,
    grid: Sequence[int],
    predictor: SlidingWindowPredictor,
    network: torch.nn.Module,
    device: torch.device,
) -> Tuple[Dict[str, float], np.ndarray]:
    """One pre-label of ``scan`` (z, y, x HU on the device): the seconds of each part, and the label (uint8)."""
    parts: Dict[str, float] = {}
    parts["prepare_s"], inputs = timed(device, normalised_on_grid, scan, config, grid)
    parts["network_s"], probabilities = timed(device, predictor, inputs, network)
    del inputs
    parts["restore_s"], label = timed(device, restore, probabilities, scan.shape)
    return parts, label


def restore(probabilities: torch.Tensor, shape_zyx: Sequence[int]) -> np.ndarray:
    """The argmax on the network's grid, back onto the scan's grid by nearest neighbour; uint8 on the host."""
    label = probabilities[0].argmax(0).to(torch.uint8)
    back = F.interpolate(label[None, None].float(), size=tuple(shape_zyx), mode="nearest")[0, 0]
    return back.to(torch.uint8).cpu().numpy()


# -- 2. training ----------------------------------------------------------------------------------------------
def batches(config: AppConfig, count: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Random patches of the preset's size and batch (image normal noise, labels 0..15), on the host."""
    preset = config.active
    patch = tuple(reversed(preset.plans["ct"].patch_size))
    generator = torch.Generator().manual_seed(seed)
    size = (preset.train.batch_size, 1, *patch)
    return [
        {
            "image": torch.randn(size, generator=generator),
            "label": torch.randint(0, NUM_CLASSES, size, generator=generator).float(),
        }
        for _ in range(count)
    ]


def trainer_for(
    config: AppConfig, network: torch.nn.Module, device: torch.device, amp: bool, data: List[Dict[str, torch.Tensor]]
):
    """MONAI's SupervisedTrainer as the train task builds it: the preset's loss and optimiser, SimpleInferer."""
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    train = config.active.train
    return SupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=len(data),
        train_data_loader=data,
        network=network,
        optimizer=build_optimizer(network.parameters(), train, train.learning_rate),
        loss_function=build_loss(train.loss),
        inferer=SimpleInferer(),
        amp=amp,
    )


def training(config: AppConfig, sizes: Sizes, device: torch.device) -> Dict[str, Any]:
    settings = config.active.networks[MODEL]
    out: Dict[str, Any] = {
        "patch_zyx": list(reversed(config.active.plans["ct"].patch_size)),
        "batch_size": config.active.train.batch_size,
        "network": settings.network,
        "optimizer": config.active.train.optimizer,
        "loss": config.active.train.loss,
    }
    data = batches(config, sizes.warmup_steps + sizes.timed_steps)
    for name, amp in (("amp", True), ("fp32", False)):
        if amp and device.type != "cuda":
            out[name] = {"skipped": "AMP is for CUDA: the trainer runs fp32 on a CPU"}
            continue
        torch.manual_seed(0)
        network = build_network(settings.network, settings.params).to(device)
        warm = trainer_for(config, network, device, amp, data[: sizes.warmup_steps])
        warm.run()
        reset_peak(device)
        trainer = trainer_for(config, network, device, amp, data[sizes.warmup_steps :])
        seconds, _ = timed(device, trainer.run)
        rate = sizes.timed_steps / seconds
        output = trainer.state.output
        loss = float((output[0] if isinstance(output, list) else output)["loss"])
        out[name] = {
            "steps_per_s": round(rate, 3),
            "s_per_step": round(1 / rate, 4),
            "peak_gpu_gib": peak_gib(device),
            "last_loss": loss,
        }
        say(f"training {name}: {rate:.2f} steps/s, peak {peak_gib(device)} GiB")
        del network, warm, trainer
    return out


# -- 3. DDP ---------------------------------------------------------------------------------------------------
def ddp(sizes: Sizes, device: torch.device, small: bool) -> Dict[str, Any]:
    """One DDP step in a rank started by torchrun, as ``train --nproc-per-node 1`` starts one."""
    from models.distributed import torchrun_command

    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as folder:
        result = Path(folder) / "rank0.json"
        entry = ["-m", "bench.gpu_check", "--ddp-rank", str(result), "--device", device.type]
        command = torchrun_command(entry + (["--small"] if small else []), nproc_per_node=1, rdzv_id="gpu-check")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0 or not result.is_file():
            tail = (done.stdout + done.stderr)[-3000:]
            raise RuntimeError(f"the DDP rank failed ({done.returncode}):\n{tail}")
        out = json.loads(result.read_text())
    out["launcher"] = " ".join(command[1:5])
    out["wall_with_launch_s"] = round(wall, 2)
    say(f"DDP ({out['backend']}, world size {out['world_size']}): step {out['step_s']:.3f} s")
    return out


def ddp_rank(result: Path, config: AppConfig, sizes: Sizes, device_type: str) -> None:
    """One rank: the process group, the rank's device, the network in DDP, one trainer step, the weight check."""
    import torch.distributed as dist

    from models.distributed import RankConsistencyCheck, RankInfo, default_backend, rank_device, wrap_ddp

    info = RankInfo.from_environ()
    backend = default_backend() if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", world_size=info.world_size, rank=info.rank)
    try:
        device = rank_device({"gpus": "all"}, info.local_rank) if device_type == "cuda" else torch.device("cpu")
        settings = config.active.networks[MODEL]
        network = wrap_ddp(build_network(settings.network, settings.params).to(device), device)
        data = batches(config, sizes.warmup_steps + 1)
        trainer_for(config, network, device, device.type == "cuda", data[: sizes.warmup_steps]).run()
        trainer = trainer_for(config, network, device, device.type == "cuda", data[sizes.warmup_steps :])
        check = RankConsistencyCheck(network, every=1, device=device)
        check.attach(trainer)
        seconds, _ = timed(device, trainer.run)
        result.write_text(
            json.dumps(
                {
                    "backend": dist.get_backend(),
                    "world_size": dist.get_world_size(),
                    "device": str(device),
                    "step_s": round(seconds, 4),
                    "consistency_checks_passed": check.passed,
                    "amp": device.type == "cuda",
                }
            )
        )
    finally:
        dist.destroy_process_group()


# -- 4. clicks ------------------------------------------------------------------------------------------------
def clicks(config: AppConfig, sizes: Sizes, device: torch.device) -> Dict[str, Any]:
    """Clicks on one organ of a 512x512x78 CT: the region, the click network there, the organ refined."""
    settings = config.active.networks[MODEL]
    network = build_click_network(settings.network, settings.params).to(device).eval()
    ct = synthetic_ct(sizes.click_ct, seed=1)
    shape = ct.shape  # z, y, x
    label = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(0)
    times: List[float] = []
    scan = torch.as_tensor(ct).to(device)
    region = None
    for i in range(sizes.clicks + 1):
        click = tuple(int(rng.integers(n // 3, 2 * n // 3)) for n in shape)
        seconds, (label, region) = timed(device, one_click, network, scan, label, click, config, sizes, device)
        if i:  # the first click builds cuDNN's plans
            times.append(seconds)
    out = {
        "scan_xyz": list(sizes.click_ct),
        "spacing_mm": list(sizes.click_spacing),
        "region_zyx": region,
        "clicks": len(times),
        "p50_s": round(statistics.median(times), 3),
        "p95_s": round(float(np.percentile(times, 95)), 3),
    }
    say(f"clicks: p50 {out['p50_s']} s, p95 {out['p95_s']} s over {len(times)} clicks (region {region})")
    return out


def one_click(
    network: torch.nn.Module,
    scan: torch.Tensor,
    label: np.ndarray,
    click: Tuple[int, int, int],
    config: AppConfig,
    sizes: Sizes,
    device: torch.device,
    organ: int = 6,
) -> Tuple[np.ndarray, List[int]]:
    """A foreground click on ``organ`` (default the liver): the label after it, and the region's shape (z, y, x)."""
    plan = config.active.plans["ct"]
    patch = tuple(reversed(plan.patch_size))
    patch_mm = [p * s for p, s in zip(patch, reversed(plan.spacing))]
    shape, spacing = label.shape, tuple(reversed(sizes.click_spacing))
    box = click_box([click], shape, config.clicks.margin_mm, spacing)
    roi = region_around([box], shape, config.clicks.context_mm, spacing, patch_mm)
    crop = scan[roi]
    grid = network_grid(tuple(reversed(crop.shape)), sizes.click_spacing, plan.spacing)
    inputs = normalised_on_grid(crop, config, grid)[0].cpu().numpy()
    local = [tuple(int((c - r.start) * g / (r.stop - r.start)) for c, r, g in zip(click, roi, grid))]
    guidance = {ORGAN_BY_ID[organ].name: local}
    probability = organ_probability(network, inputs, guidance, organ, patch, str(device))
    back = F.interpolate(torch.as_tensor(probability)[None, None], size=tuple(crop.shape), mode="trilinear")[0, 0]
    refined = refine_organ(label, organ, in_box(back.numpy(), roi, box), [click], [], box)
    return refined, [r.stop - r.start for r in roi]


# -- the run --------------------------------------------------------------------------------------------------
def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    return torch.device(device)


def describe(device: torch.device) -> Dict[str, Any]:
    out = {
        "device": str(device),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        out.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
        out["cuda"] = torch.version.cuda
    try:
        import monai

        out["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - the check needs MONAI; reported by the import above first
        pass
    return out


PARTS = ("prelabel", "training", "ddp", "clicks")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--small", action="store_true", help="CPU-sized volumes and the cpu-fast preset (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON written")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--ddp-rank", type=Path, default=None, help=argparse.SUPPRESS)  # torchrun's rank
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    config = load_config(overrides={"preset": sizes.preset})
    if args.ddp_rank is not None:
        ddp_rank(args.ddp_rank, config, sizes, args.device)
        return 0
    device = resolve(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    report: Dict[str, Any] = {"machine": describe(device), "preset": sizes.preset, "small": args.small}
    say(f"{report['machine']} | preset {sizes.preset}")
    started = time.perf_counter()
    runs = {
        "prelabel": lambda: prelabel(config, sizes, device),
        "training": lambda: training(config, sizes, device),
        "ddp": lambda: ddp(sizes, device, args.small),
        "clicks": lambda: clicks(config, sizes, device),
    }
    for part in args.parts:
        report[part] = runs[part]()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    say(f"done in {report['total_s']} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
