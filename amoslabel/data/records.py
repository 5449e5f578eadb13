"""Per-case import records: one small JSON file per image id, written atomically.

A record holds what the import learned about a scan (modality and how it was known, where it came from, its
original geometry, the dataset split), so the server never has to guess it again. One file per case means a crash
can lose at most the record being written, never the others (MONAI Label's single JSON index loses everything).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from amoslabel.files import write_text_atomic
from amoslabel.ids import check_id
from amoslabel.workspace import Workspace


class CaseRecords:
    """The import records of one studies folder, under ``<studies>/.amoslabel/cases/``."""

    def __init__(self, studies: str | Path):
        self.root = Workspace(Path(studies)).cases
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, image_id: str) -> Dict[str, Any]:
        path = self.root / f"{check_id(image_id)}.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def put(self, image_id: str, record: Mapping[str, Any]) -> None:
        write_text_atomic(json.dumps(dict(record), indent=2, default=str), self.root / f"{check_id(image_id)}.json")

    def update(self, image_id: str, changes: Mapping[str, Any]) -> Dict[str, Any]:
        record = {**self.get(image_id), **changes}
        self.put(image_id, record)
        return record

    def modality(self, image_id: str) -> Optional[str]:
        return self.get(image_id).get("modality")
