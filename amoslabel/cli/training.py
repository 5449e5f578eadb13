"""``train``: train a served model on the studies folder's final labels, in one process or data-parallel (DDP) with
torchrun across processes and machines, and publish the result as the model's next version.

The train task is the server's (:class:`models.train_task.SegmentationTrainTask`), with the datalist read as the
server reads it: the folder's datastore with the review workflow's final labels. One process on one node trains
in-process, as ``POST /train`` does; otherwise ``torch.distributed.run`` starts :mod:`models.distributed_training`
on every rank (every node runs this command with its ``--node-rank`` and the same studies folder).
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from amoslabel.errors import InputError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # where ``-m models.distributed_training`` resolves


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model on the final labels (optionally data-parallel with torchrun)")
    train.add_argument("--model", required=True, help="a served network of the preset, e.g. unet")
    train.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    train.add_argument("--database", default=None, help="review store URL (default: SQLite in the studies folder)")
    train.add_argument("--preset", default=None, help="apps.yaml preset (default: the file's)")
    train.add_argument("--config", type=Path, default=None, help="apps.yaml to use (default: the repository's)")
    dist = train.add_argument_group("distributed (torchrun)")
    dist.add_argument("--nproc-per-node", type=int, default=1, help="processes on this machine (one per GPU)")
    dist.add_argument("--nnodes", type=int, default=None, help="machines in the job (default: this one alone)")
    dist.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0..nnodes-1")
    dist.add_argument("--rdzv-endpoint", default=None, help="host:port of the rendezvous (node 0), for --nnodes > 1")
    dist.add_argument("--rdzv-id", default=None, help="the job's id, the same on every node (default: amoslabel-MODEL)")
    dist.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl with CUDA, else gloo")
    dist.add_argument("--consistency-every", type=int, default=None, help="iterations between weight checks")
    run = train.add_argument_group("the run (default: the preset's)")
    run.add_argument("--max-epochs", type=int, default=None)
    run.add_argument("--iterations-per-epoch", type=int, default=None)
    run.add_argument("--batch-size", type=int, default=None, help="per process")
    run.add_argument("--learning-rate", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--no-augment", action="store_true", help="train without the AMOS augmentations")
    run.add_argument("--from-scratch", action="store_true", help="do not start from the serving version")
    train.set_defaults(run=_train)


def check_arguments(args) -> None:
    """Refuse what torchrun would fail on later, with a message that names the option."""
    if args.nproc_per_node < 1:
        raise InputError(f"--nproc-per-node must be at least 1, not {args.nproc_per_node}")
    nnodes = args.nnodes or 1
    if nnodes < 1:
        raise InputError(f"--nnodes must be at least 1, not {args.nnodes}")
    if not 0 <= args.node_rank < nnodes:
        raise InputError(f"--node-rank must be in 0..{nnodes - 1}, not {args.node_rank}")
    if nnodes > 1 and not args.rdzv_endpoint:
        raise InputError("--nnodes > 1 needs --rdzv-endpoint host:port (node 0's address, the same on every node)")
    if not args.studies.is_dir():
        raise InputError(f"{args.studies}: no such studies folder")


def user_request(args) -> Dict[str, Any]:
    """The request body ``POST /train/{model}`` would carry for these options."""
    chosen = {
        "max_epochs": args.max_epochs,
        "iterations_per_epoch": args.iterations_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "consistency_every": args.consistency_every,
    }
    request = {k: v for k, v in chosen.items() if v is not None}
    if args.no_augment:
        request["augment"] = False
    if args.from_scratch:
        request["pretrained"] = False
    return request


def _train(args) -> int:
    from amoslabel.cli.team import attach_datastore, review_service
    from amoslabel.config import load_config
    from amoslabel.workspace import Workspace
    from models.train_task import SegmentationTrainTask
    from models.versions import ModelStore

    check_arguments(args)
    overrides = {"preset": args.preset} if args.preset else {}
    config = load_config(args.config, overrides)
    if args.model not in config.models or args.model not in config.active.networks:
        raise InputError(f"no model {args.model!r} to train; models: {sorted(config.models)}")
    store = ModelStore(Workspace(args.studies).models(config.storage.models_dir), args.model)
    service = review_service(args.studies, args.database)
    try:
        # as at a server's start: imported final labels become the workflow's finals
        datastore = attach_datastore(service, args.studies, config.storage)
        task = SegmentationTrainTask(args.model, config, store, str(args.studies), service.workflow.final_labels)
        request = user_request(args)
        if args.nproc_per_node == 1 and (args.nnodes or 1) == 1:
            _require_finals(task, request, datastore)
            before = store.latest()
            task(request, datastore)  # exactly POST /train's path, in this process
            return _report(store, before)
        full = _prepared_request(task, request)
        datalist = _require_finals(task, full, datastore)
    finally:
        service.store.dispose()
    before = store.latest()
    status = launch(args, config_path=args.config, overrides=overrides, task=task, request=full, datalist=datalist)
    task.cleanup(full)
    if status != 0:
        print(f"error: torchrun exited with status {status} (see the ranks' log above)", file=sys.stderr)
        return status
    return _report(store, before) if args.node_rank == 0 else 0


def _require_finals(task, request: Dict[str, Any], datastore) -> List[Dict[str, Any]]:
    datalist = task.pre_process(request, datastore)
    if not datalist:
        raise InputError(f"{task.studies}: no final labels to train on (import labels as final, or finish reviews)")
    return datalist


def _prepared_request(task, request: Dict[str, Any]) -> Dict[str, Any]:
    """The request as MONAI Label's ``BasicTrainTask.__call__`` completes it (the task's defaults, a run id and run
    folder), made once here so that every rank of this node uses the same."""
    full = copy.deepcopy(task._config)
    full.update(task.run_request(request))
    full["run_id"] = time.strftime("%Y%m%d_%H%M%S")
    return full


def launch(args, config_path: Optional[Path], overrides, task, request, datalist) -> int:
    """Write the ranks' spec and run torchrun on :mod:`models.distributed_training`; its exit status."""
    from models.distributed import torchrun_command
    from models.distributed_training import SPEC_FILE, LaunchSpec

    threads = max(1, (os.cpu_count() or 1) // args.nproc_per_node)
    spec = LaunchSpec(
        model=args.model,
        studies=str(Path(args.studies).resolve()),
        models_dir=str(task.store.root.parent),
        request=request,
        datalist=datalist,
        config_path=str(Path(config_path).resolve()) if config_path else None,
        overrides=dict(overrides),
        backend=args.backend,
        threads=threads,
    )
    path = spec.write(Path(task._model_dir) / request["name"] / SPEC_FILE)
    command = torchrun_command(
        ["-m", "models.distributed_training", "--spec", str(path)],
        args.nproc_per_node,
        args.nnodes,
        args.node_rank,
        args.rdzv_endpoint,
        args.rdzv_id or f"amoslabel-{args.model}",
    )
    logger.info(f"launching: {' '.join(command)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _pythonpath()}
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{current}" if current else str(ROOT)


def _report(store, before) -> int:
    latest = store.latest()
    if latest is None or (before is not None and latest.number == before.number):
        print(f"error: {store.model}: training ended without publishing a version", file=sys.stderr)
        return 1
    champion = store.champion()
    meta = latest.meta
    print(
        f"{store.model}: published version {latest.number} (world size {meta.get('world_size', 1)}, "
        f"val mean Dice {meta.get('val_mean_dice')}); serving version {champion.number if champion else None}"
    )
    return 0
