"""Where things are: the project's own folders, and the files AMOS Label keeps beside a team's scans
(``<studies>/.amoslabel/``).

Every path inside the workspace is named here once; code asks a :class:`Workspace` instead of joining folder names
itself, so that moving one (to a shared folder, later an object store) is a change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # apps.yaml, app/, samples/, scripts/
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"  # the real sample scans, beside the checkout
BENCH_OUTPUT = PROJECT_ROOT / ".bench"  # what the benchmarks write
WORKSPACE_DIR = ".amoslabel"


@dataclass(frozen=True)
class Workspace:
    """The workspace of one studies folder. ``Workspace(Path())`` gives the same paths relative to the studies folder.

    Attributes:
        studies: the studies folder (for a DICOMweb datastore, its local working folder).
    """

    studies: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "studies", Path(self.studies))

    @property
    def root(self) -> Path:
        return self.studies / WORKSPACE_DIR

    @property
    def cases(self) -> Path:
        """One small JSON record per case (what the import learned about it)."""
        return self.root / "cases"

    @property
    def scratch(self) -> Path:
        """Temporary files of running requests, on the same file system as the studies (for atomic renames)."""
        return self.root / "tmp"

    @property
    def label_versions(self) -> Path:
        """The review store's immutable, content-addressed label files."""
        return self.root / "label-versions"

    @property
    def review_db(self) -> Path:
        """The review store's SQLite file (when no other database is configured)."""
        return self.root / "review.db"

    @property
    def web_secret(self) -> Path:
        """The key that signs the review pages' session cookies."""
        return self.root / "web-secret"

    @property
    def private(self) -> Path:
        """What re-identifies patients (the DICOM UID map): never served."""
        return self.root / "private"

    @property
    def withdrawn(self) -> Path:
        """Scans an admin withdrew, with their datastore labels, until an explicit purge deletes them."""
        return self.root / "withdrawn"

    @property
    def pending_seg(self) -> Path:
        """DICOM SEGs a DICOMweb server could not take yet; sent again at the next sync."""
        return self.root / "pending-seg"

    def models(self, override: Optional[str | Path] = None) -> Path:
        """Where model versions live: ``storage.models_dir`` of ``apps.yaml`` when set, else ``.amoslabel/models``."""
        return Path(override) if override else self.root / "models"

    def prior_cache(self, models_override: Optional[str | Path] = None) -> Path:
        """The atlas prior's cache, beside the model versions."""
        return self.models(models_override).parent / "prior"
