"""The models this app serves, each set up by its own config object, and which one answers a pre-label request.

As in MONAI Label's radiology app, the app's ``init_infers`` and ``init_trainers`` only ask each model's config for
its ``infer()`` and ``trainer()``; what a model needs (its version store, its tasks) is decided here.

Imported pretrained models (``python -m amoslabel models import``, :mod:`models.pretrained`) are found in the models
folder at start and served beside them by name; one whose network we can train (a MONAI bundle's) also gets a train
task, which fine-tunes it.

Routing a request: an unknown model is a 404; a network with no trained version hands its request to the fallback
(``apps.yaml``'s ``fallback_model``: the atlas prior, or an imported model), and the result says so
(``requested_model``, ``fallback``): random weights are never offered as a pre-label. A request that pins a version
gets that version or a 404/409, never the fallback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from amoslabel.config import AppConfig, NetworkSettings
from amoslabel.errors import NotFound
from amoslabel.modality import ModalityEvidence, resolve_modality
from amoslabel.volume import read_header
from models.click_scribbles import ScribbleInferTask
from models.click_task import ClickInferTask, CurrentLabel
from models.click_train import ClickTrainTask
from models.infer_task import SegmentationInferTask
from models.prior_task import PRIOR_MODEL, AtlasCache, PriorInferTask
from models.pretrained.task import ImportedInferTask
from models.train_task import SegmentationTrainTask
from models.versions import META_FILE, ModelStore

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

    def network_settings(self) -> NetworkSettings:
        return self.config.active.networks[self.name]

    def trainer(self, studies: str, final_labels: FinalLabels) -> SegmentationTrainTask:
        return SegmentationTrainTask(self.name, self.config, self.store, studies, final_labels)


class ImportedConfig:
    """An imported pretrained model: its own infer task; a train task (fine-tuning) where its network is trainable."""

    def __init__(self, name: str, config: AppConfig, store: ModelStore):
        self.name = name
        self.config = config
        self.store = store
        first = store.get(store.numbers()[0]).meta
        spec = first.get("network")
        self.trainable = NetworkSettings(network=spec["name"], params=spec["params"]) if spec else None

    def infer(self) -> ImportedInferTask:
        return ImportedInferTask(self.name, self.config, self.store, self.trainable)

    def trainer(self, studies: str, final_labels: FinalLabels) -> Optional[SegmentationTrainTask]:
        if self.trainable is None:
            return None
        return SegmentationTrainTask(self.name, self.config, self.store, studies, final_labels, self.trainable)


def imported_models(models_dir: Path, taken: List[str]) -> List[str]:
    """Names of the models in ``models_dir`` whose first version was imported (not one of ``taken``)."""
    found = []
    for folder in sorted(p for p in Path(models_dir).iterdir() if p.is_dir() and p.name not in taken):
        first = folder / "v0001" / META_FILE
        if first.is_file() and "imported" in json.loads(first.read_text()):
            found.append(folder.name)
    return found


class PriorConfig:
    """The atlas prior, served as model ``prior``: no training, built from the final labels and label maps."""

    name = PRIOR_MODEL

    def __init__(self, config: AppConfig, atlas: AtlasCache):
        self.config = config
        self.atlas = atlas

    def infer(self) -> PriorInferTask:
        return PriorInferTask(self.config, self.atlas)


class ClickConfig:
    """The click model (``apps.yaml`` ``clicks``): the base model's architecture with guidance inputs; own versions."""

    def __init__(self, config: AppConfig, models_dir: Path, base: NetworkConfig):
        self.name = config.clicks.model
        self.scribbles_name = f"{self.name}_scribbles"  # the same network, for Slicer's Scribbles section
        self.config = config
        self.store = ModelStore(models_dir, self.name)
        self.base = base

    def infer(self, current_label: Optional[CurrentLabel] = None) -> ClickInferTask:
        return ClickInferTask(
            self.name, self.config, self.store, self.base.store, self.base.network_settings(), current_label
        )

    def trainer(self, studies: str, final_labels: FinalLabels) -> ClickTrainTask:
        return ClickTrainTask(
            self.name, self.config, self.store, self.base.store, self.base.network_settings(), studies, final_labels
        )


