"""Retraining starts by itself once enough consensus finals are new to the serving version."""

from __future__ import annotations

import torch

from models.retraining import RetrainingTrigger
from models.versions import ModelStore


def _trigger(tmp_path, every, finals, started):
    stores = {name: ModelStore(tmp_path, name) for name in ("unet", "vnet")}
    return RetrainingTrigger(every, stores, lambda: list(finals), started.append), stores


def test_networks_train_once_enough_finals_are_new_to_their_serving_version(tmp_path):
    started, finals = [], ["a", "b"]
    trigger, stores = _trigger(tmp_path, 2, finals, started)
    assert trigger.check() == ["unet", "vnet"] and started == ["unet", "vnet"]  # nothing trained yet: both due

    stores["unet"].publish({"w": torch.zeros(1)}, {"training_cases": ["a", "b"]})
    started.clear()
    assert trigger.check() == ["vnet"]
    finals.append("c")
    assert trigger.check() == ["vnet"]  # one new final for unet is not two
    finals.append("d")
    assert "unet" in trigger.check()


def test_never_when_switched_off(tmp_path):
    started = []
    trigger, _ = _trigger(tmp_path, 0, ["a", "b", "c"], started)
    assert trigger.check() == [] and started == []
