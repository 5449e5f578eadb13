"""The click model's sam2 engine: prompts become SAM2's (slice, points as (x, y), a box on its middle slice, negatives
only where the organ has a positive or the box), the frames are windowed to 8 bits and square, and SAM2's video
predictor answers one mask over the region, every slice of it, following the organ both ways.

The SAM2 here has random weights (``made_sam2``, tests/conftest.py), or is a recording stand-in for SAM2's predictor
(to check what it is asked and that every slice comes back): the plumbing is under test, not SAM2's masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amoslabel.errors import Conflict
from models.click_request import parse_clicks
from models.click_sam2 import Sam2Engine, _eight_bit, _prompts_per_slice, sam2_prompts, square_slices
from models.pretrained.sam2_weights import fetch_sam2


def test_prompts_go_to_their_slices_as_sam2s_x_y_and_a_box_to_its_middle_slice():
    box = (slice(2, 7), slice(10, 20), slice(30, 41))  # z 2-6, y 10-19, x 30-40
    negatives = [(3, 13, 34), (5, 15, 35), (40, 1, 1)]
    prompts = _prompts_per_slice([(3, 11, 31), (3, 12, 33)], negatives, box, (10, 50, 50))
    assert prompts == {
        3: ([[31.0, 11.0], [33.0, 12.0], [34.0, 13.0]], [1, 1, 0], None),
        4: ([], [], [30.0, 10.0, 40.0, 19.0]),  # (x0, y0, x1, y1), inclusive, on slice (2 + 6) // 2
    }  # slice 5 has a negative alone (it would say "no organ here"): left out; z 40 is outside the region
    assert _prompts_per_slice([], [(1, 1, 1)], None, (4, 4, 4)) == {}


def test_the_organs_prompts_leave_a_boxs_centre_out_and_take_other_organs_clicks_as_negatives():
    request = {
        "label": "liver",
        "liver": [[10, 11, 12]],
        "spleen": [[20, 21, 22]],
        "background": [[30, 31, 32]],
        "roi": [5, 40, 5, 40, 12, 12],
        "scribbles": [{"kind": "foreground", "points": [[10, 20, 12], [14, 20, 12]]}],
    }
    clicks = parse_clicks(request, (64, 64, 64))
    positives, negatives = sam2_prompts(clicks, 6)
    assert (12, 11, 10) in positives and (22, 21, 20) in negatives and (32, 31, 30) in negatives
    assert (12, 22, 22) not in positives  # the box's centre (z 12, y 22, x 22)
    assert {(12, 20, x) for x in (10, 12, 14)} <= set(positives)  # the scribble's guidance voxels
    assert len(positives) == 1 + 5  # the click and five voxels of the stroke


def test_the_region_is_square_in_plane_inside_the_volume():
    assert square_slices((slice(0, 4), slice(10, 20), slice(0, 40)), (8, 100, 100)) == (
        slice(0, 4),
        slice(0, 40),  # widened about its centre (15) to 40, then moved inside the volume
        slice(0, 40),
    )
    assert square_slices((slice(0, 4), slice(0, 30), slice(0, 10)), (8, 30, 50))[1:] == (slice(0, 30), slice(0, 30))
    assert square_slices((slice(0, 4), slice(0, 30), slice(0, 10)), (8, 30, 20))[2] == slice(0, 20)  # the volume's


def test_frames_are_windowed_to_eight_bits():
    ct = np.array([[[-1000.0, -150.0, 50.0, 250.0, 3000.0]]])
    assert _eight_bit(ct, "ct").tolist() == [[[0, 0, 128, 255, 255]]]
    mri = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    frames = _eight_bit(mri, "mri")
    assert frames.dtype == np.uint8 and frames.min() == 0 and frames.max() == 255


class RecordingPredictor:
    """Stands in for SAM2's video predictor: records the frames and prompts, and answers each slice it is asked to
    follow with a mask (logit 1) at the first prompt it got."""

    def __init__(self):
        self.calls, self.frames, self.directions = [], [], []

    def init_state(self, video_path):
        self.frames = sorted(Path(video_path).glob("*.jpg"))
        self.size = Image.open(self.frames[0]).size  # (width, height)
        return {"frames": len(self.frames)}

    def add_new_points_or_box(self, inference_state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.calls.append(
            (frame_idx, None if points is None else points.tolist(), None if labels is None else labels.tolist(), box)
        )

    def propagate_in_video(self, state, reverse=False):
        self.directions.append(reverse)
        first = min(c[0] for c in self.calls)
        last = max(c[0] for c in self.calls)
        order = range(last, -1, -1) if reverse else range(first, state["frames"])
        x, y = (int(v) for v in (self.calls[0][1] or [[0, 0]])[0])
        for z in order:
            logits = -torch.ones(1, 1, self.size[1], self.size[0])
            logits[0, 0, y, x] = 1.0
            yield z, [1], logits


def test_every_slice_is_answered_from_the_prompted_ones_both_ways(tmp_path, monkeypatch):
    engine = Sam2Engine(tmp_path / "models")
    recording = RecordingPredictor()
    monkeypatch.setattr(engine, "_predictor", lambda version, device: recording)
    crop = np.zeros((7, 30, 40), np.float32)  # 7 slices of 30 rows (y) by 40 columns (x)
    mask = engine.organ_mask(None, crop, "ct", [(3, 5, 25)], [(3, 20, 2)], None, "cpu")
    assert len(recording.frames) == 7 and recording.size == (40, 30)  # one frame per slice, x across
    assert recording.calls == [(3, [[25.0, 5.0], [2.0, 20.0]], [1, 0], None)]
    assert recording.directions == [False, True]  # from slice 3 to the end, and back to slice 0
    assert mask.shape == crop.shape and mask.sum() == 7 and all(mask[z, 5, 25] == 1 for z in range(7))


def test_the_engine_answers_a_mask_of_the_region_from_the_served_version(made_sam2, tmp_path):
    engine = Sam2Engine(tmp_path / "models")
    crop = np.random.default_rng(0).normal(40, 30, (6, 40, 40)).astype(np.float32)
    crop[:, 10:30, 12:36] += 120  # a brighter block, as an organ
    with pytest.raises(Conflict, match="models fetch sam2"):
        engine.version()
    assert not engine.available()
    version = fetch_sam2(tmp_path / "models", source=made_sam2, image_size=256)
    assert engine.available() and engine.version().tag == "sam2:v1"
    box = (slice(1, 5), slice(10, 30), slice(12, 36))
    mask = engine.organ_mask(version, crop, "ct", [(2, 20, 24)], [(2, 2, 2)], box, "cpu")
    assert mask.shape == crop.shape and mask.dtype == np.float32
    assert list(engine._predictors) == [("sam2:v1", "cpu")]  # built once, kept
    nothing = engine.organ_mask(version, crop, "ct", [(60, 0, 0)], [], None, "cpu")  # no prompt in the region
    assert not nothing.any()
