"""Click requests as 3D Slicer, OHIF and our API send them: the organs to refine, the clicks, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.errors import InputError, Unprocessable
from models.click_request import MAX_CLICKS, organ_id, parse_clicks

SIZE = (50, 40, 30)  # i, j, k
LIVER, SPLEEN = 6, 1


def test_slicers_multi_label_form_names_the_segment_and_sends_every_organs_landmarks():
    empty = {organ: [] for organ in ("spleen", "right kidney", "stomach")}
    request = {**empty, "label": "liver", "liver": [[10, 20, 5]], "spleen": [[40, 5, 2]]}
    clicks = parse_clicks(request, SIZE)
    assert clicks.organs == [LIVER]
    assert clicks.positives(LIVER) == [(5, 20, 10)]  # i, j, k -> z, y, x
    assert clicks.guidance(LIVER) == {"liver": [(5, 20, 10)], "spleen": [(2, 5, 40)]}  # the spleen's guides too
    assert clicks.negatives() == []


def test_ohifs_form_sends_points_per_label_and_background_but_no_organ():
    clicks = parse_clicks({"background": [], "liver": [[1, 2, 3]], "spleen": [[4, 5, 6]]}, SIZE)
    assert clicks.organs == [SPLEEN, LIVER]
    only_background = parse_clicks({"background": [[3, 3, 3]]}, SIZE)
    label = np.zeros(tuple(reversed(SIZE)), np.uint8)
    label[3, 3, 3] = LIVER
    assert only_background.resolve_organs(label) == [LIVER]  # the organ the click lands on
    with pytest.raises(InputError, match="no organ to refine"):
        parse_clicks({"background": [[9, 9, 9]]}, SIZE).resolve_organs(label)


def test_the_single_label_form_takes_foreground_and_background_for_the_named_organ():
    clicks = parse_clicks({"organ": 6, "foreground": [[1, 1, 1]], "background": [[2, 2, 2]]}, SIZE)
    assert clicks.organs == [LIVER] and clicks.positives(LIVER) == [(1, 1, 1)] and clicks.negatives() == [(2, 2, 2)]
    assert clicks.guidance(LIVER)["liver"] == [(1, 1, 1)]
    with pytest.raises(InputError, match="need the organ"):
        parse_clicks({"foreground": [[1, 1, 1]]}, SIZE)


@pytest.mark.parametrize("name", ["liver", "Liver", " LIVER ", "6", 6])
def test_organs_by_name_or_id(name):
    assert organ_id(name) == LIVER


@pytest.mark.parametrize(
    "request_, error, words",
    [
        ({"label": "tumour", "tumour": [[1, 1, 1]]}, InputError, "unknown organ"),
        ({"label": 16, "liver": [[1, 1, 1]]}, InputError, "unknown organ"),
        ({"label": True, "liver": [[1, 1, 1]]}, InputError, "unknown organ"),
        ({"label": "liver"}, InputError, "no clicks"),
        ({"label": "liver", "liver": "[[1, 1, 1]]"}, InputError, "list"),
        ({"label": "liver", "liver": [[1, 1]]}, InputError, "three voxel indices"),
        ({"label": "liver", "liver": [[1, 1, float("nan")]]}, InputError, "three voxel indices"),
        ({"label": "liver", "liver": [[1, True, 1]]}, InputError, "three voxel indices"),
        ({"label": "liver", "liver": [[50, 1, 1]]}, Unprocessable, "outside the image"),
        ({"label": "liver", "liver": [[1, 1, -1]]}, Unprocessable, "outside the image"),
        ({"label": "liver", "liver": [[1, 1, 1]] * (MAX_CLICKS + 1)}, InputError, "at most"),
    ],
)
def test_bad_clicks_are_refused_with_a_message(request_, error, words):
    with pytest.raises(error, match=words) as raised:
        parse_clicks(request_, SIZE)
    assert raised.value.status_code == (422 if error is Unprocessable else 400)


def test_slicers_roi_is_a_box_for_the_named_organ_in_either_order_and_clipped():
    clicks = parse_clicks({"label": "liver", "roi": [12, 3, 5, 30, 0, 9]}, SIZE)  # i flipped, as Slicer may leave it
    assert clicks.organs == [LIVER] and clicks.all_clicks() == []
    assert clicks.box == (slice(0, 10), slice(5, 31), slice(3, 13))  # z, y, x; inclusive -> stop + 1
    assert clicks.guidance(LIVER) == {"liver": [(4, 17, 7)]}  # the box's centre tells the network where
    with_clicks = parse_clicks({"label": "liver", "roi": [0, 60, 0, 10, 0, 10], "liver": [[1, 2, 3]]}, SIZE)
    assert with_clicks.box[2] == slice(0, 50) and with_clicks.positives(LIVER) == [(3, 2, 1)]  # clipped to the scan
    assert parse_clicks({"label": "liver", "liver": [[1, 2, 3]], "roi": []}, SIZE).box is None  # Slicer: no ROI
    for request, error, words in (
        ({"roi": [0, 5, 0, 5, 0, 5]}, InputError, "needs the organ"),
        ({"label": "liver", "roi": [0, 5, 0, 5]}, InputError, "i_min, i_max"),
        ({"label": "liver", "roi": [0, 5, 0, 5, 0, "x"]}, InputError, "i_min, i_max"),
        ({"label": "liver", "roi": [60, 70, 0, 5, 0, 5]}, Unprocessable, "outside the image"),
        ({"label": "liver", "roi": [10**400, 10**401, 0, 5, 0, 5]}, Unprocessable, "outside the image"),  # no overflow
        ({"label": "liver", "liver": [[10**400, 1, 1]]}, Unprocessable, "outside the image"),
    ):
        with pytest.raises(error, match=words):
            parse_clicks(request, SIZE)
