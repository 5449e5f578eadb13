"""A server's first start: its first users, and on the sample data a demo in which every role has work at once.

Auth is on by default, so a new installation needs someone who can log in. On a studies folder whose review store
has no user yet, ``make run`` makes one admin (and, on the sample data, a junior and three seniors), each with a
random password, and prints the names and passwords once. On the sample data (``samples/demo.yaml``) it also stages
the cases: two final (training data), one pre-labelled in the junior's queue (the server routes it at start-up),
and one the demo junior has submitted, waiting in the seniors' queues.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from amoslabel.config import AppConfig
from amoslabel.data.tags import ORIGINAL_TAG
from amoslabel.workspace import PROJECT_ROOT
from review.service import IMPORTED_PRELABEL, ReviewService

DEMO_MANIFEST = PROJECT_ROOT / "samples" / "demo.yaml"
FIRST_ADMIN: Tuple[Tuple[str, str], ...] = (("admin", "admin"),)
DEMO_TEAM: Tuple[Tuple[str, str], ...] = FIRST_ADMIN + (
    ("junior", "junior"),
    ("senior1", "senior"),
    ("senior2", "senior"),
    ("senior3", "senior"),
)
DEMO_IN_REVIEW = "ts_ct_series"  # submitted by the demo junior at the first start
ACTOR = "first start"


@dataclass(frozen=True)
class Credential:
    """A user made at the first start, and the password to give them (shown once, never stored)."""

    name: str
    role: str
    password: str


def first_start(config: AppConfig, studies: Path, demo: bool) -> List[Credential]:
    """Make the first users (and stage the demo cases) when the studies' review store has no user; else nothing."""
    service = ReviewService(config, str(studies))
    try:
        if service.accounts.list_users():
            return []
        made = make_users(service, DEMO_TEAM if demo else FIRST_ADMIN)
        if demo:
            stage_case_in_review(service, studies, DEMO_IN_REVIEW, junior="junior")
        return made
    finally:
        service.store.dispose()


def make_users(service: ReviewService, team: Sequence[Tuple[str, str]]) -> List[Credential]:
    made = []
    for name, role in team:
        password = secrets.token_urlsafe(12)  # 16 characters, 96 bits
        service.accounts.add_user(name, role, actor=ACTOR)
        service.accounts.set_password(name, password, actor=ACTOR)
        made.append(Credential(name, role, password))
    return made


def stage_case_in_review(service: ReviewService, studies: Path, case_id: str, junior: str) -> None:
    """The case's imported pre-label, submitted unchanged by ``junior``: the seniors have a case to review."""
    label = studies / "labels" / ORIGINAL_TAG / f"{case_id}.nii.gz"
    workflow = service.workflow
    if not label.is_file() or workflow.register_case(case_id) != "new":
        return
    workflow.record_prelabel(case_id, label, IMPORTED_PRELABEL, {"source": "import"})
    who = service.accounts.by_name(junior)
    workflow.claim(who, case_id)
    workflow.submit(who, case_id)


def credentials_text(made: Sequence[Credential], url: str, studies: Path, database: Optional[str] = None) -> str:
    """What the run command prints once, when the server answers (``database``: a team's PostgreSQL URL)."""
    width = max(len(c.name) for c in made)
    where = f"--studies {studies}" + (f" --database '{database}'" if database else "")
    lines = [
        "  Users made at this first start. Their passwords are shown only now; set another with",
        f"  `.venv/bin/python -m amoslabel users password NAME {where}`.",
        "",
        *(f"    {c.name:<{width}}  {c.role:<7}  {c.password}" for c in made),
        "",
        "  3D Slicer: MONAI Label module, server " + url + ". At the first request it asks for a user name and a",
        "  password: enter one of the above (the module's Client/User-ID setting may stay as it is).",
        f"  Review pages: {url}/review/ (the same user name and password).",
    ]
    return "\n".join(lines)
