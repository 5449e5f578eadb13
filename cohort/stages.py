"""The stages of a cohort run, each a callable on one case's packed working data.

Pre-labelling: ``read`` (load, modality) and ``preprocess`` (normalise, resample) on CPU tasks; ``network`` in a
model actor that holds the network resident; ``restore`` (probabilities back to the scan's exact grid) on a CPU task;
the driver writes. Scoring: ``read`` + ``preprocess`` for each scoring network on CPU, ``network`` in the actor, then
``score`` (members on one grid, the atlas prior, attention, entropies) on CPU. Each stage is the server's own code
(the infer task's transforms, inferer, restore and writer; the scorer's ``compute``), cut where the data is small.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Tuple

import numpy as np
import SimpleITK as sitk

from cohort.spec import CohortSpec, network_task, pack, unpack

Row = Dict[str, Any]  # {"case_id": str, "payload": bytes, "error": str}


def guarded(stage: str, work: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Callable[[Row], Row]:
    """Run ``work`` on a row's payload; a case whose input is bad carries its error on instead of failing the run.

    Only the case's own failures are caught (a corrupt file, a wrong geometry): a worker that dies is Ray's to
    retry, and is never reported as the case's failure.
    """

    def run(row: Row) -> Row:
        if row.get("error"):
            return row
        try:
            started = time.perf_counter()
            data = work(unpack(row["payload"]))  # transforms return new dicts: time the stage around them
            timings = data.setdefault("timings", {})
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
            return {**row, "payload": pack(data)}
        except Exception as e:  # noqa: BLE001 - reported per case in the run's summary
            return {**row, "payload": b"", "error": f"{stage}: {type(e).__name__}: {e}"[:500]}

    return run


class CpuStage:
    """A Ray Data callable class: a CPU stage (or two in a row) in a long-lived worker process.

    Tasks would do: but Ray ends idle task workers, and each new one pays for importing torch, MONAI and the app
    and for building the infer task (6 s, measured here) before its first case; a pool of these workers pays once.

    Args:
        stages: ``(name, callable on a case's data)`` pairs, run in order, each timed under its own name.
    """

    def __init__(self, *stages: Tuple[str, Callable[[Dict[str, Any]], Dict[str, Any]]]):
        self.stages = [guarded(name, work) for name, work in stages]

    def __call__(self, row: Row) -> Row:
        for stage in self.stages:
            row = stage(row)
        return row


def _transforms(spec: CohortSpec, data: Dict[str, Any]):
    return network_task(spec).pre_transforms(data)


class ReadStage:
    """Load the scan (with the size limit) and resolve its modality: the infer task's first two transforms."""

    def __init__(self, spec: CohortSpec):
        self.spec = spec

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        for transform in _transforms(self.spec, data)[:2]:
            data = transform(data)
        return data


class PreprocessStage:
    """Normalise and resample to the version's plan: the infer task's remaining transforms."""

    def __init__(self, spec: CohortSpec):
        self.spec = spec

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        for transform in _transforms(self.spec, data)[2:]:
            data = transform(data)
        return data


class RestoreStage:
    """Probabilities on the network grid -> the label on the scan's exact grid (the infer task's post-transform),
    shipped as voxels and geometry."""

    def __init__(self, spec: CohortSpec):
        self.spec = spec

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        import torch

        task = network_task(self.spec)
        data["pred"] = torch.as_tensor(data.pop("probabilities"))
        for transform in task.post_transforms(data):
            data = transform(data)
        label: sitk.Image = data.pop("pred")
        data["label_voxels"] = sitk.GetArrayFromImage(label)
        data.pop("image", None)  # the preprocessed scan is not needed past the network
        return data


class EncodeStage:
    """The infer task's writer on a CPU worker: the label file (compressed) and its provenance, so that the driver
    only stores bytes and a row. Compressing and hashing a clinical-size label took the driver 4 s a case, more
    than a GPU's prediction; here every CPU worker shares it. The file travels as bytes: a worker's temporary
    folder is not the driver's on another machine."""

    def __init__(self, spec: CohortSpec):
        self.spec = spec

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        task = network_task(self.spec)
        data["pred"] = label_image(data)
        path, result = task.writer(data)
        try:
            with open(path, "rb") as f:
                data["label_file"] = f.read()
        finally:
            os.unlink(path)
        result["label_names"] = task.labels
        data["result"] = result
        for key in ("pred", "label_voxels"):
            data.pop(key, None)
        return data


def label_image(data: Dict[str, Any]) -> sitk.Image:
    """The restored label as an image again (for the infer task's writer)."""
    image = sitk.GetImageFromArray(data["label_voxels"])
    return data["image_geometry"].apply_to(image)


class NetworkWorker:
    """A model actor: the network resident on its device (one GPU, or a CPU slot), fed prepared scans.

    Ray Data builds one per pool slot and calls it with batches of one case. It records its process id with each
    case, so that a run can say which worker did what (and a test can kill one).
    """

    def __init__(self, spec: CohortSpec):
        import torch

        from models.infer_task import resolve_device

        self.spec = spec
        self.device = resolve_device(spec.device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, spec.torch_threads))
        self.pid = os.getpid()

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        rows = [
            self.predict({"case_id": c, "payload": p, "error": e, "worker": self.pid})
            for c, p, e in zip(batch["case_id"], batch["payload"], batch["error"])
        ]
        return {key: [r[key] for r in rows] for key in ("case_id", "payload", "error", "worker")}

    def predict(self, row: Row) -> Row:
        def work(data: Dict[str, Any]) -> Dict[str, Any]:
            task = network_task(self.spec)
            data["probabilities"] = task.predict(data, self.device)
            data["device"] = self.device
            return data

        return guarded("network", work)(row)


