"""MONAI Label infer task of the click model: one request, one round of clicks, one organ refined near them.

Served as type ``deepedit`` with the 15 organs as its labels, so 3D Slicer's MONAI Label module shows its click
tools and MONAI Label's OHIF panel its point prompts (:mod:`models.click_request` reads both). A request:

1. reads the scan (kept for the next click: a junior clicks on one scan many times) and the current label: the one
   uploaded with the request (form field ``label``), else the case's current label for this user (the app's
   ``current_label``), else none;
2. runs the network on a region around the clicks only (:func:`models.click_merge.click_box` widened by
   ``clicks.context_mm``), at the version's spacing and normalisation, with the clicks as MONAI DeepEdit guidance;
3. changes the organ under :func:`models.click_merge.refine_organ`'s rules, from the network's probability of it
   (a scribble's or a lasso's voxels act as clicks, :mod:`models.click_strokes`; a box, Slicer's ROI, first:
   :func:`models.click_merge.refine_in_box`), and answers the whole label map on the
   scan's grid. The review service saves it as a label version by the user
   who clicked.

The engine (request parameter ``engine``, else ``clicks.engine``): ``amos``, the click model's serving version;
before it has one, the base segmentor's serving version, warm-started (:func:`models.click_network.warm_start`: it
answers as the segmentor, and the clicks act through the rules alone); without either, 409. ``sam2``: SAM2's video
predictor over the region's slices (:mod:`models.click_sam2`), once its weights are fetched (else 409). Either way
the rules above decide what changes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from amoslabel.config import AppConfig, NetworkSettings
from amoslabel.errors import Conflict, InputError
from amoslabel.organs import label_table
from amoslabel.volume import Geometry, read_label_on_grid
from models.click_merge import Box, click_box, refine_in_box, refine_organ
from models.click_region import in_box, organ_probability, region_around
from models.click_sam2 import SQUARE_MM, Sam2Engine, sam2_prompts, square_slices
from models.click_network import build_click_network, warm_start
from models.click_request import CLICK_RESULT, CURRENT_LABEL_KEY, ORGAN_NAMES, ClickRequest, Voxel, parse_clicks
from models.infer_task import VersionRecipe, first_value, resolve_device, write_prelabel
from models.inference_gate import InferenceGate
from models.preprocessing import LoadVolumed, NormaliseIntensityd, ResampleToPland, ResolveModalityd, zyx
from models.versions import ModelStore, ModelVersion

log = logging.getLogger(__name__)

CurrentLabel = Callable[[str, str], Optional[str]]  # (case id, user) -> the label file a click starts from
#: (request, the scan's geometry) -> the clicks, the label (z, y, x) they correct, and where that label came from
ReadRequest = Callable[[Dict[str, Any], Geometry], Tuple[ClickRequest, np.ndarray, str]]
ENGINES = ("amos", "sam2")  # what answers a click (the request's ``engine``, else ``clicks.engine``)


class ClickInferTask(InferTask):
    """Refine organs of a label with clicks, on the click model's serving version (see the module docstring).

    Request parameters: the clicks (:mod:`models.click_request`), ``engine``, ``model_version``, ``modality``,
    ``device``, ``result_extension``.
    """

    def __init__(
        self,
        name: str,
        config: AppConfig,
        store: ModelStore,
        base_store: ModelStore,
        network: NetworkSettings,
        current_label: Optional[CurrentLabel] = None,
    ):
        self.model_name = name
        self.app_config = config
        self.store = store
        self.base_store = base_store
        self.network_settings = network
        self.current_label = current_label
        self.gate = InferenceGate(store.root.parent)
        self.sam2 = Sam2Engine(store.root.parent)  # SAM2's versions beside the click model's
        self._networks: Dict[Tuple[str, str], torch.nn.Module] = {}
        self._scans: "OrderedDict[str, Tuple[float, Dict[str, Any]]]" = OrderedDict()
        self._lock = threading.Lock()
        default_device = resolve_device(config.device)
        super().__init__(
            type=InferType.DEEPEDIT,
            labels=label_table(),
            dimension=3,
            description=f"Clicks that correct one organ, near the clicks ({network.network}, {config.preset} preset)",
            config={
                "model_version": "latest",
                "device": [default_device] + [d for d in ("cpu", "cuda") if d != default_device],
            },
        )

    # -- MONAI Label hooks --------------------------------------------------------------------------------------
    def is_valid(self) -> bool:
        return True  # listed before training: it starts from the segmentor's version

    def info(self) -> Dict[str, Any]:
        info = super().info()
        champion, base = self.store.champion(), self.base_store.champion()
        info.update(
            {
                "network": self.network_settings.network,
                "preset": self.app_config.preset,
                "versions": self.store.numbers(),
                "serving_version": champion.number if champion else None,
                "base_model": self.base_store.model,
                "base_version": base.number if base else None,
                "trained": champion is not None,
                "engine": self.app_config.clicks.engine,  # the default; a request may name another (``engine``)
                "engines": {"amos": True, "sam2": self.sam2.available()},
            }
        )
        if champion is None:
            info["description"] += (
                f" - not trained on clicks yet: {self.base_store.model}'s version answers, and clicks act through "
                "the rules alone"
            )
        return info

    def __call__(self, request: Dict[str, Any], callbacks=None) -> Tuple[str, Dict[str, Any]]:
        label, geometry, answer = self.correct(request)
        image = geometry.apply_to(sitk.GetImageFromArray(label))
        return write_prelabel(image, request.get("result_extension")), answer

    def correct(
        self, request: Dict[str, Any], read: Optional[ReadRequest] = None
    ) -> Tuple[np.ndarray, Geometry, Dict[str, Any]]:
        """The label after the request's clicks (z, y, x, on the scan's grid), the scan's geometry, and what was
        done (the answer's params).

        Args:
            read: the request's clicks and the label they correct, from the request and the scan's geometry; by
                default the click forms of :mod:`models.click_request` and :meth:`current_label_of`.
        """
        started = time.perf_counter()
        device = resolve_device(first_value(request.get("device")))
        scan = self._scan(request)
        geometry: Geometry = scan["image_geometry"]
        if read is None:
            clicks = parse_clicks(request, geometry.size)
            label, started_from = self.current_label_of(request, geometry)
        else:
            clicks, label, started_from = read(request, geometry)
        organs = clicks.resolve_organs(label)
        engine = str(first_value(request.get("engine")) or self.app_config.clicks.engine)
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine[:40]!r}: one of {', '.join(ENGINES)}")
        recipe: Optional[VersionRecipe] = None
        if engine == "sam2":
            source, network = self.sam2.version(), None  # 409 before any work when its weights are not here
            if clicks.box is None and not any(sam2_prompts(clicks, organ)[0] for organ in organs):
                raise InputError(
                    "the sam2 engine needs a point on the organ (or a box): background clicks alone tell SAM2 only "
                    "where the organ is not; use the amos engine for them"
                )
        else:
            source, network = self._network(request.get("model_version"), device)
            recipe = VersionRecipe.of(source, self.app_config)
        spacing = tuple(reversed(geometry.spacing))
        margin = self.app_config.clicks.margin_mm
        boxes = {  # around each organ's clicks (none for a box alone)
            organ: click_box(points, label.shape, margin, spacing)
            for organ in organs
            if (points := self._organ_clicks(clicks, organ))
        }
        least_mm = tuple(reversed(recipe.patch_mm(scan["modality"]))) if recipe else (0.0, SQUARE_MM, SQUARE_MM)
        bounds = [*boxes.values(), *([clicks.box] if clicks.box is not None else [])]
        roi = region_around(bounds, label.shape, self.app_config.clicks.context_mm, spacing, least_mm)
        if engine == "sam2":
            roi = square_slices(roi, label.shape)
        before = label.copy()
        with self.gate.held():
            for organ in organs:
                if engine == "sam2":
                    mask = self._sam2_mask(source, scan, roi, clicks, organ, device)
                else:
                    mask = self._predict(scan, recipe, network, roi, clicks.guidance(organ), organ, device)
                if clicks.box is not None:  # the box first: the clicks then correct what it gave
                    label = refine_in_box(label, organ, in_box(mask, roi, clicks.box), clicks.box)
                if organ in boxes:
                    box = boxes[organ]
                    label = refine_organ(
                        label, organ, in_box(mask, roi, box), clicks.positives(organ), clicks.negatives(), box
                    )
        changed = {ORGAN_NAMES[o]: int(((before == o) != (label == o)).sum()) for o in organs}
        return (
            label,
            geometry,
            {
                "interaction": CLICK_RESULT,
                "engine": engine,
                "model": self.model_name,
                "model_version": source.number if source.model == self.model_name else None,
                "network_from": source.tag,
                "organs": [ORGAN_NAMES[o] for o in organs],
                "clicks": {name: [list(reversed(p)) for p in pts] for name, pts in clicks.clicks.items()},
                "foreground": [list(reversed(p)) for p in clicks.foreground],
                "box_ijk": [[b.start, b.stop - 1] for b in reversed(clicks.box)] if clicks.box is not None else None,
                "strokes": [{"shape": s.shape, "kind": s.kind, "voxels": len(s.voxels)} for s in clicks.strokes],
                "changed_voxels": changed,
                "region_ijk": [[b.start, b.stop - 1] for b in reversed(roi)],
                "started_from": started_from,
                "device": device,
                "latency_s": round(time.perf_counter() - started, 3),
            },
        )

    # -- the parts ------------------------------------------------------------------------------------------------
    @staticmethod
    def _organ_clicks(clicks: ClickRequest, organ: int) -> List[Voxel]:
        """The clicks that bound ``organ``'s change: its own and the background ones, else every click."""
        return clicks.positives(organ) + clicks.negatives() or clicks.all_clicks()

    def _scan(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The loaded scan (SimpleITK) with its modality; the last few stay in memory for the next click."""
        path = request["image"]
        changed = os.path.getmtime(path) if os.path.exists(path) else 0.0  # a replaced file is read anew
        key = f"{path}|{changed}|{request.get('modality')}"
        with self._lock:
            cached = self._scans.get(key)
            if cached is not None:
                self._scans.move_to_end(key)
                return cached[1]
        data = {"image": path, "modality": request.get("modality"), "case_id": request.get("case_id")}
        data["case_record"] = request.get("case_record") or {}
        for transform in (LoadVolumed(self.app_config.storage.max_image_voxels), ResolveModalityd()):
            data = transform(data)
        with self._lock:
            self._scans[key] = (time.time(), data)
            while len(self._scans) > 2:
                self._scans.popitem(last=False)
        return data

    def current_label_of(
        self, request: Dict[str, Any], geometry: Geometry, upload: bool = True
    ) -> Tuple[np.ndarray, str]:
        """The label the clicks correct (z, y, x) uint8 and where it came from: uploaded, else the case's current
        one for this user, else empty. ``upload=False``: the case's, whatever was uploaded.

        Raises:
            Unprocessable: the label is not on the scan's grid (422), or not a label map.
        """
        path, source = (request.get(CURRENT_LABEL_KEY) if upload else None), "upload"
        if not path and self.current_label is not None and request.get("case_id"):
            path, source = self.current_label(str(request["case_id"]), str(request.get("client_id") or "")), "case"
        if not path:
            return np.zeros(tuple(reversed(geometry.size)), np.uint8), "empty"
        label = read_label_on_grid(geometry, path, self.app_config.storage.max_image_voxels, "current label")
        return sitk.GetArrayFromImage(label).astype(np.uint8), source

    def _network(self, pinned: Any, device: str) -> Tuple[ModelVersion, torch.nn.Module]:
        """The version that answers and its click network on ``device``."""
        pinned = first_value(pinned)
        if pinned not in (None, "", "latest") or self.store.champion() is not None:
            source = self.store.resolve(pinned)
        else:
            source = self.base_store.champion()
            if source is None:
                raise Conflict(
                    f"the click model needs a trained segmentor: train {self.base_store.model!r} first "
                    f"(POST /train/{self.base_store.model}), or the click model itself (POST /train/{self.model_name})"
                )
        key = (source.tag, device)
        with self._lock:
            network = self._networks.get(key)
        if network is None:
            network = self._build(source).to(torch.device(device)).eval()
            with self._lock:
                self._networks.clear()
                self._networks[key] = network
        return source, network

    def _build(self, version: ModelVersion) -> torch.nn.Module:
        spec = version.meta.get("network") or {}
        name, params = spec.get("name", self.network_settings.network), spec.get("params", self.network_settings.params)
        network = build_click_network(name, params)
        own = version.model == self.model_name
        weights = (self.store if own else self.base_store).load_weights(version)
        if own:
            network.load_state_dict(weights)
        else:
            warm_start(network, weights)
        return network

    def _sam2_mask(
        self, version: ModelVersion, scan: Dict[str, Any], roi: Box, clicks: ClickRequest, organ: int, device: str
    ) -> np.ndarray:
        """SAM2's mask of ``organ`` over ``roi`` (float32 0/1, the roi's shape), by ``version``."""
        crop = sitk.GetArrayFromImage(scan["image"][_xyz(roi)])
        positives, negatives = sam2_prompts(clicks, organ)

        def local(points: Sequence[Voxel]) -> List[Voxel]:
            return [tuple(int(v) - r.start for v, r in zip(p, roi)) for p in points]

        box = clicks.box
        inside = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, roi)) if box else None
        return self.sam2.organ_mask(version, crop, scan["modality"], local(positives), local(negatives), inside, device)

    def _predict(
        self,
        scan: Dict[str, Any],
        recipe: VersionRecipe,
        network: torch.nn.Module,
        roi: Box,
        guidance: Dict[str, List[Voxel]],
        organ: int,
        device: str,
    ) -> np.ndarray:
        """The network's probability of ``organ`` over ``roi`` (float32, the roi's shape on the scan's grid)."""
        crop = scan["image"][_xyz(roi)]
        data = {**scan, "image": crop}
        for transform in (NormaliseIntensityd(recipe.normalisation), ResampleToPland(recipe.plans)):
            data = transform(data)
        grid: Geometry = data["grid"]
        on_grid = {name: _to_grid(points, roi, crop, grid) for name, points in guidance.items()}
        patch = zyx(recipe.patch_size(data["modality"]))
        on_network_grid = organ_probability(network, data["image"], on_grid, organ, patch, device)
        probability = grid.apply_to(sitk.GetImageFromArray(on_network_grid))
        back = sitk.Resample(probability, crop, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(back)


def _xyz(box: Box) -> Tuple[slice, slice, slice]:
    """A (z, y, x) box as SimpleITK indexes an image: (x, y, z)."""
    return box[2], box[1], box[0]


def _to_grid(points: Sequence[Voxel], roi: Box, crop: sitk.Image, grid: Geometry) -> List[Voxel]:
    """Clicks (z, y, x on the scan) -> voxels (z, y, x) of the network grid; clicks outside the roi are left out."""
    out = []
    for z, y, x in points:
        local = (x - roi[2].start, y - roi[1].start, z - roi[0].start)
        if not all(0 <= v < n for v, n in zip(local, crop.GetSize())):
            continue
        index = grid.index_of(crop.TransformIndexToPhysicalPoint([int(v) for v in local]))
        if index is not None:
            out.append((index[2], index[1], index[0]))
    return out
