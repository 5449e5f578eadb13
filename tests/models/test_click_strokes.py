"""Scribbles and lassos: drawn on one slice, their voxels act as clicks under the click rules, and bad strokes are
refused with a message."""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.errors import InputError, Unprocessable
from models.click_merge import click_box, refine_organ
from models.click_request import MAX_STROKE_POINTS, MAX_STROKE_VOXELS, parse_clicks
from models.click_strokes import GUIDANCE_PER_STROKE

SIZE = (40, 30, 20)  # i, j, k
SHAPE = tuple(reversed(SIZE))  # z, y, x
LIVER, SPLEEN = 6, 1


def test_a_scribble_is_the_polyline_through_its_points_every_voxel_once():
    clicks = parse_clicks(
        {"label": "liver", "scribbles": [{"kind": "foreground", "points": [[2, 5, 7], [9, 5, 7], [9, 8, 7]]}]}, SIZE
    )
    (stroke,) = clicks.strokes
    assert stroke.shape == "scribble" and stroke.kind == "foreground"
    # 8 voxels along i, then 3 more along j; all on slice k = 7, as (z, y, x)
    assert stroke.points == [(7, 5, i) for i in range(2, 10)] + [(7, j, 9) for j in (6, 7, 8)]
    assert clicks.positives(LIVER) == stroke.points and clicks.negatives() == []
    guidance = clicks.guidance(LIVER)["liver"]
    assert len(guidance) == GUIDANCE_PER_STROKE and guidance[0] == (7, 5, 2) and guidance[-1] == (7, 8, 9)


def test_a_lasso_is_every_voxel_inside_its_closed_contour_on_its_slice():
    square = [[5, 10, 3], [5, 20, 3], [5, 20, 13], [5, 10, 13]]  # on slice i = 5 (sagittal), closed by the server
    clicks = parse_clicks({"label": "spleen", "lassos": [{"kind": "background", "points": square}]}, SIZE)
    (stroke,) = clicks.strokes
    voxels = np.array(stroke.points)
    assert stroke.shape == "lasso" and (voxels[:, 2] == 5).all()  # x = i = 5 for every voxel
    assert len(voxels) == 11 * 11  # j 10..20 by k 3..13, outline included
    assert clicks.negatives() == stroke.points and clicks.positives(SPLEEN) == []
    assert clicks.organs == [SPLEEN]


def test_background_strokes_alone_refine_the_organ_they_cross():
    clicks = parse_clicks({"scribbles": [{"kind": "background", "points": [[1, 1, 1], [4, 1, 1]]}]}, SIZE)
    label = np.zeros(SHAPE, np.uint8)
    label[1, 1, 3] = LIVER
    assert clicks.resolve_organs(label) == [LIVER]


@pytest.mark.parametrize(
    "request_, error, words",
    [
        (
            {"label": "liver", "scribbles": [{"kind": "foreground", "points": [[1, 1, 1], [5, 5, 5]]}]},
            InputError,
            "one slice",
        ),
        (
            {"label": "liver", "lassos": [{"kind": "foreground", "points": [[1, 1, 1], [1, 5, 5], [2, 8, 1]]}]},
            InputError,
            "one slice",
        ),
        (
            {"label": "liver", "scribbles": [{"kind": "foreground", "points": [[1, 1, 1], [45, 1, 1]]}]},
            Unprocessable,
            "outside the image",
        ),
        (
            {"label": "liver", "lassos": [{"kind": "foreground", "points": [[1, 1, -3], [1, 5, -3], [1, 5, 2]]}]},
            Unprocessable,
            "outside the image",
        ),
        (
            {"label": "liver", "lassos": [{"kind": "foreground", "points": [[1, 1, 1], [1, 5, 1]]}]},
            InputError,
            "at least 3",
        ),
        ({"label": "liver", "scribbles": [{"kind": "inside", "points": [[1, 1, 1]]}]}, InputError, "'kind'"),
        ({"label": "liver", "scribbles": [[1, 1, 1]]}, InputError, "'kind'"),
        ({"label": "liver", "scribbles": {"kind": "foreground"}}, InputError, "is a list"),
        ({"label": "liver", "scribbles": [{"kind": "foreground", "points": [[1, "a", 1]]}]}, InputError, "three voxel"),
        ({"scribbles": [{"kind": "foreground", "points": [[1, 1, 1]]}]}, InputError, "needs the organ"),
        (
            {"label": "tumour", "scribbles": [{"kind": "foreground", "points": [[1, 1, 1]]}]},
            InputError,
            "unknown organ",
        ),
        (
            {"label": "liver", "scribbles": [{"kind": "foreground", "points": [[1, 1, 1]] * (MAX_STROKE_POINTS + 1)}]},
            InputError,
            "more than",
        ),
    ],
)
def test_bad_strokes_are_refused_with_a_message(request_, error, words):
    with pytest.raises(error, match=words) as raised:
        parse_clicks(request_, SIZE)
    assert raised.value.status_code == (422 if error is Unprocessable else 400)


def test_lassos_that_cover_too_many_voxels_are_refused():
    big = (500, 500, 3)  # a lasso over a whole 500 x 500 slice holds 250,000 voxels
    whole = [[0, 0, 1], [499, 0, 1], [499, 499, 1], [0, 499, 1]]
    one = parse_clicks({"label": "liver", "lassos": [{"kind": "foreground", "points": whole}]}, big)
    assert len(one.strokes[0].voxels) == MAX_STROKE_VOXELS
    with pytest.raises(InputError, match="more than"):
        twice = [
            {"kind": "foreground", "points": whole},
            {"kind": "background", "points": [[0, 0, 2], [3, 0, 2], [0, 3, 2]]},
        ]
        parse_clicks({"label": "liver", "lassos": twice}, big)


def test_a_foreground_lasso_makes_its_inside_the_organ_and_a_background_scribble_cuts_only_the_doubted_part():
    label = np.zeros(SHAPE, np.uint8)
    label[8:12, 5:15, 5:15] = SPLEEN  # another organ the lasso overlaps: never changed
    square = [[10, 10, 10], [25, 10, 10], [25, 20, 10], [10, 20, 10]]  # on slice k = 10
    clicks = parse_clicks({"label": "liver", "lassos": [{"kind": "foreground", "points": square}]}, SIZE)
    no_help = np.zeros(SHAPE, np.float32)  # the network sees no liver at all: the lasso alone decides
    box = click_box(clicks.positives(LIVER), SHAPE, 5.0, (1.0, 1.0, 1.0))
    after = refine_organ(label, LIVER, no_help, clicks.positives(LIVER), clicks.negatives(), box)
    inside = np.zeros(SHAPE, bool)
    inside[10, 10:21, 10:26] = True
    assert ((after == LIVER) == (inside & (label != SPLEEN))).all()
    assert ((after == SPLEEN) == (label == SPLEEN)).all()

    # the liver now, and a network that doubts its right half: a background scribble there takes that half only
    doubt = np.where(inside, 1.0, 0.0).astype(np.float32)
    doubt[10, 10:21, 18:26] = 0.1
    line = parse_clicks(
        {"label": "liver", "scribbles": [{"kind": "background", "points": [[20, 12, 10], [20, 18, 10]]}]}, SIZE
    )
    box = click_box(line.negatives(), SHAPE, 10.0, (1.0, 1.0, 1.0))
    cut = refine_organ(after, LIVER, doubt, line.positives(LIVER), line.negatives(), box)
    kept = inside & (label != SPLEEN)
    kept[10, 10:21, 18:26] = False
    assert ((cut == LIVER) == kept).all() and ((cut == SPLEEN) == (label == SPLEEN)).all()
