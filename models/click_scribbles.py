"""3D Slicer's *Scribbles* section, served by the click model: painted scribbles correct one organ.

Slicer's MONAI Label module lists the models of type ``scribbles`` in that section. Its *Update* button
(``onUpdateScribbles`` in the module, MONAI Label 0.8.5) sends:

* the label file (form field ``label``): every segment of the editor exported as one label map, a segment's value
  being its place in the editor's list (1, 2, ...), the ``foreground_scribbles`` and ``background_scribbles``
  layers among them; where segments overlap, the later one (a scribble layer, added last) holds the voxel;
* ``label_info`` (each segment's ``name`` and that ``id``), ``selected_label_name`` (the segment to correct), and
  ``roi`` (the *Scribbles ROI*, voxel indices, or ``[]``: as in MONAI Label's own scribbles methods, it bounds the
  work: only the scribbles inside it count);

and puts the answer's voxels into the selected segment only (the answer's lowest label value becomes that segment).

So the segments named as organs are the label to correct; under a scribble, where the export lost what lay there,
the case's label on the server stands in. The scribbles' voxels act as clicks (:mod:`models.click_merge`'s rules:
only that organ, only near them, never another organ's voxel); a scribble may cross slices, as Slicer's brush paints.
The answer to Slicer holds the corrected organ alone; the whole label after it is saved as the user's label version,
as a click's is (the review service reads it under :data:`WHOLE_LABEL_KEY`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from amoslabel.errors import InputError
from amoslabel.organs import label_table
from amoslabel.volume import Geometry, read_label_on_grid
from models.click_request import CURRENT_LABEL_KEY, WHOLE_LABEL_KEY, ClickRequest, box_of, organ_id
from models.click_strokes import Stroke
from models.click_task import ClickInferTask
from models.infer_task import write_prelabel

FOREGROUND_LAYER, BACKGROUND_LAYER = "foreground_scribbles", "background_scribbles"
SEGMENT_VALUES = 255  # the label file numbers Slicer's segments in the editor's order, not by organ
MAX_SCRIBBLED_VOXELS = 500_000  # a brush paints thousands; a bound on the work one request can ask for


def read_scribble_layers(
    request: Dict[str, Any], exported: np.ndarray, beneath: Optional[np.ndarray]
) -> Tuple[ClickRequest, np.ndarray]:
    """The clicks of Slicer's scribbles request and the label they correct (our organ ids, z, y, x).

    Args:
        exported: the uploaded label map (Slicer's segment values, z, y, x).
        beneath: the case's label on the server (our ids), for the voxels a scribble covers; None: none there.

    Raises:
        InputError: no ``label_info``, no scribble layer or no scribbled voxel, an unknown selected organ, too many
            scribbled voxels (400).
    """
    info = request.get("label_info")
    if not isinstance(info, list) or not all(isinstance(e, dict) and "name" in e and "id" in e for e in info):
        raise InputError("scribbles need 'label_info': the segments' names and ids, as Slicer sends them")
    organ = organ_id(request.get("selected_label_name"))
    layers: Dict[str, List[int]] = {FOREGROUND_LAYER: [], BACKGROUND_LAYER: []}
    organs: Dict[int, int] = {}  # Slicer's value -> our organ id
    for entry in info:
        name, value = str(entry["name"]).strip(), entry["id"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= SEGMENT_VALUES:
            raise InputError(f"a segment's id in label_info is an integer 1-{SEGMENT_VALUES}: {str(value)[:20]!r}")
        if name.lower() in layers:
            layers[name.lower()].append(value)
        else:
            try:
                organs[value] = organ_id(name)
            except InputError:
                pass  # a segment that is no organ (Slicer's "background", a user's own): not ours to correct
    size_xyz = tuple(reversed(exported.shape))
    roi = box_of(request.get("roi"), size_xyz)
    inside = np.zeros(exported.shape, bool)
    inside[roi if roi is not None else ...] = True  # the Scribbles ROI: only the scribbles inside it count
    painted = {kind: np.isin(exported, values) for kind, values in layers.items()}
    scribbled = {kind: np.argwhere(mask & inside) for kind, mask in painted.items()}
    count = sum(len(v) for v in scribbled.values())
    if count == 0:
        raise InputError(
            f"no scribbles: paint on the {FOREGROUND_LAYER!r} or {BACKGROUND_LAYER!r} layer (inside the ROI, if one "
            "is placed) before Update"
        )
    if count > MAX_SCRIBBLED_VOXELS:
        raise InputError(f"{count} scribbled voxels in one request; at most {MAX_SCRIBBLED_VOXELS}")
    table = np.zeros(max([int(exported.max()), *organs]) + 1, np.uint8)
    for value, ours in organs.items():
        table[value] = ours
    label = table[exported]
    covered = painted[FOREGROUND_LAYER] | painted[BACKGROUND_LAYER]
    label[covered] = beneath[covered] if beneath is not None else 0
    strokes = [
        Stroke("scribble", kind, voxels)
        for kind, voxels in (("foreground", scribbled[FOREGROUND_LAYER]), ("background", scribbled[BACKGROUND_LAYER]))
        if len(voxels)
    ]
    return ClickRequest([organ], strokes=strokes), label


class ScribbleInferTask(InferTask):
    """Slicer's scribbles on the click model's network (see the module docstring)."""

    def __init__(self, name: str, clicks: ClickInferTask):
        self.clicks = clicks
        super().__init__(
            type=InferType.SCRIBBLES,
            labels=label_table(),
            dimension=3,
            description=f"Scribbles that correct one organ, near them (on {clicks.model_name}'s network)",
            config={"model_version": "latest"},
        )
        self.model_name = name

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Dict[str, Any], callbacks=None) -> Tuple[str, Dict[str, Any]]:
        label, geometry, answer = self.clicks.correct(request, self._read)
        whole = write_prelabel(geometry.apply_to(sitk.GetImageFromArray(label)))
        try:
            organ = organ_id(answer["organs"][0])
            only = geometry.apply_to(sitk.GetImageFromArray(np.where(label == organ, organ, 0).astype(np.uint8)))
            path = write_prelabel(only, request.get("result_extension"))
        except BaseException:
            os.unlink(whole)
            raise
        return path, {**answer, "model": self.model_name, WHOLE_LABEL_KEY: whole}

    def _read(self, request: Dict[str, Any], geometry: Geometry) -> Tuple[ClickRequest, np.ndarray, str]:
        if not request.get(CURRENT_LABEL_KEY):
            raise InputError("scribbles come in the label file (form field 'label'), as Slicer's Update sends them")
        limit = self.clicks.app_config.storage.max_image_voxels
        upload = read_label_on_grid(geometry, request[CURRENT_LABEL_KEY], limit, "scribbles label", SEGMENT_VALUES)
        exported = sitk.GetArrayFromImage(upload)
        server, source = self.clicks.current_label_of(request, geometry, upload=False)
        clicks, label = read_scribble_layers(request, exported, server if source != "empty" else None)
        return clicks, label, "upload"
