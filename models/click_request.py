"""What a click request asks: which organs to refine, and the clicks, as 3D Slicer and OHIF send them.

Three clients, one model (``deepedit`` type, labels = the 15 organs):

* 3D Slicer's MONAI Label module (multi-label DeepEdit): ``label`` is the segment being edited; every organ's
  landmarks come under the organ's name, ``{"liver": [[i, j, k], ...], "spleen": [], ...}``.
* MONAI Label's OHIF panel (DeepEdit point prompts): the clicked labels' points under their names, and
  ``background``; no ``label``.
* Our API and the single-label form: ``label`` (or ``organ``), ``foreground`` and ``background``.

Points are voxel indices (i, j, k) of the scan, as both viewers send them; here they become array indices
(z, y, x). The organs refined: ``label``/``organ`` when given; else every organ with clicks; else, for background
clicks alone, the organ each one lands on in the current label.

Scribbles and lassos (:mod:`models.click_strokes`): ``scribbles`` and ``lassos``, each a list of ``{"kind":
"foreground" or "background", "points": [[i, j, k], ...]}`` on one slice; their voxels act as clicks.

A box: ``roi``, as Slicer's SmartEdit sends its ROI (``[i_min, i_max, j_min, j_max, k_min, k_max]``, voxel indices,
inclusive; each pair in either order, as Slicer leaves it when an axis is flipped), for the organ named by ``label``;
with or without clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from amoslabel.errors import InputError, Unprocessable
from amoslabel.organs import ORGANS
from models.click_merge import Box, Voxel
from models.click_strokes import LEAST_VERTICES, SHAPES, Stroke, slice_axis, stroke_voxels

BACKGROUND = "background"
FOREGROUND = "foreground"  # a stroke's kind, and the single-label form's key
CLICK_RESULT = "click"  # a click result's ``interaction``: what the review service saves as the user's label version
ORGAN_NAMES: Dict[int, str] = {o.id: o.name for o in ORGANS}
_BY_NAME: Dict[str, int] = {o.name.lower(): o.id for o in ORGANS}
CURRENT_LABEL_KEY = "current_label_file"  # the uploaded label to correct: set by the server, never by a client
#: in an answer's params: the whole label to save as the user's version, when the answer sent holds less (Slicer's
#: scribbles answer one organ); the review service takes it out before the answer leaves
WHOLE_LABEL_KEY = "whole_label_file"
MAX_CLICKS = 200  # per request: far beyond any correction, and a bound on the work one request can ask for
MAX_STROKE_POINTS = 5000  # per request: a hand-drawn stroke has hundreds of points; a bound on the work again
MAX_STROKE_VOXELS = 250_000  # per request, the lassos' insides with the rest: a liver's section is some 20,000


@dataclass
class ClickRequest:
    """The parsed request.

    Attributes:
        organs: the organ ids to refine (may be empty until :meth:`resolve_organs` looks at the label).
        clicks: label name (an organ's or ``background``) -> clicked voxels (z, y, x): every click, for the guidance.
        foreground: clicks from ``foreground`` (single-label form): positive for every refined organ.
        box: the organ's box (z, y, x slices), when the request has one.
        strokes: scribbles and lassos; a foreground one's voxels are positive for every refined organ.
    """

    organs: List[int]
    clicks: Dict[str, List[Voxel]] = field(default_factory=dict)
    foreground: List[Voxel] = field(default_factory=list)
    box: Optional[Box] = None
    strokes: List[Stroke] = field(default_factory=list)

    def positives(self, organ: int) -> List[Voxel]:
        return self.clicks.get(ORGAN_NAMES[organ], []) + self.foreground + self._stroked(FOREGROUND)

    def negatives(self) -> List[Voxel]:
        return list(self.clicks.get(BACKGROUND, [])) + self._stroked(BACKGROUND)

    def _stroked(self, kind: str) -> List[Voxel]:
        """Every voxel of the strokes of ``kind``: each acts as a click."""
        return [p for s in self.strokes if s.kind == kind for p in s.points]

    def guidance(self, organ: int) -> Dict[str, List[Voxel]]:
        """The clicks as the network's guidance when refining ``organ``: its positives under its name, a box's
        centre and a few voxels of each stroke among them (the network learned from clicks; a box tells it where the
        organ is)."""
        out = {name: list(points) for name, points in self.clicks.items()}
        if self.foreground or self.box is not None or self.strokes:
            centre = [tuple((b.start + b.stop - 1) // 2 for b in self.box)] if self.box is not None else []
            out[ORGAN_NAMES[organ]] = self.drawn_positives(organ) + centre
            if self.stroke_guidance(BACKGROUND):
                out[BACKGROUND] = out.get(BACKGROUND, []) + self.stroke_guidance(BACKGROUND)
        return out

    def stroke_guidance(self, kind: str) -> List[Voxel]:
        """A few voxels of each stroke of ``kind`` (:meth:`models.click_strokes.Stroke.guidance`)."""
        return [p for s in self.strokes if s.kind == kind for p in s.guidance()]

    def drawn_positives(self, organ: int) -> List[Voxel]:
        """``organ``'s clicks, the single-label form's foreground and a few voxels of each foreground stroke."""
        return self.clicks.get(ORGAN_NAMES[organ], []) + self.foreground + self.stroke_guidance(FOREGROUND)

    def all_clicks(self) -> List[Voxel]:
        """Every clicked voxel, a stroke's among them."""
        return (
            [p for points in self.clicks.values() for p in points]
            + self.foreground
            + [p for s in self.strokes for p in s.points]
        )

    def resolve_organs(self, label: np.ndarray) -> List[int]:
        """The organs to refine; background clicks (or strokes) alone refine the organs they land on."""
        if not self.organs:
            found = {int(label[p]) for p in self.negatives()} - {0}
            self.organs = sorted(found)
        if not self.organs:
            raise InputError("no organ to refine: name one ('label'), or click on one")
        return self.organs


def organ_id(value: Any) -> int:
    """An organ's id from its name (any case) or id; 400 naming the organs otherwise."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and value in ORGAN_NAMES:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) in ORGAN_NAMES:
            return int(text)
        if text.lower() in _BY_NAME:
            return _BY_NAME[text.lower()]
    shown = str(value)[:40]
    raise InputError(f"unknown organ {shown!r}: clicks are for one of {sorted(_BY_NAME)} (or ids 1-15)")


def parse_clicks(request: Mapping[str, Any], size_xyz: Sequence[int]) -> ClickRequest:
    """The clicks of an ``/infer`` request on a scan of ``size_xyz`` voxels.

    Raises:
        InputError: no clicks, an unknown organ, a point that is not three integers, too many clicks (400).
        Unprocessable: a click outside the scan (422).
    """
    named = request.get("organ", request.get("label"))
    organs = [organ_id(named)] if named not in (None, "") else []
    clicks: Dict[str, List[Voxel]] = {}
    for name in [BACKGROUND] + [o.name for o in ORGANS]:
        points = _points(request.get(name), name, size_xyz)
        if points:
            clicks[name] = points
    foreground = _points(request.get(FOREGROUND), FOREGROUND, size_xyz)
    if "background" not in clicks and request.get("background"):
        clicks[BACKGROUND] = _points(request.get("background"), BACKGROUND, size_xyz)
    strokes = _strokes(request, size_xyz)
    parsed = ClickRequest(organs, clicks, foreground, box_of(request.get("roi"), size_xyz), strokes)
    count = sum(len(points) for points in clicks.values()) + len(foreground)
    if count == 0 and parsed.box is None and not strokes:
        raise InputError(
            "no clicks: send points as {organ name or 'background': [[i, j, k], ...]}, a box (roi), or strokes "
            "(scribbles, lassos)"
        )
    if count > MAX_CLICKS:
        raise InputError(f"{count} clicks in one request; at most {MAX_CLICKS}")
    if parsed.box is not None and not organs:
        raise InputError("a box needs the organ it is for ('label')")
    if any(s.kind != BACKGROUND for s in strokes) and not organs:
        raise InputError("a foreground scribble or lasso needs the organ it is for ('label')")
    if not organs and not foreground:
        parsed.organs = sorted(organ_id(n) for n in clicks if n != BACKGROUND)
    elif not organs:
        raise InputError("foreground clicks need the organ they are for ('label')")
    return parsed


def _points(value: Any, name: str, size_xyz: Sequence[int]) -> List[Voxel]:
    """Voxel indices (i, j, k) -> array indices (z, y, x), checked."""
    if value in (None, "", []):
        return []
    if not isinstance(value, (list, tuple)):
        raise InputError(f"clicks for {name!r} must be a list of [i, j, k] voxel indices")
    out = []
    for point in value:
        ijk = _voxel_index(point, f"a click for {name!r}")
        if any(v < 0 or v >= n for v, n in zip(ijk, size_xyz)):
            raise Unprocessable(f"the click {ijk} for {name!r} lies outside the image of {list(size_xyz)} voxels")
        out.append((ijk[2], ijk[1], ijk[0]))
    return out


def _voxel_index(point: Any, what: str) -> List[int]:
    """A point as three integer voxel indices [i, j, k]; 400 naming ``what`` otherwise."""
    if not isinstance(point, (list, tuple)) or len(point) != 3 or not all(_is_index(v) for v in point):
        raise InputError(f"{what} is not three voxel indices [i, j, k]: {str(point)[:60]}")
    return [int(round(v)) for v in point]


def _strokes(request: Mapping[str, Any], size_xyz: Sequence[int]) -> List[Stroke]:
    """The request's scribbles and lassos, checked.

    Raises:
        InputError: a stroke not ``{"kind": "foreground" or "background", "points": [[i, j, k], ...]}``, a lasso of
            fewer than three points, points on more than one slice, too many points or voxels (400).
        Unprocessable: a point outside the scan (422).
    """
    strokes: List[Stroke] = []
    total = voxels = 0
    for key, shape in SHAPES.items():
        value = request.get(key)
        if value in (None, "", []):
            continue
        if not isinstance(value, list):
            raise InputError(f"{key!r} is a list of {{'kind': 'foreground' or 'background', 'points': [[i, j, k]]}}")
        for stroke in value:
            if not isinstance(stroke, dict) or stroke.get("kind") not in (FOREGROUND, BACKGROUND):
                raise InputError(f"a {shape} is {{'kind': 'foreground' or 'background', 'points': [[i, j, k], ...]}}")
            points = stroke.get("points")
            if not isinstance(points, list) or len(points) < LEAST_VERTICES[shape]:
                raise InputError(f"a {shape} needs a list of at least {LEAST_VERTICES[shape]} points [i, j, k]")
            total += len(points)
            if total > MAX_STROKE_POINTS:
                raise InputError(f"more than {MAX_STROKE_POINTS} scribble and lasso points in one request")
            ijk = np.array([_voxel_index(point, f"a {shape} point") for point in points], dtype=np.int64)
            if (ijk < 0).any() or (ijk >= np.asarray(size_xyz)).any():
                raise Unprocessable(f"a {shape} lies outside the image of {list(size_xyz)} voxels")
            if slice_axis(ijk) is None:
                raise InputError(f"a {shape} is drawn on one slice: its points differ in i, in j and in k")
            strokes.append(Stroke(shape, stroke["kind"], stroke_voxels(shape, ijk, size_xyz)))
            voxels += len(strokes[-1].voxels)
            if voxels > MAX_STROKE_VOXELS:
                raise InputError(f"the strokes cover more than {MAX_STROKE_VOXELS} voxels in one request")
    return strokes


def box_of(value: Any, size_xyz: Sequence[int]) -> Optional[Box]:
    """Slicer's ROI ``[i_min, i_max, j_min, j_max, k_min, k_max]`` (inclusive voxel indices) -> (z, y, x) slices.

    Slicer sends ``[]`` when no ROI is placed: no box.

    Raises:
        InputError: not six numbers (400). Unprocessable: a box that does not overlap the scan (422).
    """
    if value in (None, "", []):
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 6 or not all(_is_index(v) for v in value):
        raise InputError(f"a box (roi) is [i_min, i_max, j_min, j_max, k_min, k_max] voxel indices: {str(value)[:80]}")
    slices = []
    for axis, size in enumerate(size_xyz):
        low, high = sorted(int(round(v)) for v in value[2 * axis : 2 * axis + 2])
        if high < 0 or low >= size:
            raise Unprocessable(f"the box {list(value)} lies outside the image of {list(size_xyz)} voxels")
        slices.append(slice(max(low, 0), min(high, size - 1) + 1))
    return slices[2], slices[1], slices[0]


def _is_index(value: Any) -> bool:
    """A number a voxel index can come from: an int (of any size: one past the scan is refused as outside it), or a
    finite float; never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
