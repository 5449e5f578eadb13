"""Interactive inference first: training pauses between iterations while a user waits for a pre-label.

MONAI Label trains in a subprocess and infers in the server process, on the same GPU when there is one. A training
step that holds the GPU (and its memory) while a radiologist waits in Slicer is the wrong priority, so the two
processes share a marker folder: each inference request holds a file in it for as long as it runs, and the trainer
checks the folder before every iteration and waits while a fresh marker is there. A marker older than ``stale_s``
(its process died mid-request) is ignored, and no single wait lasts longer than ``max_pause_s`` so that a stream of
requests cannot stall training for ever.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

MARKER_FOLDER = ".inference-active"


class InferenceGate:
    """The marker folder that interactive inference holds and training watches."""

    def __init__(self, models_dir: Path, stale_s: float = 900.0):
        self.folder = Path(models_dir) / MARKER_FOLDER
        self.stale_s = stale_s

    @contextmanager
    def held(self) -> Iterator[None]:
        """Mark one inference request as running for the duration of the ``with`` block."""
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / f"{os.getpid()}-{uuid.uuid4().hex}"
        marker.touch()
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    def busy(self) -> bool:
        """Whether an inference request that is not stale is running now."""
        now = time.time()
        try:
            markers = list(os.scandir(self.folder))
        except FileNotFoundError:
            return False
        for marker in markers:
            try:
                if now - marker.stat().st_mtime < self.stale_s:
                    return True
            except FileNotFoundError:  # finished while we looked
                continue
        return False


class PauseForInference:
    """Ignite handler: before each training iteration, wait while the gate is held (at most ``max_pause_s``)."""

    def __init__(self, gate: InferenceGate, max_pause_s: float = 300.0, poll_s: float = 0.2):
        self.gate = gate
        self.max_pause_s = max_pause_s
        self.poll_s = poll_s
        self.paused_s = 0.0
        self.pauses = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.gate.busy():
            return
        started = time.monotonic()
        logger.info("training paused at iteration %d: interactive inference is running", engine.state.iteration)
        while self.gate.busy() and time.monotonic() - started < self.max_pause_s:
            time.sleep(self.poll_s)
        waited = time.monotonic() - started
        self.pauses += 1
        self.paused_s += waited
        logger.info("training resumed after %.1f s (%d pauses, %.1f s in all)", waited, self.pauses, self.paused_s)


def should_pause(policy: str, device_type: str) -> bool:
    """``auto`` pauses when training runs on a GPU (which the server's inference shares); else as named."""
    return policy == "always" or (policy == "auto" and device_type == "cuda")
