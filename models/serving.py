"""The models this app serves, each set up by its own config object, and which one answers a pre-label request.

As in MONAI Label's radiology app, the app's ``init_infers`` and ``init_trainers`` only ask each model's config for
its ``infer()`` and ``trainer()``; what a model needs (its version store, its tasks) is decided here.

Routing a request: an unknown model is a 404; a network with no trained version hands its request to the atlas
prior, and the result says so (``requested_model``, ``fallback``): random weights are never offered as a pre-label.
A request that pins a version gets that version or a 404/409, never the prior.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from amoslabel.config import AppConfig
from amoslabel.errors import NotFound
from models.infer_task import SegmentationInferTask
from models.prior_task import PRIOR_MODEL, AtlasCache, PriorInferTask
from models.train_task import SegmentationTrainTask
from models.versions import ModelStore

log = logging.getLogger(__name__)

FinalLabels = Callable[[], List[Dict[str, Any]]]


class NetworkConfig:
    """One served network (``unet``, ``vnet``, ...): its version store, its infer task and its train task."""

    def __init__(self, name: str, config: AppConfig, models_dir: Path):
        self.name = name
        self.config = config
        self.store = ModelStore(models_dir, name)

    def infer(self) -> SegmentationInferTask:
        return SegmentationInferTask(self.name, self.config, self.store)

    def trainer(self, studies: str, final_labels: FinalLabels) -> SegmentationTrainTask:
        return SegmentationTrainTask(self.name, self.config, self.store, studies, final_labels)


class PriorConfig:
    """The atlas prior, served as model ``prior``: no training, built from the final labels and label maps."""

    name = PRIOR_MODEL

    def __init__(self, config: AppConfig, atlas: AtlasCache):
        self.config = config
        self.atlas = atlas

    def infer(self) -> PriorInferTask:
        return PriorInferTask(self.config, self.atlas)


class ServedModels:
    """Every model of ``apps.yaml``'s ``models`` plus the atlas prior, with their tasks."""

    def __init__(self, config: AppConfig, models_dir: Path, atlas: AtlasCache):
        self.networks = {name: NetworkConfig(name, config, models_dir) for name in config.models}
        self.prior = PriorConfig(config, atlas)

    def infers(self) -> Dict[str, InferTask]:
        return {**{name: c.infer() for name, c in self.networks.items()}, PRIOR_MODEL: self.prior.infer()}

    def trainers(self, studies: str, final_labels: FinalLabels) -> Dict[str, TrainTask]:
        return {name: c.trainer(studies, final_labels) for name, c in self.networks.items()}

    def stores(self) -> Dict[str, ModelStore]:
        return {name: c.store for name, c in self.networks.items()}

    def serving_versions(self) -> Dict[str, Optional[int]]:
        """The version each network serves now (None: not trained yet)."""
        return {name: (v.number if (v := store.champion()) else None) for name, store in self.stores().items()}

    def log_state(self) -> None:
        """Say which version serves, and which networks the prior stands in for."""
        for name, number in self.serving_versions().items():
            if number is None:
                log.warning(
                    f"Model {name!r} has no trained version: the atlas prior pre-labels in its place until it is "
                    f"trained (POST /train/{name})."
                )


def route_request(request: Dict[str, Any], infers: Mapping[str, InferTask]) -> Dict[str, Any]:
    """The request with the model that answers it (see the module docstring); 404 for an unknown model."""
    model = request.get("model")
    if model and model not in infers:
        raise NotFound(f"no model {model!r}; models: {sorted(infers)}")
    task = infers.get(model)
    pinned = str(request.get("model_version") or "latest").strip().lower() != "latest"
    if isinstance(task, SegmentationInferTask) and not pinned and task.store.champion() is None:
        log.info(f"model {model!r} has no trained version: pre-labelling with the atlas prior")
        request = {**request, "requested_model": model, "model": PRIOR_MODEL}
    return request


def check_model_name(model: Any, *known: Mapping[str, Any]) -> None:
    """404 for a model name that none of ``known`` (trainers, infers) has.

    MONAI Label's ``/train/{model}`` queues a training subprocess without checking the name; the app calls this from
    ``bundle_path``, the one call that endpoint makes in the server process first.
    """
    if isinstance(model, str) and model and not any(model in k for k in known):
        raise NotFound(f"no model {model!r}; models: {sorted(known[0]) if known else []}")
