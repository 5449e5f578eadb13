"""Small ignite handlers that compose a training run: validation, progress logging, and version publishing."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from ignite.engine import Engine, Events

from models.promotion import ValidationScores, decide
from models.validation import mean_dice, mean_over_cases, scores_per_organ
from models.versions import ModelStore

logger = logging.getLogger(__name__)


class ValidateOrgans:
    """Per-organ Dice and NSD of the network on whole validation volumes, every ``interval`` epochs and at the end.

    With a ``reference`` network (the serving champion), that one is measured on the same cases once, at the end,
    so that the promotion decision compares like with like.
    """

    def __init__(
        self,
        loader,
        predictor_for: Callable[[str], Callable],
        network: torch.nn.Module,
        device: torch.device,
        interval: int,
        spacing_for: Callable[[str], Any] = lambda modality: (1.0, 1.0, 1.0),
        reference: Optional[torch.nn.Module] = None,
    ):
        self.loader = loader
        self.predictor_for = predictor_for
        self.network = network
        self.device = device
        self.interval = interval
        self.spacing_for = spacing_for
        self.reference = reference
        self.last_epoch = -1
        self.results: Dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        if self.reference is not None:
            engine.add_event_handler(Events.COMPLETED, self._measure_reference)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch == self.last_epoch:
            return
        started = time.time()
        measured = self._measure(getattr(self.network, "module", self.network))
        self.last_epoch = epoch
        self.results = {"epoch": epoch, **measured, "val_seconds": round(time.time() - started, 1)}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in measured["val_dice"].items() if v is not None)
        logger.info(
            f"validation after epoch {epoch}: mean Dice {measured['val_mean_dice']}, "
            f"mean NSD {measured['val_mean_nsd']} ({shown})"
        )

    def _measure_reference(self, engine: Engine) -> None:
        measured = self._measure(self.reference)
        self.results["champion"] = {k: measured[k] for k in ("val_mean_dice", "val_mean_nsd", "val_dice", "val_nsd")}
        logger.info(
            f"champion on the same cases: mean Dice {measured['val_mean_dice']}, mean NSD {measured['val_mean_nsd']}"
        )

    def _measure(self, network: torch.nn.Module) -> Dict[str, Any]:
        was_training = network.training
        network.eval()
        per_case: Dict[str, List[Dict[str, float]]] = {"dice": [], "nsd": []}
        case_ids: List[str] = []
        for batch in self.loader:
            image = batch["image"].to(self.device)
            modality = _first(batch["modality"])
            probs = self.predictor_for(modality)(image, network)
            prediction = probs.argmax(dim=1).cpu()[0]
            spacing_zyx = tuple(reversed([float(v) for v in self.spacing_for(modality)]))
            scores = scores_per_organ(prediction, batch["label"][0, 0], spacing_zyx)
            per_case["dice"].append(scores["dice"])
            per_case["nsd"].append(scores["nsd"])
            case_ids.append(_first(batch["case_id"]))
        network.train(was_training)
        out: Dict[str, Any] = {"val_cases": case_ids}
        for metric in ("dice", "nsd"):
            organs = mean_over_cases(per_case[metric])
            mean = mean_dice(organs)
            out[f"val_{metric}"] = {k: (None if math.isnan(v) else round(v, 4)) for k, v in organs.items()}
            out[f"val_mean_{metric}"] = None if math.isnan(mean) else round(mean, 4)
        return out


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
    """At the end of training, publish the weights as the model's next version and decide whether it serves.

    The new version (the challenger) is always kept, with its metrics, parent and training set; it becomes the
    champion only if :func:`models.promotion.decide` says so. ``late_meta`` adds what is known only at the end (e.g.
    the count of rank-consistency checks passed).
    """

    def __init__(
        self,
        store: ModelStore,
        meta: Mapping[str, Any],
        validation: ValidateOrgans,
        epsilon: float = 0.0,
        late_meta: Optional[Callable[[], Mapping[str, Any]]] = None,
    ):
        self.store = store
        self.meta = dict(meta)
        self.late_meta = late_meta
        self.validation = validation
        self.epsilon = epsilon
        self.started = time.time()
        self.published: Optional[int] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "started", time.time()))
        # after ValidateOrgans' own COMPLETED handlers, which were attached first
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = getattr(engine.network, "module", engine.network)
        state_dict = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        results = dict(self.validation.results)
        champion = self.store.champion()
        measured = results.get("champion")
        promote, reason = decide(
            ValidationScores(results.get("val_mean_dice"), results.get("val_mean_nsd")),
            ValidationScores(measured["val_mean_dice"], measured["val_mean_nsd"]) if measured else None,
            self.epsilon,
        )
        if champion is not None and measured is None:
            promote, reason = True, "the champion could not be measured (another architecture): the newest serves"
        meta = {
            **self.meta,
            **(self.late_meta() if self.late_meta else {}),
            "epochs_completed": engine.state.epoch,
            "iterations_completed": engine.state.iteration,
            "train_seconds": round(time.time() - self.started, 1),
            **results,
            "promotion": {
                "promoted": promote,
                "reason": reason,
                "champion": champion.number if champion else None,
                "epsilon": self.epsilon,
            },
        }
        if not promote and champion is not None and not self.store.champion_history():
            # name the champion before the new version exists, so that "the newest serves" never picks it
            self.store.set_champion(champion.number, "champion before the first challenger", "training")
        version = self.store.publish(state_dict, meta)
        self.published = version.number
        if promote:
            self.store.set_champion(version.number, reason, "training")
        else:
            logger.info(f"{self.store.model}: version {version.number} kept, not promoted: {reason}")


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )
