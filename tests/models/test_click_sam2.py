"""The click model's sam2 engine: prompts become SAM2's (slice, points as (x, y), a box on its middle slice), the
frames are windowed to 8 bits, and SAM2's video predictor answers one mask over the region, every slice of it.

The SAM2 here has random weights (``made_sam2``, tests/conftest.py): the plumbing is under test, not SAM2's masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.errors import Conflict
from models.click_sam2 import Sam2Engine, _eight_bit, _prompts_per_slice
from models.pretrained.sam2_weights import fetch_sam2


def test_prompts_go_to_their_slices_as_sam2s_x_y_and_a_box_to_its_middle_slice():
    box = (slice(2, 7), slice(10, 20), slice(30, 41))  # z 2-6, y 10-19, x 30-40
    prompts = _prompts_per_slice([(3, 11, 31), (3, 12, 33)], [(5, 15, 35), (40, 1, 1)], box, (10, 50, 50))
    assert prompts == {
        3: ([[31.0, 11.0], [33.0, 12.0]], [1, 1], None),
        5: ([[35.0, 15.0]], [0], None),
        4: ([], [], [30.0, 10.0, 40.0, 19.0]),  # (x0, y0, x1, y1), inclusive, on slice (2 + 6) // 2
    }  # the background click at z 40 is outside the region: left out
    assert _prompts_per_slice([], [], None, (4, 4, 4)) == {}


def test_frames_are_windowed_to_eight_bits():
    ct = np.array([[[-1000.0, -150.0, 50.0, 250.0, 3000.0]]])
    assert _eight_bit(ct, "ct").tolist() == [[[0, 0, 128, 255, 255]]]
    mri = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    frames = _eight_bit(mri, "mri")
    assert frames.dtype == np.uint8 and frames.min() == 0 and frames.max() == 255


def test_the_engine_answers_a_mask_of_the_region_from_the_served_version(made_sam2, tmp_path):
    engine = Sam2Engine(tmp_path / "models")
    crop = np.random.default_rng(0).normal(40, 30, (6, 40, 48)).astype(np.float32)
    crop[:, 10:30, 12:36] += 120  # a brighter block, as an organ
    with pytest.raises(Conflict, match="models fetch sam2"):
        engine.organ_mask(crop, "ct", [(2, 20, 24)], [], None, "cpu")
    assert not engine.available()
    fetch_sam2(tmp_path / "models", source=made_sam2, image_size=256)
    assert engine.available()
    box = (slice(1, 5), slice(10, 30), slice(12, 36))
    mask, version = engine.organ_mask(crop, "ct", [(2, 20, 24)], [(2, 2, 2)], box, "cpu")
    assert version.tag == "sam2:v1" and mask.shape == crop.shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert engine._predictors and list(engine._predictors)[0] == ("sam2:v1", "cpu")  # built once, kept
    nothing, _ = engine.organ_mask(crop, "ct", [(60, 0, 0)], [], None, "cpu")  # no prompt inside the region
    assert not nothing.any()
