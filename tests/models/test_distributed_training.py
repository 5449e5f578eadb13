"""Data-parallel training (DDP, gloo, 2 processes on 2 cores): the real ``python -m amoslabel train`` publishes one
version from rank 0 that serves, and one DDP step equals the same step taken in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monailabel.tasks.train.basic_train import Context

from amoslabel.cli.main import main as cli_main
from amoslabel.config import load_config
from models.distributed import LOCAL_RANK_KEY
from models.infer_task import SegmentationInferTask
from models.train_task import SegmentationTrainTask
from models.versions import ModelStore
from tests.conftest import ROOT

CT = ("ts_abdomen_ct_small", "ct/ts_abdomen_ct_small.nii.gz", "ct/ts_abdomen_ct_small_label.nii.gz", "ct")
MR = ("ts_abdomen_mr_small", "mr/ts_abdomen_mr_small.nii.gz", "mr/ts_abdomen_mr_small_label.nii.gz", "mri")


def make_studies(shared: Path, folder: Path, cases, with_labels: bool = True) -> Path:
    """A studies folder with ``cases`` of ../shared/data imported (images linked, labels as final)."""
    from amoslabel.data.importer import import_source

    lines = [f"root: {shared}", "cases:"]
    for case_id, image, label, modality in cases:
        entry = f"  - {{id: {case_id}, image: {image}, modality: {modality}"
        lines.append(entry + (f", label: {label}}}" if with_labels else "}"))
    manifest = folder / "manifest.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(lines) + "\n")
    studies = folder / "studies"
    report = import_source(manifest, studies, link_images=True, progress=False)
    assert not report.skipped, report.summary()
    return studies


TINY = ["--max-epochs", "1", "--iterations-per-epoch", "2", "--batch-size", "1", "--consistency-every", "1"]


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
    """Two gloo ranks trained through the real command line; (studies folder, its output)."""
    studies = make_studies(shared, tmp_path_factory.mktemp("ddp"), [CT, MR])
    command = [sys.executable, "-m", "amoslabel", "train", "--model", "unet", "--studies", str(studies)]
    command += ["--preset", "cpu-fast", "--nproc-per-node", "2", *TINY]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return studies, done.stdout + done.stderr


def _store(studies: Path) -> ModelStore:
    return ModelStore(studies / ".amoslabel" / "models", "unet")


def test_two_ranks_publish_one_version_from_rank_0(trained):
    studies, log = trained
    store = _store(studies)
    assert store.numbers() == [1]
    published = [line for line in log.splitlines() if "Published unet version" in line]
    assert len(published) == 1 and " rank 0 " in published[0], published
    meta = store.get(1).meta
    assert meta["world_size"] == 2 and meta["distributed_backend"] == "gloo"
    # every iteration checked (2), the end adds none: the last iteration was its check
    assert meta["rank_consistency_checks"] == {"passed": 2, "every_iterations": 1}
    assert meta["iterations_completed"] == 2 and meta["data_seed"] == "seed + rank"
    assert not (store.root / ".runs").exists() or not any((store.root / ".runs").iterdir()), "run folder left"


def test_the_published_version_serves(trained, shared):
    studies, _ = trained
    config = load_config(overrides={"preset": "cpu-fast"})
    task = SegmentationInferTask("unet", config, _store(studies))
    image = shared / CT[1]
    label_file, result = task({"image": str(image), "device": "cpu"})
    label = nib.load(label_file)
    source = nib.load(str(image))
    assert label.shape == source.shape
    assert torch.allclose(torch.as_tensor(label.affine), torch.as_tensor(source.affine), atol=1e-3)
    assert result["model_version"] == 1 and result["model"] == "unet"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "nosuch", "--nproc-per-node", "2"], "no model 'nosuch'"),
        (["--model", "unet", "--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["--model", "unet", "--nproc-per-node", "2", "--nnodes", "2"], "--rdzv-endpoint"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, extra, message):
    (tmp_path / "studies").mkdir()
    assert cli_main(["train", "--studies", str(tmp_path / "studies"), "--preset", "cpu-fast", *extra]) == 2
    assert message in capsys.readouterr().err


def test_no_final_labels_exits_2(shared, tmp_path, capsys):
    studies = make_studies(shared, tmp_path, [CT], with_labels=False)
    assert cli_main(["train", "--model", "unet", "--studies", str(studies), "--nproc-per-node", "2"]) == 2
    assert "no final labels" in capsys.readouterr().err


# -- one step: 2 ranks x batch b against one process at batch 2b ---------------------------------------------------
PATCH = 32
BATCH = 2  # per rank


def _batch(samples: int) -> Dict[str, torch.Tensor]:
    """Tiny patches: noise images and labels with every organ present."""
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(samples, 1, PATCH, PATCH, PATCH, generator=generator)
    label = torch.randint(0, 16, (samples, 1, PATCH, PATCH, PATCH), generator=generator).float()
    return {"image": image, "label": label}


def _context(task: SegmentationTrainTask, rank: int, world_size: int) -> Context:
    context = Context()
    context.request = {**task._config, "pretrained": False, LOCAL_RANK_KEY: rank}
    context.multi_gpu = world_size > 1
    context.local_rank, context.world_size = rank, world_size
    context.device = task._device(context)
    return context


def _task(models_dir: str) -> SegmentationTrainTask:
    config = load_config(overrides={"preset": "cpu-fast"})
    return SegmentationTrainTask("unet", config, ModelStore(Path(models_dir), "unet"), models_dir)


def _step(task: SegmentationTrainTask, context: Context, images: List[torch.Tensor], labels: List[torch.Tensor]):
    """One optimiser step; the loss is the mean of the losses of ``images`` chunks (one chunk: a plain batch)."""
    torch.manual_seed(0)  # the same initial weights in every process
    network, optimizer = task._create_network_and_optimizer(context)
    loss_function = task.loss_function(context)
    optimizer.zero_grad()
    loss = sum(loss_function(network(x), y) for x, y in zip(images, labels)) / len(images)
    loss.backward()
    optimizer.step()
    inner = getattr(network, "module", network)
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def _rank_worker(rank: int, world_size: int, folder: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", world_size=world_size, rank=rank)
    try:
        task = _task(folder)
        data = _batch(world_size * BATCH)
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        weights = _step(task, _context(task, rank, world_size), [data["image"][mine]], [data["label"][mine]])
        torch.save(weights, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_equals_the_same_step_in_one_process(tmp_path):
    mp.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "the ranks' weights differ after the step"

    task = _task(str(tmp_path / "alone"))
    context = _context(task, 0, 1)
    data = _batch(2 * BATCH)
    halves = [slice(0, BATCH), slice(BATCH, 2 * BATCH)]
    # DDP averages the ranks' gradients: the step of one process whose loss is the mean of the two halves' losses
    reference = _step(task, context, [data["image"][h] for h in halves], [data["label"][h] for h in halves])
    # AdamW's first step moves every weight by about lr * sign(gradient), so float32 summation-order noise in a
    # gradient near Adam's eps shows up scaled to lr, and which few weights it hits depends on the CPU (one machine
    # measured 1.1e-5 at most, another 1.6 % of lr on 2 of 11 million weights). So: the share of weights that moved
    # differently by over 1 % of one step (measured: 2e-7; a different step: 8e-3, by up to 2 lr).
    tolerance = 0.01 * float(context.request["learning_rate"])

    def share_apart(weights):
        apart = sum(int(((ranks[0][k] - v).abs() > tolerance).sum()) for k, v in weights.items())
        return apart / sum(v.numel() for v in weights.values())

    assert share_apart(reference) <= 1e-5, "DDP's step is not the step of the two halves' mean loss"

    # One loss over the whole batch of 2b is another step: the loss's batch Dice and class-balanced CE weights are
    # statistics of the batch, which under DDP is each rank's b. The measure above tells the two apart.
    whole = _step(task, context, [data["image"]], [data["label"]])
    assert share_apart(whole) >= 1e-3
