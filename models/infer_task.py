"""MONAI Label infer task: pre-label a scan with the 15 AMOS organs using a trained model version."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from amoslabel.config import AppConfig, ModalityPlan, NetworkSettings, Normalisation
from amoslabel.data.locations import results_folder
from amoslabel.errors import Conflict, InputError
from amoslabel.files import file_sha256
from amoslabel.organs import NUM_CLASSES, label_table
from amoslabel.volume import Geometry, write_image
from models.inference import SlidingWindowPredictor
from models.networks import build_network
from models.preprocessing import (
    LoadVolumed,
    NormaliseIntensityd,
    ResampleToPland,
    ResolveModalityd,
    RestoreGeometryd,
    preprocessing_summary,
    zyx,
)
from models.inference_gate import InferenceGate
from models.versions import ModelStore, ModelVersion

logger = logging.getLogger(__name__)


class VersionRecipe:
    """How a model version wants its input prepared: per-modality plans, normalisation and training patch."""

    def __init__(
        self,
        plans: Dict[str, ModalityPlan],
        normalisation: Dict[str, Normalisation],
        train_patch_xyz: Sequence[int] | None,
    ):
        self.plans = plans
        self.normalisation = normalisation
        self.train_patch_xyz = tuple(train_patch_xyz) if train_patch_xyz else None

    @classmethod
    def of(cls, version: ModelVersion, fallback: AppConfig) -> "VersionRecipe":
        meta = version.meta
        plans = {m: ModalityPlan.model_validate(p) for m, p in meta.get("plans", {}).items()} or dict(
            fallback.active.plans
        )
        norms = {m: Normalisation.model_validate(n) for m, n in meta.get("normalisation", {}).items()} or {
            m: s.normalisation for m, s in fallback.modalities.items()
        }
        return cls(plans, norms, meta.get("train_patch_size"))

    def patch_size(self, modality: str) -> Tuple[int, int, int]:
        """Sliding-window size (x, y, z): the training patch when recorded, else the modality plan's."""
        return self.train_patch_xyz or self.plans[modality].patch_size

    def patch_mm(self, modality: str) -> Tuple[float, float, float]:
        """The extent (x, y, z) in mm of one patch at the modality's spacing: the context the network learned from."""
        return tuple(float(n) * s for n, s in zip(self.patch_size(modality), self.plans[modality].spacing))


def segmentation_task_args(config: AppConfig, description: str, **params: Any) -> Dict[str, Any]:
    """MONAI Label's infer-task arguments for a 15-organ pre-labeler; ``params`` adds request parameters."""
    default_device = resolve_device(config.device)
    return {
        "path": None,
        "network": None,
        "type": InferType.SEGMENTATION,
        "labels": label_table(),
        "dimension": 3,
        "description": description,
        "config": {
            "model_version": "latest",
            "modality": "auto",
            "tta": config.active.inference.tta_flip,
            **params,
            "device": [default_device] + [d for d in ("cpu", "cuda") if d != default_device],
        },
    }


def resolve_device(name: str | None) -> str:
    """'auto' or None -> 'cuda' when a GPU is present, else 'cpu'; 'cuda*' falls back to 'cpu' without one."""
    if not name or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return name


