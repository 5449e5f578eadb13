"""Scribbles and lassos: strokes drawn on one slice, as the voxels a click request acts with.

A stroke is a list of vertices (voxel indices ``[i, j, k]`` of the scan, as points are sent) that all lie on one
slice: one of i, j or k is the same for every vertex (an axial, coronal or sagittal slice):

* a **scribble** is the polyline through its vertices: its voxels act as clicks (foreground: each adds to the organ;
  background: each takes away, :func:`models.click_merge.refine_organ`'s rules);
* a **lasso** is the closed contour through its vertices (the last joined to the first): every voxel inside it, on
  that slice, acts as a click. A foreground lasso says "this is the organ", a background one "this is not".

The request form (:mod:`models.click_request`): ``"scribbles": [{"kind": "foreground", "points": [[i, j, k], ...]}]``
and ``"lassos"`` alike. The organ is named by ``label`` (background strokes alone refine the organ they cross, as
background clicks do).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence

import numpy as np
from skimage.draw import line_nd, polygon

SHAPES = {"scribbles": "scribble", "lassos": "lasso"}  # request key -> what one of them is
LEAST_VERTICES = {"scribble": 1, "lasso": 3}
GUIDANCE_PER_STROKE = 5  # voxels of a stroke the network sees as clicks (all of them act through the rules)


@dataclass(frozen=True)
class Stroke:
    """One scribble or lasso.

    Attributes:
        shape: ``scribble`` or ``lasso``.
        kind: ``foreground`` or ``background``.
        voxels: its voxels (z, y, x), an (N, 3) int array: the polyline's, or the lasso's inside and outline.
    """

    shape: str
    kind: str
    voxels: np.ndarray

    @cached_property
    def points(self) -> List[tuple]:
        """Its voxels as (z, y, x) tuples, as clicks are."""
        return [tuple(p) for p in self.voxels.tolist()]

    def guidance(self) -> List[tuple]:
        """A few of its voxels, spread along it, for the network (a lasso's from its inside)."""
        count = len(self.voxels)
        picks = np.linspace(0, count - 1, min(GUIDANCE_PER_STROKE, count)).round().astype(int)
        return [tuple(int(v) for v in self.voxels[i]) for i in picks]


def stroke_voxels(shape: str, ijk: np.ndarray, size_xyz: Sequence[int]) -> np.ndarray:
    """A stroke's voxels (z, y, x) from its vertices (i, j, k), which lie inside the scan and on one slice
    (:func:`slice_axis`): a scribble's polyline, or a lasso's inside and outline."""
    voxels = _lasso_voxels(ijk, size_xyz) if shape == "lasso" else _polyline_voxels(ijk)
    return voxels[:, ::-1].copy()


def slice_axis(ijk: np.ndarray) -> Optional[int]:
    """The axis (0 i, 1 j, 2 k) on which every vertex has the same index, or None: not on one slice."""
    return next((axis for axis in range(3) if (ijk[:, axis] == ijk[0, axis]).all()), None)


def _polyline_voxels(ijk: np.ndarray) -> np.ndarray:
    """The voxels of the polyline through the vertices, each once, in drawing order."""
    if len(ijk) == 1:
        return ijk.copy()
    pieces = [np.stack(line_nd(a, b, endpoint=True), axis=1) for a, b in zip(ijk[:-1], ijk[1:])]
    path = np.concatenate(pieces)
    _, first = np.unique(path, axis=0, return_index=True)
    return path[np.sort(first)]


def _lasso_voxels(ijk: np.ndarray, size_xyz: Sequence[int]) -> np.ndarray:
    """The voxels inside the closed contour through the vertices, and on it, on the vertices' slice."""
    fixed = slice_axis(ijk)
    rows, cols = [axis for axis in range(3) if axis != fixed]
    inside_r, inside_c = polygon(ijk[:, rows], ijk[:, cols], (size_xyz[rows], size_xyz[cols]))
    outline = _polyline_voxels(np.concatenate([ijk, ijk[:1]]))
    out = np.zeros((len(inside_r), 3), np.int64)
    out[:, rows], out[:, cols], out[:, fixed] = inside_r, inside_c, ijk[0, fixed]
    both = np.concatenate([out, outline])
    return np.unique(both, axis=0)
