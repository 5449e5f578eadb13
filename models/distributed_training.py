"""The torchrun entry point: one rank of a data-parallel (DDP) run of :class:`SegmentationTrainTask`.

``python -m amoslabel train --nproc-per-node N ...`` writes a :class:`LaunchSpec` (the configuration, the model, the
prepared request and the datalist of final labels, read once by the launcher) and runs
``python -m torch.distributed.run ... -m models.distributed_training --spec FILE``. Each rank reads RANK, WORLD_SIZE
and LOCAL_RANK from torchrun's environment and calls MONAI Label's ``BasicTrainTask.train(rank, world_size, ...)``
with the global rank: the same data, losses, augmentations and version publishing as ``POST /train``.

The datalist comes in the spec, not from the review workflow here: this package sits below ``review/`` (it may not
open it), and every rank must see the same list in the same order for the per-rank partition to be a partition.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from amoslabel.config import load_config
from models.distributed import LOCAL_RANK_KEY, RankInfo, default_backend
from models.train_task import SegmentationTrainTask
from models.versions import ModelStore

logger = logging.getLogger(__name__)

SPEC_FILE = "launch.json"


@dataclass
class LaunchSpec:
    """What every rank needs to build the same train task and run it on the same data."""

    model: str
    studies: str
    models_dir: str
    request: Dict[str, Any]
    datalist: List[Dict[str, Any]]
    config_path: Optional[str] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    backend: Optional[str] = None  # None: NCCL with CUDA, else gloo
    threads: int = 1  # torch threads per rank: ranks sharing a machine's cores must not oversubscribe them

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), default=str, indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> "LaunchSpec":
        return cls(**json.loads(Path(path).read_text()))


def build_task(spec: LaunchSpec) -> SegmentationTrainTask:
    """The train task the server would build for ``spec.model`` (its datalist is in the spec already)."""
    config = load_config(Path(spec.config_path) if spec.config_path else None, spec.overrides)
    return SegmentationTrainTask(spec.model, config, ModelStore(Path(spec.models_dir), spec.model), spec.studies)


def distributed_request(spec: LaunchSpec, info: RankInfo) -> Dict[str, Any]:
    """The spec's request with DDP on: the backend, torchrun's rendezvous (env://) and the true local rank."""
    request = dict(spec.request)
    request.update(
        {
            "multi_gpu": True,
            "distributed_backend": spec.backend or default_backend(),
            "distributed_url": "env://",
            LOCAL_RANK_KEY: info.local_rank,
        }
    )
    return request


def run_rank(spec: LaunchSpec, info: RankInfo) -> Dict[str, Any]:
    """Train this rank's share; global rank 0 validates and publishes the version."""
    torch.set_num_threads(max(1, int(spec.threads)))
    task = build_task(spec)
    return task.train(info.rank, info.world_size, distributed_request(spec, info), spec.datalist)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.distributed_training", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help=f"the launcher's {SPEC_FILE}")
    args = parser.parse_args(argv)
    info = RankInfo.from_environ()
    logging.basicConfig(
        level=logging.INFO, format=f"[%(asctime)s] rank {info.rank} %(levelname)s %(name)s: %(message)s"
    )
    run_rank(LaunchSpec.read(args.spec), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
