"""The click network: MONAI DeepEdit's guidance channels, and a warm start that equals the segmentor without clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amoslabel.config import load_config
from models.click_network import (
    CLICK_INPUT_CHANNELS,
    GUIDANCE_LABELS,
    build_click_network,
    guidance_channels,
    warm_start,
)
from models.networks import build_network


@pytest.fixture(scope="module")
def unet():
    settings = load_config(overrides={"preset": "cpu-fast"}).active.networks["unet"]
    torch.manual_seed(0)
    return settings, build_network(settings.network, settings.params).eval()


def test_one_guidance_channel_per_label_background_first():
    image = np.random.default_rng(0).normal(size=(1, 16, 20, 24)).astype(np.float32)
    out = guidance_channels(image, {"liver": [[8, 10, 12]], "background": [[2, 2, 2], [3, 15, 20]]})
    assert out.shape == (CLICK_INPUT_CHANNELS, 16, 20, 24) == (17, 16, 20, 24)
    assert np.array_equal(out[0], image[0])
    liver = 1 + GUIDANCE_LABELS["liver"]
    assert out[liver].max() == 1.0 and np.unravel_index(out[liver].argmax(), out[liver].shape) == (8, 10, 12)
    assert out[1].max() == 1.0  # background's channel
    quiet = [c for c in range(1, CLICK_INPUT_CHANNELS) if c not in (1, liver)]
    assert not out[quiet].any()  # no clicks, no signal


def test_unknown_labels_are_refused():
    with pytest.raises(ValueError, match="unknown label"):
        guidance_channels(np.zeros((1, 4, 4, 4), np.float32), {"tumour": [[1, 1, 1]]})


def test_a_warm_started_click_network_equals_the_segmentor_without_clicks(unet):
    settings, segmentor = unet
    click = build_click_network(settings.network, settings.params).eval()
    assert warm_start(click, segmentor.state_dict()) == []  # every weight had a source
    image = torch.randn(1, 1, 32, 32, 32)
    no_clicks = torch.cat([image, torch.zeros(1, CLICK_INPUT_CHANNELS - 1, 32, 32, 32)], dim=1)
    with torch.no_grad():
        assert torch.equal(click(no_clicks), segmentor(image))
        clicked = no_clicks.clone()
        clicked[:, 1 + GUIDANCE_LABELS["liver"], 16, 16, 16] = 1.0
        # guidance weights start at zero: a click changes nothing until the model is trained on clicks
        assert torch.equal(click(clicked), segmentor(image))
