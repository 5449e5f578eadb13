"""nnU-Net v2 trained-model folders, checked on import and run through nnU-Net's own predictor.

A folder is what ``nnUNetv2_train`` leaves (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``) and what
TotalSegmentator ships, one folder per part of a task. A model may be several folders ("parts"): each class name of
the label map is looked up in the parts in order.

The input goes through nnU-Net's own reader (the plans' ``image_reader_writer``), preprocessing, sliding window and
export (``write_seg``), so a prediction here is the one ``nnUNetv2_predict`` would make; the written result is then
resampled by physical coordinates onto the scan's own grid (an identity for SimpleITK-read scans).

Checkpoints are pickles (nnU-Net loads them with ``weights_only=False``): import only result folders you trust, as
you would run their code. The import is an administrator's command on the server machine, never a request.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from amoslabel.errors import InputError
from amoslabel.organs import NUM_CLASSES

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
#: folder offset of a part's class indices in a combined table (part p, class i -> p * PART_STRIDE + i)
PART_STRIDE = 1000


@dataclass(frozen=True)
class NnUNetPart:
    """One checked result folder: its folds, its classes and how it was trained."""

    folder: Path
    folds: Tuple[str, ...]
    classes: Dict[str, int]
    trainer: str
    configuration: str
    file_ending: str

    def files(self) -> List[Path]:
        """What serving needs, relative to the folder (no logs, no validation outputs)."""
        return [Path("dataset.json"), Path("plans.json")] + [Path(f"fold_{f}") / CHECKPOINT for f in self.folds]


def inspect_part(folder: Path, folds: Optional[Sequence[str]] = None) -> NnUNetPart:
    """Check an nnU-Net v2 result folder whole, and load its checkpoints into nnU-Net's network.

    Raises:
        InputError: a missing file or fold, region-based labels, or a checkpoint that does not load.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (an nnU-Net v2 result folder: dataset.json, plans.json, fold_*)")
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name}; is it an nnU-Net v2 result folder (Trainer__Plans__config)?")
    try:
        dataset = json.loads((folder / "dataset.json").read_text())
        json.loads((folder / "plans.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{folder}: dataset.json or plans.json is not valid JSON ({exc})") from None
    found = sorted(p.parent.name.removeprefix("fold_") for p in folder.glob(f"fold_*/{CHECKPOINT}"))
    wanted = [str(f) for f in folds] if folds else found
    missing = [f for f in wanted if f not in found]
    if missing or not wanted:
        raise InputError(
            f"{folder}: fold(s) {missing or 'any'} missing: no fold_<n>/{CHECKPOINT}; folds present: {found or 'none'}"
        )
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or any(not isinstance(v, int) for v in labels.values()):
        raise InputError(
            f"{folder}: dataset.json labels must map class names to integers (region-based models are not supported)"
        )
    predictor = _predictor(torch.device("cpu"), use_mirroring=False)
    try:
        predictor.initialize_from_trained_model_folder(str(folder), tuple(wanted), CHECKPOINT)
        for parameters in predictor.list_of_parameters:  # every fold, not only the first
            predictor.network.load_state_dict(parameters)
    except Exception as exc:  # a pickle, a network or a state dict: nnU-Net raises many kinds
        raise InputError(
            f"{folder}: a checkpoint does not load into nnU-Net's network: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return NnUNetPart(
        folder,
        tuple(wanted),
        {str(k): int(v) for k, v in labels.items()},
        predictor.trainer_name,
        folder.name.split("__")[-1],  # nnU-Net names result folders Trainer__Plans__configuration
        str(dataset.get("file_ending", ".nii.gz")),
    )


def combined_classes(tables: Sequence[Mapping[str, int]]) -> Dict[str, int]:
    """Class name -> ``part * PART_STRIDE + index`` over the parts' ``{name: index}`` tables; a name in two parts is
    taken from the first."""
    table: Dict[str, int] = {}
    for p, classes in enumerate(tables):
        for name, index in classes.items():
            if int(index) > 0:
                table.setdefault(str(name), p * PART_STRIDE + int(index))
    return table


def _predictor(device: torch.device, use_mirroring: bool):
    # nnU-Net warns at import when its data folders are unset; serving needs none of them
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(variable, os.path.join(tempfile.gettempdir(), "amoslabel-nnunet-unused"))
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):  # it prints that a CPU cannot keep everything on the device
        return nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )


