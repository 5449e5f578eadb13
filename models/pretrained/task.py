"""MONAI Label infer task of an imported model: its own pipeline for imported versions, ours for fine-tuned ones.

An imported version runs through its format's runner (nnU-Net's predictor, or the bundle's own pipeline); the label
map turns its classes into AMOS ids; the result lands on the scan's exact grid (size, spacing, origin, direction)
and carries the same metadata as a trained model's pre-label, plus the model's origin, fingerprint and label map. A
version trained here from an imported bundle (fine-tuned) is served by :class:`SegmentationInferTask`, like any
trained version.

Request parameters: ``model_version``, ``modality``, ``tta`` (nnU-Net's mirroring), ``device``, and ``sex``
(male|female) for label 15 where the model's map depends on it (else the case's import record, else the DICOM
header, else unknown).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from monailabel.tasks.infer.basic_infer import BasicInferTask

from amoslabel.config import AppConfig, NetworkSettings
from amoslabel.dicom.series import series_headers
from amoslabel.errors import Conflict
from amoslabel.volume import Geometry
from models.infer_task import (
    SegmentationInferTask,
    segmentation_task_args,
    as_bool,
    first_value,
    labels_present,
    resolve_device,
    sha256_of,
    write_prelabel,
)
from models.inference_gate import InferenceGate
from models.preprocessing import LoadVolumed, ResolveModalityd
from models.pretrained.bundle import BundleRunner
from models.pretrained.label_maps import LabelMap
from models.pretrained.nnunet import NnUNetRunner, to_amos, to_amos_probabilities
from models.versions import IMPORTED_DIR, ModelStore, ModelVersion

log = logging.getLogger(__name__)


class ImportedInferTask(BasicInferTask):
    """Pre-label with an imported model (``models import``), by name, like any served model."""

    def __init__(self, name: str, config: AppConfig, store: ModelStore, trainable: Optional[NetworkSettings]):
        self.model_name = name
        self.app_config = config
        self.store = store
        self.gate = InferenceGate(store.root.parent)
        # versions fine-tuned here are served as every trained version is
        self.trained = SegmentationInferTask(name, config, store, trainable) if trainable else None
        self._runners: Dict[int, Any] = {}
        first = store.get(store.numbers()[0]).meta
        description = (
            f"15 AMOS organs, imported {first['imported']['format']} model (label map {first['label_map']['name']})"
        )
        super().__init__(**segmentation_task_args(config, description, sex="unknown"))

    def is_valid(self) -> bool:
        return True

    # the imported pipeline replaces MONAI Label's transform chain (see __call__)
    def pre_transforms(self, data=None):
        return []

    def post_transforms(self, data=None):
        return []

    def info(self) -> Dict[str, Any]:
        info = super().info()
        champion = self.store.champion()
        info.update(
            {
                "imported": champion.meta.get("imported") if champion else None,
                "versions": self.store.numbers(),
                "serving_version": champion.number if champion else None,
                "trained": True,
            }
        )
        return info

    # -- one request ------------------------------------------------------------------------------------------
    def __call__(self, request: Dict[str, Any], callbacks=None) -> Tuple[Any, Dict[str, Any]]:
        version = self.store.resolve(request.get("model_version"))
        if "imported" not in version.meta:
            if self.trained is None:
                raise Conflict(f"{version.tag} was not imported and this model cannot be trained here")
            return self.trained(request, callbacks)
        device = resolve_device(first_value(request.get("device")))
        data = ResolveModalityd()(LoadVolumed(self.app_config.storage.max_image_voxels)({**request}))
        image: sitk.Image = data["image"]
        with self.gate.held():
            amos, record = self.predict(version, image, device, request, data.get("case_record") or {})
        label = sitk.GetImageFromArray(amos)
        label.CopyInformation(image)
        path = write_prelabel(label, request.get("result_extension"))
        imported = version.meta["imported"]
        result = {
            "model": self.model_name,
            "model_version": version.number,
            "model_tag": version.tag,
            "imported": {k: imported.get(k) for k in ("format", "fingerprint", "imported_at", "parts", "source")},
            "label_map": record,
            "preset": self.app_config.preset,
            "config_fingerprint": self.app_config.fingerprint(),
            "tta_flip": as_bool(request.get("tta", self.app_config.active.inference.tta_flip)),
            "device": device,
            "input_sha256": sha256_of(data.get("image_path")),
            "preprocessing": {
                "modality": data.get("modality"),
                "modality_source": data.get("modality_source"),
                "input_geometry": Geometry.of(image).to_json(),
                "pipeline": f"the imported model's own ({imported['format']})",
            },
            "organs_found": sorted(int(v) for v in labels_present(label)),
        }
        if request.get("requested_model") not in (None, self.model_name):
            result["requested_model"] = request["requested_model"]
            result["fallback"] = f"model {request['requested_model']!r} has no trained version yet"
        return path, result

    def predict(
        self, version: ModelVersion, image: sitk.Image, device: str, request: Dict[str, Any], case: Dict[str, Any]
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The AMOS label map (z, y, x, uint8) of ``image`` and the label map's record (classes used, empty)."""
        labels = LabelMap.from_json(version.meta["label_map"])
        runner = self._runner(version)
        sex = patient_sex(request, case)
        if isinstance(runner, NnUNetRunner):
            tta = as_bool(request.get("tta", self.app_config.active.inference.tta_flip))
            parts = runner.predict(image, device, tta)
            chosen, empty = labels.resolve(runner.classes(), sex)
            amos = to_amos([classes for classes, _ in parts], chosen)
        else:
            chosen, empty = labels.resolve(runner.classes(), sex)
            amos = labels.apply(runner.predict(image, device), chosen)
        return amos, {**labels.as_record(chosen, empty), "patient_sex": sex or "unknown"}

    def probabilities(self, image_path: str, modality: str) -> Tuple[np.ndarray, Geometry, int]:
        """The serving version's AMOS class probabilities on the scan's own grid (for the scoring ensemble)."""
        version = self.store.champion()
        if version is None:
            raise Conflict(f"model {self.model_name!r} has no version")
        if "imported" not in version.meta and self.trained is not None:
            return self.trained.probabilities(image_path, modality)
        image = LoadVolumed(self.app_config.storage.max_image_voxels)({"image": image_path})["image"]
        labels = LabelMap.from_json(version.meta["label_map"])
        runner = self._runner(version)
        device = resolve_device(None)
        if isinstance(runner, NnUNetRunner):
            parts = [probs for _, probs in runner.predict(image, device, False, probabilities=True)]
            if any(p is None for p in parts):
                raise Conflict(f"{version.tag}: this nnU-Net reader's probabilities cannot be placed on the scan")
            chosen, _ = labels.resolve(runner.classes(), None)
            probs = to_amos_probabilities(parts, chosen)
        else:
            chosen, _ = labels.resolve(runner.classes(), None)
            probs = labels.apply_probabilities(runner.predict(image, device, probabilities=True), chosen)
        return probs, Geometry.of(image), version.number

    # -- the runners ------------------------------------------------------------------------------------------
    def _runner(self, version: ModelVersion):
        if version.number not in self._runners:
            self._runners.clear()  # one version's weights per process
            imported = version.meta["imported"]
            folder = version.path / IMPORTED_DIR
            if imported["format"] == "nnunetv2":
                parts = imported["parts"]
                runner: Any = NnUNetRunner([folder / p["folder"] for p in parts], [p["folds"] for p in parts])
            else:
                runner = BundleRunner(folder / "bundle")
            self._runners[version.number] = runner
        return self._runners[version.number]


def patient_sex(request: Dict[str, Any], case: Dict[str, Any]) -> Optional[str]:
    """male, female or None: the request's ``sex``, the import record's, or a DICOM series' PatientSex."""
    for value in (request.get("sex"), case.get("patient_sex")):
        text = str(value or "").strip().lower()
        if text in ("male", "m", "female", "f"):
            return "male" if text.startswith("m") else "female"
    image = request.get("image")
    if isinstance(image, str) and Path(image).is_dir():
        try:
            headers = next(iter(series_headers(image).values()))
            sex = str(headers[0].get("PatientSex", "") or "").strip().upper()
            return {"M": "male", "F": "female"}.get(sex)
        except (StopIteration, OSError, ValueError):
            return None
    return None
