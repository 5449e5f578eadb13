"""Retraining on its own: a network trains again once enough new consensus finals have arrived.

With ``retraining.after_new_finals: N`` (0 = never), each time a case becomes final the trigger counts, per served
network, the final cases that are not in its serving version's training set; at N or more it starts a training run
(queued behind any running one). The run trains a challenger that serves only if it beats the champion
(:mod:`models.promotion`).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List

from models.promotion import due_for_training
from models.versions import ModelStore

log = logging.getLogger(__name__)


class RetrainingTrigger:
    """Starts training a network once ``every`` consensus finals are new to its serving version.

    Args:
        every: ``retraining.after_new_finals`` (0 or less: never).
        stores: the served networks' version stores, by name.
        final_cases: the ids of every final case now.
        start_training: queues a training run of the named network.
    """

    def __init__(
        self,
        every: int,
        stores: Dict[str, ModelStore],
        final_cases: Callable[[], List[str]],
        start_training: Callable[[str], None],
    ):
        self.every = every
        self.stores = stores
        self.final_cases = final_cases
        self.start_training = start_training

    def check(self) -> List[str]:
        """Start every network that is due; returns their names."""
        if self.every <= 0:
            return []
        finals = self.final_cases()
        started = []
        for name, store in self.stores.items():
            champion = store.champion()
            trained_on = champion.meta.get("training_cases", []) if champion else []
            if due_for_training(finals, trained_on, self.every):
                log.info(f"{name}: {self.every}+ new final labels since version {champion.number if champion else '-'}")
                self.start_training(name)
                started.append(name)
        return started
