"""Optimisers by name, as a preset's ``train.optimizer`` names them (a registry, not an if-chain)."""

from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch

from amoslabel.config import TrainSettings

Factory = Callable[[Iterable[torch.nn.Parameter], TrainSettings, float], torch.optim.Optimizer]

OPTIMIZERS: Dict[str, Factory] = {
    # AMOS / nnU-Net: SGD with Nesterov momentum
    "sgd": lambda params, t, lr: torch.optim.SGD(
        params, lr=lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay
    ),
    "adamw": lambda params, t, lr: torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay),
}


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], settings: TrainSettings, learning_rate: float
) -> torch.optim.Optimizer:
    """The optimiser ``settings.optimizer`` over ``parameters`` at ``learning_rate``."""
    return OPTIMIZERS[settings.optimizer](parameters, settings, float(learning_rate))