class ScoreNetworkWorker(NetworkWorker):
    """A model actor for scoring: every scoring network's probabilities of a case (each on its own grid)."""

    def predict(self, row: Row) -> Row:
        def work(data: Dict[str, Any]) -> Dict[str, Any]:
            data["predictions"] = [
                (name, network_task(member).predict(prepared, self.device), prepared["grid"], member.version)
                for name, member, prepared in data.pop("prepared")
            ]
            return data

        return guarded("network", work)(row)


class ScorePrepareStage:
    """Read and preprocess a scan once for each scoring network (its version's spacing and normalisation)."""

    def __init__(self, members: Dict[str, CohortSpec]):
        self.members = members

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        data["prepared"] = [
            (name, member, network_task(member).prepare(data["image_path"], data["modality_short"], member.version))
            for name, member in self.members.items()
        ]
        return data


class ScoreStage:
    """The members on one grid with the atlas prior beside them, and the case's scores and attention heat: the
    server's :meth:`strategies.scoring.CaseScorer.compute` on the networks' predictions."""

    def __init__(self, spec: CohortSpec, atlas: Any, anatomy: Any):
        self.spec, self.atlas, self.anatomy = spec, atlas, anatomy

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        from strategies.members import assemble_members
        from strategies.scoring import CaseScorer

        config = self.spec.config()
        outputs = assemble_members(
            data.pop("predictions"),
            data["image_path"],
            data["modality_short"],
            self.atlas,
            config.active_learning.grid_mm,
        )
        scorer = CaseScorer(None, config.active_learning, None, None, None, None, lambda: self.anatomy)
        computed = scorer.compute(data["image_path"], data["modality"], outputs)
        if computed is None:
            raise ValueError("no scoring member gave a prediction")
        data["score"], heat = computed
        data["heat_voxels"] = sitk.GetArrayFromImage(heat)
        data["heat_geometry"] = heat_geometry(heat)
        return data


def heat_geometry(image: sitk.Image) -> Dict[str, Any]:
    return {"origin": image.GetOrigin(), "spacing": image.GetSpacing(), "direction": image.GetDirection()}


def heat_image(data: Dict[str, Any]) -> sitk.Image:
    image = sitk.GetImageFromArray(data["heat_voxels"])
    geometry = data["heat_geometry"]
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    return image
