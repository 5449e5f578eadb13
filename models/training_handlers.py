"""Small ignite handlers that compose a training run: validation, progress logging, and version publishing."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from ignite.engine import Engine, Events

from models.validation import dice_per_organ, mean_dice, mean_over_cases
from models.versions import ModelStore

logger = logging.getLogger(__name__)


class ValidateOrgans:
    """Per-organ Dice of the network on whole validation volumes, every ``interval`` epochs and at the end."""

    def __init__(
        self,
        loader,
        predictor_for: Callable[[str], Callable],
        network: torch.nn.Module,
        device: torch.device,
        interval: int,
    ):
        self.loader = loader
        self.predictor_for = predictor_for
        self.network = network
        self.device = device
        self.interval = interval
        self.last_epoch = -1
        self.results: Dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch == self.last_epoch:
            return
        started = time.time()
        network = getattr(self.network, "module", self.network)
        was_training = network.training
        network.eval()
        per_case: List[Dict[str, float]] = []
        case_ids: List[str] = []
        for batch in self.loader:
            image = batch["image"].to(self.device)
            modality = _first(batch["modality"])
            probs = self.predictor_for(modality)(image, network)
            prediction = probs.argmax(dim=1).cpu()
            per_case.append(dice_per_organ(prediction, batch["label"][:, 0]))
            case_ids.append(_first(batch["case_id"]))
        network.train(was_training)
        organs = mean_over_cases(per_case)
        self.last_epoch = epoch
        self.results = {
            "epoch": epoch,
            "val_dice": {k: (None if math.isnan(v) else round(v, 4)) for k, v in organs.items()},
            "val_mean_dice": None if math.isnan(mean_dice(organs)) else round(mean_dice(organs), 4),
            "val_cases": case_ids,
            "val_seconds": round(time.time() - started, 1),
        }
        shown = ", ".join(f"{k} {v:.3f}" for k, v in organs.items() if not math.isnan(v))
        logger.info(f"validation after epoch {epoch}: mean Dice {self.results['val_mean_dice']} ({shown})")


class ProgressLogger:
    """One readable line every ``every`` iterations: a text progress bar, loss, learning rate, speed and ETA."""

    def __init__(self, name: str, every: int, width: int = 24):
        self.name = name
        self.every = every
        self.width = width
        self.started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self._log)
        engine.add_event_handler(Events.COMPLETED, self._log)

    def _start(self, engine: Engine) -> None:
        self.started = time.time()
        total = engine.state.max_epochs * engine.state.epoch_length
        logger.info(
            f"{self.name}: training for {engine.state.max_epochs} epoch(s) x {engine.state.epoch_length} "
            f"iterations = {total}"
        )

    def _log(self, engine: Engine) -> None:
        state = engine.state
        total = state.max_epochs * state.epoch_length
        done = state.iteration
        elapsed = time.time() - self.started
        per_it = elapsed / max(done, 1)
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        loss = state.output[0]["loss"] if isinstance(state.output, list) else (state.output or {}).get("loss")
        loss_text = f"{float(loss):.4f}" if loss is not None else "n/a"
        lr = engine.optimizer.param_groups[0]["lr"] if hasattr(engine, "optimizer") else float("nan")
        logger.info(
            f"{self.name} [{bar}] {100 * done / max(total, 1):5.1f}% epoch {state.epoch}/{state.max_epochs} "
            f"iter {done}/{total} loss {loss_text} lr {lr:.5f} {per_it:.2f} s/it "
            f"ETA {_duration(per_it * (total - done))}"
        )


class PublishVersion:
    """At the end of training, publish the weights and metadata as the model's next version."""

    def __init__(self, store: ModelStore, meta: Mapping[str, Any], validation: ValidateOrgans):
        self.store = store
        self.meta = dict(meta)
        self.validation = validation
        self.started = time.time()
        self.published: Optional[int] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "started", time.time()))
        # after ValidateOrgans' own COMPLETED handler, which was attached first
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = getattr(engine.network, "module", engine.network)
        state_dict = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        meta = {
            **self.meta,
            "epochs_completed": engine.state.epoch,
            "iterations_completed": engine.state.iteration,
            "train_seconds": round(time.time() - self.started, 1),
            **self.validation.results,
        }
        self.published = self.store.publish(state_dict, meta).number


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )
