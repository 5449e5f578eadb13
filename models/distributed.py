"""The pieces of data-parallel training (PyTorch DDP) that do not depend on MONAI Label: which backend and device a
rank uses, wrapping a network in DDP on any device, and a runtime check that every rank holds the same weights.

Used by :class:`models.train_task.SegmentationTrainTask` (its ``_device`` and ``_create_network_and_optimizer``
overrides) and by the torchrun entry point :mod:`models.distributed_training`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

# The request key that carries a rank's true local rank (its index on its machine). MONAI Label's
# BasicTrainTask.train overwrites os.environ["LOCAL_RANK"] with the rank it is given (the global rank under
# torchrun), so the entry point captures the real one here before calling it.
LOCAL_RANK_KEY = "_local_rank"


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a torchrun job: its global rank, the number of ranks, its index on its machine."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "RankInfo":
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK (one process alone when they are absent)."""
        return cls(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )


def torchrun_command(
    entry: Sequence[str],
    nproc_per_node: int = 1,
    nnodes: Optional[int] = None,
    node_rank: int = 0,
    rdzv_endpoint: Optional[str] = None,
    rdzv_id: str = "amoslabel",
) -> List[str]:
    """``python -m torch.distributed.run ... ENTRY``: ``--standalone`` on one node, else a c10d rendezvous at the
    endpoint (every node runs it with its ``node_rank`` and the same ``rdzv_id``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node)]
    if (nnodes or 1) == 1 and not rdzv_endpoint:
        command.append("--standalone")
    else:
        command += [
            "--nnodes", str(nnodes or 1),
            "--node-rank", str(node_rank),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", str(rdzv_endpoint),
            "--rdzv-id", rdzv_id,
        ]  # fmt: skip
    return command + list(entry)


def default_backend() -> str:
    """NCCL where CUDA is, else gloo (the CPU backend)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def rank_device(request: Mapping[str, Any], local_rank: int) -> torch.device:
    """The device of a rank: ``cuda:{gpu}`` with CUDA (gpu = the local rank, or the ``gpus`` list's entry for it),
    else the CPU. Never a GPU index from the global rank: on a second machine that index does not exist."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpus = str(request.get("gpus") or "all")
    gpu = local_rank if gpus == "all" else [int(g) for g in gpus.split(",")][local_rank]
    device = torch.device(f"cuda:{gpu}")
    torch.cuda.set_device(device)
    return device


def wrap_ddp(network: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False):
    """``network`` in DistributedDataParallel; ``device_ids`` only on CUDA (DDP refuses them for CPU modules)."""
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(
            network,
            device_ids=[device.index],
            output_device=device.index,
            find_unused_parameters=find_unused_parameters,
        )
    return torch.nn.parallel.DistributedDataParallel(network, find_unused_parameters=find_unused_parameters)


def parameter_checksum(network: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights: the float64 sum of every parameter, weighted by its position so that two
    tensors swapping values changes it. Not a hash; enough to see ranks drift apart."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(network.parameters(), start=1):
        total += i * p.detach().to("cpu", torch.float64).sum()
    return float(total)


class RankConsistencyError(RuntimeError):
    """The ranks of a data-parallel run hold different weights: their gradients were not averaged alike."""


class RankConsistencyCheck:
    """Every ``every`` iterations and at the end, all-gather each rank's :func:`parameter_checksum` and raise
    :class:`RankConsistencyError` when they differ. ``passed`` counts the checks that found them equal.

    Exact equality, not a tolerance: DDP hands every rank the same averaged gradients and the optimiser step is
    deterministic, so the weights are bitwise identical or something is wrong. Every rank must attach it (it is a
    collective call), before any handler that only rank 0 runs at the end.
    """

    def __init__(self, network: torch.nn.Module, every: int, device: torch.device):
        self.network = network
        self.every = max(1, int(every))
        # gloo gathers CPU tensors, NCCL CUDA tensors
        self.device = device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
        self.passed = 0
        self.last_iteration = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration == self.last_iteration:
            return  # the last iteration was checked already, the end needs no second look
        self.last_iteration = engine.state.iteration
        sums = self.gather(parameter_checksum(getattr(self.network, "module", self.network)))
        if len(set(sums)) > 1:
            raise RankConsistencyError(
                f"iteration {engine.state.iteration}: the ranks' weights differ (checksums by rank: {sums})"
            )
        self.passed += 1

    def gather(self, value: float) -> list:
        """``value`` of every rank, in rank order (just ``[value]`` outside a process group)."""
        if not dist.is_initialized():
            return [value]
        mine = torch.tensor([value], dtype=torch.float64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        return [float(t.item()) for t in every]

    def summary(self) -> Dict[str, Any]:
        return {"passed": self.passed, "every_iterations": self.every}


def end_together(engine: Engine) -> None:
    """At the end of training every rank waits for the others (rank 0 validates and publishes first), so that no rank
    destroys the process group while another still talks to it: under load, a rank that left first was aborted by
    gloo ("terminate called without an active exception"). Attach it last, on every rank."""
    if dist.is_initialized():
        dist.barrier()
