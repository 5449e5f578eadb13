"""A review workflow on a real SQLite file, with users of every role and a real label map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from amoslabel.config import ReviewSettings
from review.auth import Accounts, Principal
from review.store import ReviewStore
from review.workflow import Workflow
from tests.conftest import amoslabel_command, SHARED

LABEL = SHARED / "ct" / "ts_abdomen_ct_small_label.nii.gz"


def add_users(studies: Path, people: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """Users made with the real command (``amoslabel users add``); returns their tokens by name."""
    tokens = {}
    for name, role in people:
        done = amoslabel_command("users", "add", name, "--role", role, "--studies", studies)
        assert done.returncode == 0, done.stderr
        tokens[name] = done.stdout.strip()
        assert tokens[name].startswith("amos_")
    return tokens


@dataclass
class Team:
    store: ReviewStore
    accounts: Accounts
    workflow: Workflow
    users: Dict[str, Principal]
    tmp: Path
    published: list

    def edited(self, name: str, remove_organ: int) -> Path:
        """A copy of the real label with one organ erased (a junior's or a reviewer's edit)."""
        label = sitk.ReadImage(str(LABEL))
        array = sitk.GetArrayFromImage(label)
        array[array == remove_organ] = 0
        out = sitk.GetImageFromArray(array.astype(np.uint8))
        out.CopyInformation(label)
        path = self.tmp / f"{name}.nii.gz"
        sitk.WriteImage(out, str(path))
        return path


def make_team(tmp_path: Path, url: str | None = None, **settings) -> Team:
    store = ReviewStore(url or f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "versions")
    accounts = Accounts(store)
    published: list = []
    workflow = Workflow(store, ReviewSettings(**settings), publisher=lambda c, p, i: published.append((c, p, i)))
    users = {}
    for name, role in [
        ("j1", "junior"),
        ("j2", "junior"),
        ("s1", "senior"),
        ("s2", "senior"),
        ("s3", "senior"),
        ("s4", "senior"),
        ("admin", "admin"),
    ]:
        users[name] = accounts.add_user(name, role)
    return Team(store, accounts, workflow, users, tmp_path, published)


@pytest.fixture
def team(tmp_path) -> Team:
    return make_team(tmp_path)
