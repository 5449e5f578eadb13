"""Champion and challenger: the promotion rule, the serving pointer with its history, and the retraining trigger."""

from __future__ import annotations

import pytest
import torch

from amoslabel.errors import NotFound
from models.promotion import ValidationScores, decide, due_for_training
from models.versions import ModelStore

S = ValidationScores


@pytest.mark.parametrize(
    "challenger, champion, promoted",
    [
        (S(0.80, 0.70), None, True),  # the first version serves
        (S(0.81, 0.60), S(0.80, 0.70), True),  # mDice up: promoted whatever NSD does
        (S(0.798, 0.75), S(0.80, 0.70), True),  # mDice down by 0.002 <= epsilon, mNSD up
        (S(0.79, 0.75), S(0.80, 0.70), False),  # mDice down by more than epsilon
        (S(0.798, 0.69), S(0.80, 0.70), False),  # within epsilon but mNSD not better
        (S(0.80, 0.70), S(0.80, 0.70), False),  # a tie keeps the champion
        (S(None, None), S(0.80, 0.70), False),  # nothing measured: keep
    ],
)
def test_the_promotion_rule(challenger, champion, promoted):
    decision, reason = decide(challenger, champion, epsilon=0.005)
    assert decision is promoted and reason


def test_the_champion_pointer_serves_keeps_history_and_rolls_back(tmp_path):
    store = ModelStore(tmp_path, "unet")
    weights = {"w": torch.zeros(2)}
    assert store.champion() is None
    v1 = store.publish(weights, {})
    assert store.champion().number == 1 and store.resolve(None).number == 1  # no pointer yet: the newest serves
    store.set_champion(1, "first trained version", "training")
    store.publish(weights, {})
    assert store.champion().number == 1 and store.resolve("latest").number == 1 and store.latest().number == 2
    store.set_champion(2, "mDice improved", "training")
    store.set_champion(1, "rollback: v2 misses adrenals", "alice")
    assert store.resolve(None).number == 1 and store.resolve(2).number == 2
    history = store.champion_history()
    assert [(h["previous"], h["version"], h["by"]) for h in history] == [
        (1, 1, "training"),
        (1, 2, "training"),
        (2, 1, "alice"),
    ]
    with pytest.raises(NotFound):
        store.set_champion(7, "no such version", "alice")
    assert store.champion().number == v1.number  # a refused rollback changed nothing


def test_retraining_is_due_after_enough_new_finals():
    assert not due_for_training(["a", "b", "c"], ["a"], 0)  # off
    assert not due_for_training(["a", "b"], ["a"], 2)
    assert due_for_training(["a", "b", "c"], ["a"], 2)