class NnUNetRunner:
    """The parts of one imported model, loaded once per device and mirroring choice, predicting on a scan."""

    def __init__(self, folders: Sequence[Path], folds: Sequence[Sequence[str]]):
        self.folders = [Path(f) for f in folders]
        self.folds = [tuple(f) for f in folds]
        self._loaded: Dict[Tuple[str, bool], list] = {}

    def classes(self) -> Dict[str, int]:
        """The parts' classes, combined (:func:`combined_classes`)."""
        return combined_classes([json.loads((f / "dataset.json").read_text())["labels"] for f in self.folders])

    def _predictors(self, device: str, use_mirroring: bool) -> list:
        key = (device, use_mirroring)
        if key not in self._loaded:
            self._loaded.clear()  # one set of weights per process
            predictors = []
            for folder, folds in zip(self.folders, self.folds):
                predictor = _predictor(torch.device(device), use_mirroring)
                predictor.initialize_from_trained_model_folder(str(folder), folds, CHECKPOINT)
                predictors.append(predictor)
            self._loaded[key] = predictors
        return self._loaded[key]

    def predict(
        self, image: sitk.Image, device: str, use_mirroring: bool, probabilities: bool = False
    ) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """Per part: (class map (z, y, x) on ``image``'s grid, class probabilities (K, z, y, x) or None)."""
        out = []
        with tempfile.TemporaryDirectory(prefix="amoslabel-nnunet-") as tmp:
            for p, predictor in enumerate(self._predictors(device, use_mirroring)):
                ending = predictor.dataset_json.get("file_ending", ".nii.gz")
                source = Path(tmp) / f"case_{p}_0000{ending}"
                sitk.WriteImage(image, str(source))
                reader = predictor.plans_manager.image_reader_writer_class()
                data, properties = reader.read_images([str(source)])
                result = predictor.predict_single_npy_array(data, properties, None, None, probabilities)
                seg, probs = result if probabilities else (result, None)
                written = Path(tmp) / f"seg_{p}{ending}"
                reader.write_seg(np.asarray(seg), str(written), properties)
                classes = sitk.Resample(
                    sitk.ReadImage(str(written)), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0
                )
                out.append((sitk.GetArrayFromImage(classes), _on_grid(probs, reader, image)))
        return out


def _on_grid(probs: Optional[np.ndarray], reader, image: sitk.Image) -> Optional[np.ndarray]:
    """nnU-Net's probabilities in ``image``'s (z, y, x) array order, for the readers whose axis order is known."""
    if probs is None:
        return None
    name = type(reader).__name__
    if name == "SimpleITKIO":
        return np.asarray(probs, np.float32)
    if name == "NibabelIO":
        return np.ascontiguousarray(np.asarray(probs, np.float32).transpose(0, 3, 2, 1))
    log.info(f"nnU-Net reader {name} reorients: its probabilities are not used for scoring")
    return None


def to_amos(parts: Sequence[np.ndarray], chosen: Mapping[int, int]) -> np.ndarray:
    """Per-part class maps -> one AMOS label map; an organ from an earlier part wins a voxel claimed twice."""
    out = np.zeros(parts[0].shape, np.uint8)
    for amos_id, combined in sorted(chosen.items()):
        part, index = divmod(combined, PART_STRIDE)
        out[(parts[part] == index) & (out == 0)] = amos_id
    return out


def to_amos_probabilities(parts: Sequence[np.ndarray], chosen: Mapping[int, int]) -> np.ndarray:
    """Per-part class probabilities -> (16, z, y, x) AMOS probabilities (background: what the organs leave)."""
    out = np.zeros((NUM_CLASSES,) + parts[0].shape[1:], np.float32)
    for amos_id, combined in chosen.items():
        part, index = divmod(combined, PART_STRIDE)
        out[amos_id] = parts[part][index]
    out[0] = np.clip(1.0 - out[1:].sum(axis=0), 0.0, 1.0)
    return out
