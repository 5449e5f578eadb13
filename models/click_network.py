"""The click model's network: the scan plus one click-guidance channel per label, as MONAI's DeepEdit feeds it.

Guidance is MONAI's own encoding (:class:`monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd`): for each
label, in label id order with background first, a channel that is zero without clicks, else the clicked voxels
blurred by a Gaussian and scaled to [0, 1]. A click model warm-starts from a segmentation version of the same
architecture (:func:`warm_start`): every weight is copied, and the first convolution's new guidance inputs start at
zero, so before any training, and without clicks, the click model predicts exactly what the segmentor does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

from amoslabel.organs import NUM_CLASSES, ORGANS
from models.networks import build_network

#: the guidance channels' labels, in order: background, then the 15 organs by id (MONAI DeepEdit's ``label_names``)
GUIDANCE_LABELS: Dict[str, int] = {"background": 0, **{o.name: o.id for o in sorted(ORGANS, key=lambda o: o.id)}}
CLICK_INPUT_CHANNELS = 1 + len(GUIDANCE_LABELS)


def build_click_network(name: str, params: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A registered architecture with the scan and the guidance channels as inputs, 16 classes out."""
    return build_network(name, params, out_channels=NUM_CLASSES, in_channels=CLICK_INPUT_CHANNELS)


def warm_start(click_network: torch.nn.Module, segmentation_state: Mapping[str, torch.Tensor]) -> List[str]:
    """Load a segmentation version's weights into a click network of the same architecture.

    A weight of the same shape is copied. One that differs only in its input channels (the first convolution: the
    segmentor sees the scan alone) gets the scan's weights in its first input channel and zeros for the guidance.

    Returns:
        The names of the click network's weights that kept their initial values (nothing to copy from).
    """
    state = click_network.state_dict()
    kept = []
    for key, value in state.items():
        source = segmentation_state.get(key)
        if source is not None and source.shape == value.shape:
            state[key] = source.clone()
        elif (
            source is not None
            and source.dim() >= 2
            and source.shape[0] == value.shape[0]
            and source.shape[2:] == value.shape[2:]
        ):
            widened = torch.zeros_like(value)
            widened[:, : source.shape[1]] = source
            state[key] = widened
        else:
            kept.append(key)
    click_network.load_state_dict(state)
    return kept


def guidance_channels(
    image: np.ndarray, clicks: Mapping[str, Sequence[Sequence[int]]], sigma: float = 3.0
) -> np.ndarray:
    """The network's input: ``image`` (1, z, y, x) with one guidance channel per label of :data:`GUIDANCE_LABELS`.

    Args:
        clicks: label name -> clicked voxels (z, y, x) on the image's grid; a label without clicks gets a zero channel.

    Raises:
        ValueError: a label name that is not background or one of the 15 organs.
    """
    from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd

    unknown = sorted(set(clicks) - set(GUIDANCE_LABELS))
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}: clicks are for background or one of the 15 organs")
    guidance = {name: [list(map(int, p)) for p in clicks.get(name, [])] for name in GUIDANCE_LABELS}
    add = AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", sigma=sigma, number_intensity_ch=1)
    out = add({"image": np.asarray(image, dtype=np.float32), "guidance": guidance})["image"]
    return np.asarray(out, dtype=np.float32)
