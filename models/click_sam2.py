"""The click model's ``sam2`` engine: SAM2's video predictor, the region's axial slices as the video's frames.

A request names it with ``engine: sam2`` (or ``clicks.engine`` in ``apps.yaml`` makes it the default). It answers
the same question as the ``amos`` network (:class:`models.click_task.ClickInferTask`): the organ's mask over the
region around the prompts; the click rules then decide what changes (:mod:`models.click_merge`: only that organ,
only near the prompts, never another organ's voxel), and the answer becomes the user's label version, as a click's.

The prompts, in SAM2's terms: the organ's clicks (and a few voxels of each stroke) are positive points on their
slices; background clicks, and clicks on other organs, negative ones, on the slices where the organ has a positive
point or the box (a slice of negatives alone would tell SAM2 that the organ is not there at all); a box is SAM2's box
on its middle slice. SAM2 needs a positive point or a box. It sees whole squares of the scan's axial slices (at
least :data:`SQUARE_MM` a side, as it learned from whole images), segments the prompted slices, then follows the
organ through the others, forwards and backwards
(MONAI Label's own ``monailabel.sam2`` task goes forwards only, writes its frames under the home folder, and clips
the scan's raw intensities into 8 bits; here the frames are windowed first: CT at W400/L50, MRI between its 1st and
99th percentiles).

Weights: ``python -m amoslabel models fetch sam2`` (:mod:`models.pretrained.sam2_weights`). SAM2 wants a GPU: at
its trained 1024 pixels a CPU takes seconds per slice.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from models.click_merge import Box
from models.click_request import BACKGROUND, ORGAN_NAMES, ClickRequest
from models.pretrained.sam2_weights import SAM2_MODEL, build_predictor, serving
from models.versions import ModelStore, ModelVersion

Voxel = Tuple[int, int, int]  # (z, y, x) on the scan
CT_WINDOW = (-150.0, 250.0)  # W400/L50: the abdomen's soft tissue
SQUARE_MM = 192.0  # the least side of the square of each axial slice SAM2 sees (an organ with its surroundings)


class Sam2Engine:
    """SAM2's serving version over one region; the predictor is built once per version and device."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._predictors: Dict[Tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._building = threading.Lock()  # one build at a time (and hydra's compose is not thread-safe)

    def available(self) -> bool:
        """Whether its weights are fetched."""
        return ModelStore(self.models_dir, SAM2_MODEL).champion() is not None

    def version(self) -> ModelVersion:
        """The serving version (409 with how to fetch it when there is none)."""
        return serving(self.models_dir)

    def organ_mask(
        self,
        version: ModelVersion,
        crop: np.ndarray,
        modality: str,
        positives: Sequence[Voxel],
        negatives: Sequence[Voxel],
        box: Optional[Box],
        device: str,
    ) -> np.ndarray:
        """The organ's mask (float32 0/1, the crop's shape, z, y, x) by ``version`` from prompts in the crop's
        voxels (nothing where no positive point or box lies in the crop)."""
        prompts = _prompts_per_slice(positives, negatives, box, crop.shape)
        mask = np.zeros(crop.shape, np.float32)
        if not prompts:
            return mask
        predictor = self._predictor(version, device)
        with tempfile.TemporaryDirectory(prefix="amoslabel-sam2-") as frames, torch.inference_mode():
            for z, plane in enumerate(_eight_bit(crop, modality)):
                Image.fromarray(plane).convert("RGB").save(Path(frames) / f"{z:05d}.jpg", quality=95)
            state = predictor.init_state(video_path=frames)
            for z, (points, labels, frame_box) in sorted(prompts.items()):
                predictor.add_new_points_or_box(
                    inference_state=state,
                    frame_idx=z,
                    obj_id=1,
                    points=np.asarray(points, np.float32) if points else None,
                    labels=np.asarray(labels, np.int32) if labels else None,
                    box=np.asarray(frame_box, np.float32) if frame_box is not None else None,
                )
            for reverse in (False, True):  # from the prompted slices towards both ends
                for z, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                    mask[z] = np.maximum(mask[z], (logits[0, 0] > 0).cpu().numpy().astype(np.float32))
        return mask

    def _predictor(self, version: ModelVersion, device: str):
        key = (version.tag, device)
        with self._lock:
            predictor = self._predictors.get(key)
        if predictor is None:
            with self._building:
                with self._lock:
                    predictor = self._predictors.get(key)  # built while this request waited
                if predictor is None:
                    spec = version.meta["sam2"]
                    weights = ModelStore(self.models_dir, version.model).load_weights(version)
                    predictor = build_predictor(spec["config"], spec["image_size"], weights, device)
                    with self._lock:
                        self._predictors.clear()  # one SAM2 in memory
                        self._predictors[key] = predictor
        return predictor


