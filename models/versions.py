"""Numbered, immutable model versions: ``<models_dir>/<model>/v0001/{model.pt, meta.json}``.

A version is published by writing it into a staging folder and renaming that folder into place, so a version is
either complete or absent, and a crash mid-publish leaves only a staging folder that is ignored. Numbers are never
reused and a published version is never overwritten.

Which version serves is the **champion**: ``champion.json`` names it, with the history of every change (a promotion
after training, or a rollback by a person). Until a champion has been named, the newest version serves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import torch

from amoslabel.errors import Conflict, NotFound
from amoslabel.files import fsync_dir, fsync_file

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
CHAMPION_FILE = "champion.json"
#: an imported pretrained model's own files (an nnU-Net result folder, a MONAI bundle), inside its version folder
IMPORTED_DIR = "imported"


@dataclass(frozen=True)
class ModelVersion:
    """One published version of one model."""

    model: str
    number: int
    path: Path
    meta: Dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def tag(self) -> str:
        return f"{self.model}:v{self.number}"


class ModelStore:
    """The versions of one model, in its own folder."""

    def __init__(self, root: str | os.PathLike, model: str):
        self.model = model
        self.root = Path(root) / model
        self.root.mkdir(parents=True, exist_ok=True)

    def numbers(self) -> List[int]:
        """Published version numbers, ascending."""
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit():
                weights = (entry / WEIGHTS_FILE).is_file() or (entry / IMPORTED_DIR).is_dir()
                if (entry / META_FILE).is_file() and weights:
                    found.append(int(entry.name[1:]))
        return sorted(found)

    def latest(self) -> Optional[ModelVersion]:
        numbers = self.numbers()
        return self.get(numbers[-1]) if numbers else None

    def champion(self) -> Optional[ModelVersion]:
        """The version that serves: the named champion, else the newest."""
        record = self._champion_record()
        if record and (self.root / f"v{int(record['version']):04d}" / META_FILE).is_file():
            return self.get(int(record["version"]))
        return self.latest()

    def champion_history(self) -> List[Dict[str, Any]]:
        """Every change of champion, oldest first: version, previous, why, by whom, when."""
        record = self._champion_record()
        return list(record.get("history", [])) if record else []

    def set_champion(self, number: int, reason: str, actor: str) -> ModelVersion:
        """Name ``number`` the serving version (a promotion or a rollback); atomic, and logged in the history."""
        version = self.get(number)  # 404 for a version that does not exist
        with self._lock():
            record = self._champion_record() or {"history": []}
            previous = self.champion()
            entry = {
                "version": number,
                "previous": previous.number if previous else None,
                "reason": reason,
                "by": actor,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            record = {"version": number, "history": record.get("history", []) + [entry]}
            tmp = self.root / f".{CHAMPION_FILE}.{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(record, indent=2))
            fsync_file(tmp)
            os.replace(tmp, self.root / CHAMPION_FILE)
            fsync_dir(self.root)
        logger.info(f"{self.model}: version {number} serves now ({reason})")
        return version

    def _champion_record(self) -> Optional[Dict[str, Any]]:
        path = self.root / CHAMPION_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def get(self, number: int) -> ModelVersion:
        path = self.root / f"v{int(number):04d}"
        if not (path / META_FILE).is_file():
            raise NotFound(f"model {self.model!r} has no version {number}; versions: {self.numbers() or 'none'}")
        return ModelVersion(self.model, int(number), path, json.loads((path / META_FILE).read_text()))

    def resolve(self, requested: Any = None) -> ModelVersion:
        """The version a request asks for (a number, 'v3', or None/'latest'/'champion' for the serving one).

        Raises:
            Conflict: no version has been trained yet.
            NotFound: the requested version does not exist.
        """
        if requested in (None, "", "latest", "champion"):
            latest = self.champion()
            if latest is None:
                raise Conflict(
                    f"model {self.model!r} has no trained version yet, so it cannot pre-label: random weights are "
                    f"never served as a pre-label. Train it first (POST /train/{self.model})."
                )
            return latest
        text = str(requested).lstrip("v")
        if not text.isdigit():
            raise NotFound(f"model version {requested!r} is not a version number")
        return self.get(int(text))

    def publish(self, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> ModelVersion:
        """Publish weights and metadata as the next version number; returns the new version."""

        def write(staging: Path) -> None:
            torch.save(dict(state_dict), staging / WEIGHTS_FILE)
            fsync_file(staging / WEIGHTS_FILE)

        return self.publish_staged(write, meta)

    def publish_staged(
        self, write: Callable[[Path], Optional[Mapping[str, Any]]], meta: Mapping[str, Any]
    ) -> ModelVersion:
        """Publish what ``write(staging_folder)`` puts in a staging folder, with ``meta``, as the next version.

        ``write`` must leave :data:`WEIGHTS_FILE` or an :data:`IMPORTED_DIR` folder there, and may return more
        metadata (what only the written files tell, such as their fingerprint); anything it raises leaves no trace.
        """
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            meta = {**meta, **(write(staging) or {})}
            with self._lock():
                number = (self.numbers() or [0])[-1] + 1
                while (self.root / f"v{number:04d}").exists():  # a crashed publish may have left one behind
                    number += 1
                full_meta = {
                    **meta,
                    "model": self.model,
                    "version": number,
                    "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                (staging / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
                fsync_file(staging / META_FILE)
                fsync_dir(staging)
                final = self.root / f"v{number:04d}"
                os.rename(staging, final)  # fails rather than overwrite an existing version
                fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info(f"Published {self.model} version {number} at {final}")
        return self.get(number)

    def load_weights(self, version: ModelVersion, device: str | torch.device = "cpu") -> Dict[str, torch.Tensor]:
        return torch.load(version.weights, map_location=device, weights_only=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