class SegmentationInferTask(BasicInferTask):
    """Pre-label with one served model (``unet``, ``vnet``, ...), using its newest version unless told otherwise.

    Request parameters (``params`` in MONAI Label's ``/infer/{model}``):
        model_version: a version number, or ``latest`` (default).
        modality: ``ct`` or ``mri`` to override what the header, case record or id say.
        tta: true/false to override the preset's flip test-time augmentation.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, name: str, config: AppConfig, store: ModelStore, network: NetworkSettings | None = None):
        preset = config.active
        self.model_name = name
        self.app_config = config
        self.store = store
        # a network of the preset, or one given by its model (an imported bundle's, fine-tuned here)
        self.network_settings = network or preset.networks[name]
        self.gate = InferenceGate(store.root.parent)
        super().__init__(
            **segmentation_task_args(
                config, f"15 AMOS organs, {self.network_settings.network} ({config.preset} preset)"
            )
        )

    # -- for scoring ----------------------------------------------------------------------------------------------
    def probabilities(self, image_path: str, modality: str) -> Tuple[np.ndarray, Geometry, int]:
        """The serving version's soft prediction of a scan, without restoring it to the scan's grid.

        Runs the same preprocessing and sliding window as a pre-label (so a version gets the spacing and
        normalisation it was trained with), and stops before the argmax.

        Returns:
            (class probabilities (C, z, y, x) float32 on the network's grid, that grid, the version number).
        """
        data = self.prepare(image_path, modality)
        return self.predict(data, resolve_device(None)), data["grid"], int(data["model_version"])

    def prepare(self, image_path: str, modality: str, version: int | None = None) -> Dict[str, Any]:
        """Read and preprocess a scan for the serving version (or ``version``): the CPU half of a prediction."""
        if version is None:
            champion = self.store.champion()
            if champion is None:
                raise Conflict(f"model {self.model_name!r} has no trained version yet")
            version = champion.number
        data: Dict[str, Any] = {"image": image_path, "model_version": version, "modality": modality}
        for transform in self.pre_transforms(data):
            data = transform(data)
        return data

    def predict(self, data: Dict[str, Any], device: str) -> np.ndarray:
        """Class probabilities (C, z, y, x) float32 on the network grid of a prepared scan: the network's half."""
        network = self._get_network(device, data)
        inputs = torch.as_tensor(data["image"])[None].to(device)
        return self.inferer(data)(inputs, network)[0].float().cpu().numpy()

    # -- MONAI Label hooks --------------------------------------------------------------------------------------
    def is_valid(self) -> bool:
        # Listed in /info even before training, so clients see the model; until a version exists the app sends its
        # requests to the atlas prior, and a request pinning a version gets 409.
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        latest = self.store.latest()
        champion = self.store.champion()
        info.update(
            {
                "network": self.network_settings.network,
                "preset": self.app_config.preset,
                "versions": self.store.numbers(),
                "latest_version": latest.number if latest else None,
                "serving_version": champion.number if champion else None,
                "trained": latest is not None,
            }
        )
        if latest is None:
            info["description"] += " - not trained yet: the atlas prior pre-labels until a version is trained"
        return info

    def __call__(self, request: Dict[str, Any], callbacks=None) -> Tuple[Any, Dict[str, Any]]:
        request = dict(request)
        version = self.store.resolve(request.get("model_version"))  # 409 before any work if nothing is trained
        request["model_version"] = version.number
        request["device"] = resolve_device(first_value(request.get("device")))
        with self.gate.held():  # a training run on this device waits between iterations (inference_gate.py)
            label_file, result = super().__call__(request, callbacks)
        return label_file, result

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        # A version carries the spacing and normalisation it was trained with; those, not the preset in use now,
        # are what its input must get.
        recipe = VersionRecipe.of(self.store.get(int(data["model_version"])), self.app_config)
        return [
            LoadVolumed(self.app_config.storage.max_image_voxels),
            ResolveModalityd(),
            NormaliseIntensityd(recipe.normalisation),
            ResampleToPland(recipe.plans),
        ]

    def inferer(self, data=None) -> SlidingWindowPredictor:
        settings = self.app_config.active.inference
        recipe = VersionRecipe.of(self.store.get(int(data["model_version"])), self.app_config)
        tta = as_bool(data.get("tta", settings.tta_flip))
        return SlidingWindowPredictor(
            zyx(recipe.patch_size(data["modality"])), settings.sw_overlap, settings.sw_batch_size, tta
        )

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [RestoreGeometryd()]

    def _get_network(self, device: str, data: Dict[str, Any]) -> torch.nn.Module:
        version = self.store.get(int(data["model_version"]))
        key = (version.number, device)
        cached = self._networks.get(key)
        if cached is None:
            network = self._build(version).to(torch.device(device)).eval()
            self._networks.clear()  # one version per process: a newer one replaces it
            self._networks[key] = network
            cached = network
        return cached

    def _build(self, version: ModelVersion) -> torch.nn.Module:
        spec = version.meta.get("network", {})
        network = build_network(
            spec.get("name", self.network_settings.network), spec.get("params", self.network_settings.params)
        )
        network.load_state_dict(self.store.load_weights(version))
        return network

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[str, Dict[str, Any]]:
        label: sitk.Image = data["pred"]
        path = write_prelabel(label, data.get("result_extension"))
        version = self.store.get(int(data["model_version"]))
        result = {
            "model": self.model_name,
            "model_version": version.number,
            "model_tag": version.tag,
            "network": version.meta.get("network"),
            "preset": self.app_config.preset,
            "config_fingerprint": self.app_config.fingerprint(),
            "tta_flip": as_bool(data.get("tta", self.app_config.active.inference.tta_flip)),
            "sw_overlap": self.app_config.active.inference.sw_overlap,
            "device": str(data.get("device")),
            "input_sha256": sha256_of(data.get("image_path")),
            "preprocessing": preprocessing_summary(data),
            "organs_found": sorted(int(v) for v in labels_present(label)),
        }
        return path, result


RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")  # what a viewer may ask for (MONAI Label's OHIF panel: .nrrd)


def write_prelabel(label: sitk.Image, extension: Any = None) -> str:
    """Write a pre-label (UInt8) where MONAI Label will send it from, as ``extension`` asks; returns the path.

    Raises:
        InputError: an extension other than :data:`RESULT_EXTENSIONS`.
    """
    extension = extension or ".nii.gz"
    if extension not in RESULT_EXTENSIONS:
        raise InputError(f"result_extension must be one of {', '.join(RESULT_EXTENSIONS)}, not {str(extension)[:20]!r}")
    results = results_folder()
    results.mkdir(exist_ok=True)
    fd, path = tempfile.mkstemp(suffix=extension, prefix="prelabel-", dir=results)
    os.close(fd)
    # NRRD raw: the OHIF panel reads the voxels as they are (it sends result_compress false)
    write_image(sitk.Cast(label, sitk.sitkUInt8), path, compress=extension == ".nii.gz")
    return path


def labels_present(label: sitk.Image):
    counts = np.bincount(sitk.GetArrayViewFromImage(label).ravel(), minlength=NUM_CLASSES)
    return [int(c) for c in np.flatnonzero(counts[1:]) + 1]


def sha256_of(path: Any) -> str | None:
    """The input file's SHA-256 for a pre-label's record (None when the input is not one file, e.g. a series)."""
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    return file_sha256(path)


def first_value(value: Any) -> Any:
    """A request parameter that a client may send as a list (MONAI Label's config lists): its first entry."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def as_bool(value: Any) -> bool:
    """A request flag as a bool ("true", "1", "yes", "on" and true are true)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
