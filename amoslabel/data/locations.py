"""Where a studies argument's files are: the folder itself, or a DICOMweb server's local mirror (a light module: the
launcher finds the working folder without importing MONAI Label's datastores)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional


def is_dicomweb(studies: str) -> bool:
    """True when the studies argument is a DICOMweb server's URL rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def cache_root(url: str, base: Optional[str] = None) -> Path:
    """The local working folder of one DICOMweb server (one per URL)."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    root = Path(base) if base else Path.home() / ".cache" / "amoslabel" / "dicomweb"
    return root / digest


def working_folder(studies: str, dicomweb_cache: Optional[str] = None) -> Path:
    """The local folder that plays the studies folder: the folder itself, or a DICOMweb server's mirror."""
    return cache_root(studies, dicomweb_cache) if is_dicomweb(studies) else Path(studies)