class ServedModels:
    """Every model of ``apps.yaml``'s ``models``, the imported models, and the atlas prior, with their tasks."""

    def __init__(self, config: AppConfig, models_dir: Path, atlas: AtlasCache):
        self.networks = {name: NetworkConfig(name, config, models_dir) for name in config.models}
        self.imported = {
            name: ImportedConfig(name, config, ModelStore(models_dir, name))
            for name in imported_models(models_dir, list(config.models) + [PRIOR_MODEL])
        }
        self.prior = PriorConfig(config, atlas)
        base = self.networks.get(config.clicks.base_model)
        self.clicks = ClickConfig(config, models_dir, base) if config.clicks.enabled and base else None
        if config.clicks.enabled and base is None:
            log.warning(f"clicks: base model {config.clicks.base_model!r} is not served, so no click model is")

    def infers(self, current_label: Optional[CurrentLabel] = None) -> Dict[str, InferTask]:
        """Every model's infer task; ``current_label`` tells the click model a case's label for a user."""
        return {
            **{name: c.infer() for name, c in self.networks.items()},
            **{name: c.infer() for name, c in self.imported.items()},
            PRIOR_MODEL: self.prior.infer(),
            **(self._click_infers(current_label) if self.clicks else {}),
        }

    def _click_infers(self, current_label: Optional[CurrentLabel]) -> Dict[str, InferTask]:
        """The click model's task, and Slicer's scribbles on it (one network in memory for both)."""
        clicks = self.clicks.infer(current_label)
        return {
            self.clicks.name: clicks,
            self.clicks.scribbles_name: ScribbleInferTask(self.clicks.scribbles_name, clicks),
        }

    def click_models(self) -> List[str]:
        """The models whose answer is saved as the user's label version (clicks, scribbles), not as a pre-label."""
        return [self.clicks.name, self.clicks.scribbles_name] if self.clicks else []

    def trainers(self, studies: str, final_labels: FinalLabels) -> Dict[str, TrainTask]:
        configs: Dict[str, Any] = {**self.networks, **self.imported}
        if self.clicks:
            configs[self.clicks.name] = self.clicks
        tasks = {name: c.trainer(studies, final_labels) for name, c in configs.items()}
        return {name: task for name, task in tasks.items() if task is not None}

    def stores(self) -> Dict[str, ModelStore]:
        """The version stores of the models that train here (the retraining trigger's)."""
        trainable = {name: c.store for name, c in self.imported.items() if c.trainable is not None}
        clicks = {self.clicks.name: self.clicks.store} if self.clicks else {}
        return {**{name: c.store for name, c in self.networks.items()}, **trainable, **clicks}

    def scorers(self) -> List[str]:
        """The models whose soft predictions join the scoring ensemble: the networks and every imported model."""
        return list(self.networks) + list(self.imported)

    def serving_versions(self) -> Dict[str, Optional[int]]:
        """The version each model serves now (None: not trained yet)."""
        stores = {**self.stores(), **{name: c.store for name, c in self.imported.items()}}
        return {name: (v.number if (v := store.champion()) else None) for name, store in stores.items()}

    def log_state(self) -> None:
        """Say which version serves, and which networks the prior stands in for."""
        for name, number in self.serving_versions().items():
            if self.clicks and name == self.clicks.name:
                if number is None:
                    log.info(f"Click model {name!r}: no version trained on clicks; {self.clicks.base.name}'s answers")
            elif number is None:
                log.warning(
                    f"Model {name!r} has no trained version: the atlas prior pre-labels in its place until it is "
                    f"trained (POST /train/{name})."
                )


def route_request(
    request: Dict[str, Any], infers: Mapping[str, InferTask], fallback: str | Callable[[str], str] = PRIOR_MODEL
) -> Dict[str, Any]:
    """The request with the model that answers it (see the module docstring); 404 for an unknown model.

    ``fallback`` names the stand-in for a network with no trained version, or picks it by the scan's modality
    (:meth:`AppConfig.fallback_for`: CT and MRI each get their own, e.g. TotalSegmentator's ``total`` and
    ``total_mr``)."""
    model = request.get("model")
    if model and model not in infers:
        raise NotFound(f"no model {model!r}; models: {sorted(infers)}")
    task = infers.get(model)
    pinned = str(request.get("model_version") or "latest").strip().lower() != "latest"
    if isinstance(task, SegmentationInferTask) and not pinned and task.store.champion() is None:
        if callable(fallback):
            modality, source = routing_modality(request)
            fallback = fallback(modality)
            log.info(f"model {model!r}: the scan is {modality} ({source}): its fallback is {fallback!r}")
        stand_in = fallback if fallback in infers and fallback != model else PRIOR_MODEL
        log.info(f"model {model!r} has no trained version: pre-labelling with {stand_in!r}")
        request = {**request, "requested_model": model, "model": stand_in}
    return request


def routing_modality(request: Mapping[str, Any]) -> tuple[str, str]:
    """The scan's modality as known before it is read (the request's word, the case's import record, an AMOS id, the
    file name), else from its header (ITK reads the header alone); ``(modality, how it was decided)``."""
    image = request.get("image")
    evidence = ModalityEvidence(
        case_id=str(request.get("case_id") or ""),
        path=str(image or ""),
        requested=request.get("modality"),
        case_record=request.get("case_record") or {},
    )
    modality, source = resolve_modality(evidence)
    if source == "default" and isinstance(image, str) and Path(image).is_file():
        try:
            evidence.image = read_header(image)
            modality, source = resolve_modality(evidence)
        except RuntimeError:  # unreadable: the infer task refuses it with its reason
            log.debug("routing: the header of %s is unreadable", image)
    return modality, source


def check_model_name(model: Any, *known: Mapping[str, Any]) -> None:
    """404 for a model name that none of ``known`` (trainers, infers) has.

    MONAI Label's ``/train/{model}`` queues a training subprocess without checking the name; the app calls this from
    ``bundle_path``, the one call that endpoint makes in the server process first.
    """
    if isinstance(model, str) and model and not any(model in k for k in known):
        raise NotFound(f"no model {model!r}; models: {sorted(known[0]) if known else []}")