def sam2_prompts(clicks: ClickRequest, organ: int) -> Tuple[List[Voxel], List[Voxel]]:
    """(positive, negative) points for ``organ`` (z, y, x on the scan): its clicks, the single-label form's
    foreground and a few voxels of each foreground stroke; the background's clicks and strokes, and other organs'
    clicks. A box's centre is not among them (a curved organ's box centre is often outside it)."""
    name = ORGAN_NAMES[organ]
    negatives = [p for key, points in clicks.clicks.items() if key != name for p in points]
    return clicks.drawn_positives(organ), negatives + clicks.stroke_guidance(BACKGROUND)


def square_slices(roi: Box, shape: Sequence[int]) -> Box:
    """``roi`` with its in-plane sides (y, x) widened to the longer of the two, about its centre and inside the
    volume: SAM2 takes square frames, and a stretched one deforms the organ it learned."""
    side = max(roi[1].stop - roi[1].start, roi[2].stop - roi[2].start)
    out = [roi[0]]
    for axis in (1, 2):
        width = min(side, shape[axis])
        low = min(max((roi[axis].start + roi[axis].stop - width) // 2, 0), shape[axis] - width)
        out.append(slice(int(low), int(low + width)))
    return tuple(out)


def _eight_bit(crop: np.ndarray, modality: str) -> np.ndarray:
    """The crop's intensities as 8-bit frames: CT windowed, MRI between its 1st and 99th percentiles."""
    low, high = CT_WINDOW if modality == "ct" else np.percentile(crop, (1, 99))
    scaled = (np.clip(crop.astype(np.float32), low, high) - low) / max(float(high - low), 1e-6)
    return (scaled * 255).round().astype(np.uint8)


def _prompts_per_slice(
    positives: Sequence[Voxel], negatives: Sequence[Voxel], box: Optional[Box], shape: Sequence[int]
) -> Dict[int, Tuple[List[List[float]], List[int], Optional[List[float]]]]:
    """slice -> (points as SAM2's (x, y), their labels 1/0, a box (x0, y0, x1, y1) or None): the slices with a
    positive point or the box; negative points only on those. Prompts outside the crop are left out."""
    out: Dict[int, Tuple[List[List[float]], List[int], Optional[List[float]]]] = {}

    def inside(z: int, y: int, x: int) -> bool:
        return 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]

    for z, y, x in positives:
        if inside(z, y, x):
            out.setdefault(int(z), ([], [], None))
            out[int(z)][0].append([float(x), float(y)])
            out[int(z)][1].append(1)
    if box is not None:
        middle = (box[0].start + box[0].stop - 1) // 2
        if 0 <= middle < shape[0]:
            points, labels, _ = out.get(middle, ([], [], None))
            corners = [float(box[2].start), float(box[1].start), float(box[2].stop - 1), float(box[1].stop - 1)]
            out[middle] = (points, labels, corners)
    for z, y, x in negatives:
        if inside(z, y, x) and int(z) in out:
            out[int(z)][0].append([float(x), float(y)])
            out[int(z)][1].append(0)
    return out
