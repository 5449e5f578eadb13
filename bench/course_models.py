"""The course report's 2D baselines, on axial slices: baseline rows of the model table, never served.

* ``frequency_prior``: per-position class frequency over the training slices; predicts the most frequent class.
* ``logreg3`` / ``logreg5``: multinomial logistic regression on 3x3 / 5x5 intensity patches (exactly a single
  convolution with a softmax).
* ``fcn_slices``: a fully connected network on slices downsampled to 32x32.
* ``unet2d``: a 2D UNet trained with inverse-frequency-weighted cross-entropy.

All take ``(N, 1, S, S)`` slices and give ``(N, 16, S, S)`` class scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from amoslabel.organs import NUM_CLASSES

log = logging.getLogger(__name__)

SLICE_SIZE = 96


class FrequencyPrior2D(torch.nn.Module):
    """Class frequencies per pixel position (the course report's prior); not trained by gradient."""

    def __init__(self, size: int = SLICE_SIZE):
        super().__init__()
        self.register_buffer("counts", torch.zeros(NUM_CLASSES, size, size))

    def fit(self, labels: torch.Tensor) -> None:
        one_hot = F.one_hot(labels[:, 0].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
        self.counts += one_hot.sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frequencies = self.counts / self.counts.sum(0, keepdim=True).clamp(min=1)
        return torch.log(frequencies.clamp(min=1e-6))[None].expand(x.shape[0], -1, -1, -1)


class PatchLogisticRegression(torch.nn.Module):
    """Softmax regression of a pixel's class on the k x k intensity patch around it."""

    def __init__(self, patch: int):
        super().__init__()
        self.linear = torch.nn.Conv2d(1, NUM_CLASSES, patch, padding=patch // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class SliceMLP(torch.nn.Module):
    """Fully connected network: a 32x32 slice in, 32x32 class scores out, upsampled to the input size."""

    def __init__(self, low: int = 32, hidden: int = 512):
        super().__init__()
        self.low = low
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(low * low, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, NUM_CLASSES * low * low),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=(self.low, self.low), mode="area")
        scores = self.net(small).view(-1, NUM_CLASSES, self.low, self.low)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def unet2d() -> torch.nn.Module:
    return UNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, channels=(16, 32, 64, 128), strides=(2, 2, 2))


@dataclass(frozen=True)
class CourseModel:
    """A 2D baseline: how to build it and whether its cross-entropy is inverse-frequency weighted."""

    name: str
    build: Callable[[], torch.nn.Module]
    weighted_loss: bool = False
    learning_rate: float = 3e-3


COURSE_MODELS: Dict[str, CourseModel] = {
    "frequency_prior": CourseModel("frequency_prior", FrequencyPrior2D),
    "logreg3": CourseModel("logreg3", lambda: PatchLogisticRegression(3), learning_rate=1e-2),
    "logreg5": CourseModel("logreg5", lambda: PatchLogisticRegression(5), learning_rate=1e-2),
    "fcn_slices": CourseModel("fcn_slices", SliceMLP, learning_rate=1e-3),
    "unet2d": CourseModel("unet2d", unet2d, weighted_loss=True),
}


def to_slices(image: np.ndarray, label: np.ndarray | None, size: int = SLICE_SIZE) -> Tuple[torch.Tensor, ...]:
    """(1, Z, Y, X) arrays -> (Z, 1, size, size) slices (bilinear image, nearest label)."""
    x = F.interpolate(torch.as_tensor(image[0])[:, None].float(), size=(size, size), mode="bilinear")
    if label is None:
        return (x,)
    y = F.interpolate(torch.as_tensor(label[0])[:, None].float(), size=(size, size), mode="nearest").long()
    return x, y


def inverse_frequency_weights(labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy class weights proportional to 1 / frequency, normalised to mean 1 over present classes."""
    counts = torch.bincount(labels.flatten(), minlength=NUM_CLASSES).float()
    weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    present = weights > 0
    weights[present] = weights[present] / weights[present].mean()
    return weights


def train_course_model(
    spec: CourseModel,
    images: List[torch.Tensor],
    labels: List[torch.Tensor],
    steps: int,
    batch: int = 16,
    seed: int = 0,
) -> Tuple[torch.nn.Module, float]:
    """Train one 2D baseline on the stacked slices; returns the model and the training seconds."""
    torch.manual_seed(seed)
    x, y = torch.cat(images), torch.cat(labels)
    model = spec.build()
    started = time.time()
    if isinstance(model, FrequencyPrior2D):
        model.fit(y)
        return model.eval(), time.time() - started
    weights = inverse_frequency_weights(y) if spec.weighted_loss else None
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        pick = torch.randint(len(x), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[pick]), y[pick, 0], weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % max(steps // 5, 1) == 0:
            log.info("%s step %d/%d loss %.4f", spec.name, step, steps, loss.item())
    return model.eval(), time.time() - started


@torch.no_grad()
def predict_volume(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """Class probabilities (16, Z, Y, X) for a (1, Z, Y, X) volume, slice by slice."""
    (slices,) = to_slices(image, None)
    scores = torch.cat([model(slices[i : i + 32]) for i in range(0, len(slices), 32)])
    scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return torch.softmax(scores, 1).permute(1, 0, 2, 3)
