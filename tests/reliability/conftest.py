"""The reliability suite (issue 9, R1-R5; R6 is tests/amoslabel/test_backup.py): real servers on their own studies
folders, with users of every role, and the figures each test measured.

Two sizes. ``make test`` (CI) runs the short form; ``make reliability`` sets ``AMOS_RELIABILITY=full`` (more kills,
more writes, more fuzzing) and prints the table of ``docs/reliability.md`` from what the tests wrote to
``test-output/reliability/*.json`` (``python -m bench.reliability_report``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import requests
import yaml

from tests.conftest import OUTPUT, ROOT, ServerProcess
from tests.review.conftest import add_users

FULL = os.environ.get("AMOS_RELIABILITY", "short") == "full"
REPORTS = OUTPUT / "reliability"
PEOPLE = [
    ("boss", "admin"),
    ("j1", "junior"),
    ("j2", "junior"),
    ("s1", "senior"),
    ("s2", "senior"),
    ("s3", "senior"),
    ("s4", "senior"),
]


def size(short: int, full: int) -> int:
    """The short (CI) or the full (``make reliability``) load."""
    return full if FULL else short


def report(name: str, figures: Dict[str, Any]) -> None:
    """Keep what a test measured, for docs/reliability.md."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    figures = {"form": "full" if FULL else "short", "when": time.strftime("%Y-%m-%d %H:%M"), **figures}
    (REPORTS / f"{name}.json").write_text(json.dumps(figures, indent=1, default=str))


def private_studies(shared: Path, root: Path, final: Optional[str] = "ct_small") -> Path:
    """A studies folder whose scans are *symlinks* to private copies of the real scans (as ``import --link`` does).

    MONAI Label's own image removal deletes through such a link; with private copies a regression can only ever
    destroy a copy, never ../shared/data. ``final`` names the case imported with its label as final (or None).
    """
    sources = root / "sources"
    sources.mkdir(parents=True)
    cases = []
    for case_id, image, label, modality in [
        ("ct_small", "ct/ts_abdomen_ct_small.nii.gz", "ct/ts_abdomen_ct_small_label.nii.gz", "ct"),
        ("mr_small", "mr/ts_abdomen_mr_small.nii.gz", "mr/ts_abdomen_mr_small_label.nii.gz", "mri"),
    ]:
        shutil.copy(shared / image, sources / Path(image).name)
        entry = {"id": case_id, "image": Path(image).name, "modality": modality}
        if case_id == final:
            shutil.copy(shared / label, sources / Path(label).name)
            entry["label"] = Path(label).name
        cases.append(entry)
    manifest = sources / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"root": ".", "cases": cases}))
    from amoslabel.data.importer import import_source

    studies = root / "studies"
    result = import_source(manifest, studies, link_images=True, progress=False)
    assert not result.skipped, result.summary()
    return studies


@dataclass
class TeamServer:
    """A running server, its studies folder and a token per user."""

    process: ServerProcess
    studies: Path
    tokens: Dict[str, str]
    sources: Path
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    def http(self, who: str) -> requests.Session:
        """A session on the MONAI Label endpoints that carries ``who``'s token."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return session

    def api(self, who: Optional[str], method: str, path: str, token: Optional[str] = None, **kwargs):
        """A review API call as ``who`` (a user name; None = no token)."""
        headers = dict(kwargs.pop("headers", {}))
        token = token if token is not None else (self.tokens.get(who) if who else None)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"{self.url}/review/api{path}", headers=headers, timeout=120, **kwargs)


def write_config(root: Path, routing: str = "least_loaded", scoring: bool = True) -> Path:
    """apps.yaml with the review routing and the background scorer set, for ``--conf config``."""
    config = yaml.safe_load((ROOT / "apps.yaml").read_text())
    config["review"]["routing"] = routing
    config["active_learning"]["enabled"] = scoring
    path = root / "apps.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_team_server(shared: Path, root: Path, config: Path, final: str = "ct_small") -> TeamServer:
    studies = private_studies(shared, root, final)
    tokens = add_users(studies, PEOPLE)
    process = ServerProcess(studies, root, {"preset": "cpu-fast", "config": str(config)})
    process.wait_ready()
    return TeamServer(process, studies, tokens, root / "sources", {"config": config})


@pytest.fixture(scope="module")
def team_server(shared, tmp_path_factory):
    """One server per test module, on private copies of two real scans (one with a final label); juniors and
    seniors claim from the pool (the routing where claims race), no background scoring."""
    root = tmp_path_factory.mktemp("reliability")
    server = start_team_server(shared, root, write_config(root, routing="pool", scoring=False))
    try:
        yield server
    finally:
        server.process.stop()
        REPORTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.process.log_path, REPORTS / f"server-{root.name}.log")
