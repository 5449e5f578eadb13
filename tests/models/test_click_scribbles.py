"""Slicer's scribbles request read as clicks: its segments' values become our organ ids, the scribble layers become
foreground and background strokes, the server's label stands in under them, and bad requests are refused."""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.errors import InputError
from models.click_scribbles import read_scribble_layers

LIVER, SPLEEN = 6, 1
# as Slicer exports them: a value per segment in the editor's order, the scribble layers last
INFO = [
    {"name": "spleen", "id": 1},
    {"name": "Segment_7", "id": 2},  # a user's own segment: no organ
    {"name": "liver", "id": 3},
    {"name": "foreground_scribbles", "id": 4},
    {"name": "background_scribbles", "id": 5},
]


@pytest.fixture
def exported():
    label = np.zeros((6, 10, 10), np.uint8)
    label[:, :4, :4] = 1  # spleen
    label[:, 6:, 6:] = 3  # liver
    label[0, 0, 0] = 2  # the user's own segment
    label[2, 5, 5:8] = 4  # a foreground scribble, crossing into the liver
    label[3:5, 1, 1] = 5  # a background scribble over the spleen, on two slices (a brush paints in 3D)
    return label


def test_segments_become_our_organs_and_scribbles_become_strokes(exported):
    beneath = np.zeros_like(exported)
    beneath[2, 5, 6:8] = LIVER  # what the server's label has under the foreground scribble
    beneath[3:5, 1, 1] = SPLEEN
    clicks, label = read_scribble_layers(
        {"label_info": INFO, "selected_label_name": "liver", "roi": []}, exported, beneath
    )
    assert clicks.organs == [LIVER] and clicks.box is None
    spleen = np.zeros(label.shape, bool)
    spleen[:, :4, :4] = True
    spleen[0, 0, 0] = False  # the user's own segment there: not an organ
    assert ((label == SPLEEN) == spleen).all()  # under the background scribble too: the server's label
    assert (label[:, 6:, 6:] == LIVER).all()
    assert label[2, 5, 5] == 0 and (label[2, 5, 6:8] == LIVER).all()  # under the scribble: the server's label
    assert sorted(clicks.positives(LIVER)) == [(2, 5, 5), (2, 5, 6), (2, 5, 7)]
    assert sorted(clicks.negatives()) == [(3, 1, 1), (4, 1, 1)]
    assert clicks.resolve_organs(label) == [LIVER]


def test_without_a_label_on_the_server_a_scribbled_voxel_is_background_and_the_roi_bounds_the_scribbles(exported):
    roi = [0, 4, 0, 4, 3, 5]  # i, j, k: around the background scribble only (k 3-4), not the foreground one (k 2)
    clicks, label = read_scribble_layers(
        {"label_info": INFO, "selected_label_name": "spleen", "roi": roi}, exported, None
    )
    assert clicks.organs == [SPLEEN] and clicks.box is None
    assert clicks.positives(SPLEEN) == [] and sorted(clicks.negatives()) == [(3, 1, 1), (4, 1, 1)]
    assert label[3, 1, 1] == 0 and label[2, 5, 7] == 0
    with pytest.raises(InputError, match="inside the ROI"):
        read_scribble_layers(
            {"label_info": INFO, "selected_label_name": "spleen", "roi": [7, 9, 7, 9, 0, 1]}, exported, None
        )


@pytest.mark.parametrize(
    "request_, words",
    [
        ({"selected_label_name": "liver"}, "label_info"),
        ({"label_info": [{"name": "liver"}], "selected_label_name": "liver"}, "label_info"),
        ({"label_info": INFO, "selected_label_name": "tumour"}, "unknown organ"),
        ({"label_info": [{"name": "liver", "id": "3"}], "selected_label_name": "liver"}, "integer"),
        ({"label_info": [{"name": "liver", "id": 10**12}], "selected_label_name": "liver"}, "integer 1-255"),
        ({"label_info": [{"name": "liver", "id": 0}], "selected_label_name": "liver"}, "integer 1-255"),
        ({"label_info": INFO[:3], "selected_label_name": "liver"}, "no scribbles"),
    ],
)
def test_bad_scribble_requests_are_refused_with_a_message(exported, request_, words):
    with pytest.raises(InputError, match=words):
        read_scribble_layers(request_, exported, None)
