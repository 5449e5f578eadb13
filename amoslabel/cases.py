"""Per-case import records: one small JSON file per image id, written atomically.

A record holds what the import learned about a scan (modality and how it was known, where it came from, its
original geometry, the dataset split), so the server never has to guess it again. One file per case means a crash
can lose at most the record being written, never the others (MONAI Label's single JSON index loses everything).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from amoslabel.errors import InputError
from amoslabel.volume import write_text_atomic

# Ids become file names: letters, digits, '.', '_' and '-', no leading dot, no '..'.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

WORKSPACE_DIR = ".amoslabel"


def check_id(image_id: Any, what: str = "image id") -> str:
    """Return ``image_id`` if it is a safe id, else raise :class:`InputError` (no paths, no control characters)."""
    if not isinstance(image_id, str) or not _ID.match(image_id) or ".." in image_id:
        raise InputError(
            f"{what} {str(image_id)[:80]!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return image_id


def check_tag(tag: Any) -> str:
    """Return ``tag`` if it is a safe label tag, else raise :class:`InputError`."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise InputError(f"label tag {str(tag)[:80]!r} is not valid: use 1-64 letters, digits, '_' or '-'")
    return tag


class CaseRecords:
    """The import records of one studies folder, under ``<studies>/.amoslabel/cases/``."""

    def __init__(self, studies: str | Path):
        self.root = Path(studies) / WORKSPACE_DIR / "cases"
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
