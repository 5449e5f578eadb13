"""What every worker of a cohort run needs to rebuild the server's own tasks in its process."""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from amoslabel.config import AppConfig, load_config
from amoslabel.workspace import Workspace


@dataclass(frozen=True)
class CohortSpec:
    """A cohort run's settings, small and picklable: each worker rebuilds config and tasks from it.

    Attributes:
        studies: the studies folder (a path every node of the Ray cluster sees: shared storage).
        model: the served model (``unet``, ``vnet``, an imported model).
        version: the model version every case gets (fixed on the driver before the run).
        config_path: ``apps.yaml`` (None: the repository's).
        overrides: ``--conf``-style overrides (preset, review_database ...), as a tuple of pairs (hashable).
        device: ``auto``, ``cpu`` or ``cuda``.
        torch_threads: intra-op threads of each model worker on a CPU.
    """

    studies: str
    model: str
    version: int
    config_path: Optional[str] = None
    overrides: Tuple[Tuple[str, Any], ...] = field(default_factory=tuple)
    device: str = "auto"
    torch_threads: int = 1

    def config(self) -> AppConfig:
        return _config(self.config_path, self.overrides)


@functools.lru_cache(maxsize=4)
def _config(path: Optional[str], overrides: Tuple[Tuple[str, Any], ...]) -> AppConfig:
    return load_config(path, dict(overrides))


@functools.lru_cache(maxsize=4)
def network_task(spec: CohortSpec):
    """The model's infer task in this process, built as the server builds it (:class:`models.serving.ServedModels`),
    once per process."""
    from models.serving import ServedModels

    config = spec.config()
    served = ServedModels(config, Workspace(spec.studies).models(config.storage.models_dir), atlas=None)
    found = {**served.networks, **served.imported}.get(spec.model)
    if found is None:
        raise KeyError(spec.model)
    return found.infer()


def pack(data: Dict[str, Any]) -> bytes:
    """A case's working data as one row value: Ray Data's Arrow blocks do not hold nested Python objects."""
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Dict[str, Any]:
    return pickle.loads(blob)
