"""Agreement figures of a round's readers (review.consensus)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.errors import Unprocessable
from review.consensus import agreement, fuse_readers
from tests.review.conftest import LABEL


def test_a_label_against_itself_agrees_as_measuring_it_would():
    """The reviewed label is the consensus when no reviewer edited: its agreement is known without measuring it
    (every organ's surface distances), and it is the same as measured on a copy."""
    label = sitk.ReadImage(str(LABEL))
    copy = sitk.Image(label)  # another object with the same voxels: measured
    measured = agreement({"junior:ana": copy}, label)["junior:ana"]
    assert agreement({"junior:ana": label}, label)["junior:ana"] == measured
    held = [name for name, dice in measured["dice_per_organ"].items() if dice is not None]
    assert held and len(held) < len(measured["dice_per_organ"])  # organs it holds (1) and organs it lacks (None)
    assert measured["dice"] == measured["nsd"] == 1.0
    fused, figures = fuse_readers("junior:ana", str(LABEL), {})
    assert figures["against_consensus"] == {"junior:ana": measured} and figures["against_junior"] == {}


def test_a_map_that_is_not_of_organ_ids_is_measured_not_assumed():
    """Ids past the last organ, or a float map: the shortcut stands aside and measuring says what it says."""
    label = sitk.ReadImage(str(LABEL))
    as_float = sitk.Cast(label, sitk.sitkFloat32)
    assert agreement({"a": as_float}, as_float)["a"] == agreement({"a": sitk.Image(as_float)}, as_float)["a"]
    past = sitk.GetArrayFromImage(label)
    past[0, 0, 0] = 16
    beyond = sitk.GetImageFromArray(past.astype(np.uint8))
    with pytest.raises(Unprocessable):
        agreement({"a": beyond}, beyond)
