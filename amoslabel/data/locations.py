"""Where a studies argument's files are: the folder itself, or a DICOMweb server's local mirror (a light module: the
launcher finds the working folder without importing MONAI Label's datastores)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional


def is_dicomweb(studies: str) -> bool:
    """True when the studies argument is a DICOMweb server's URL rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def cache_root(url: str, base: Optional[str] = None) -> Path:
    """The local working folder of one DICOMweb server (one per URL): under ``base`` when given
    (``MONAI_LABEL_DICOMWEB_CACHE_PATH``), else under the user's cache folder, ``$XDG_CACHE_HOME`` (the XDG base
    directory rule: an empty or relative value is ignored) or ``~/.cache``."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return (Path(base) if base else user_cache() / "amoslabel" / "dicomweb") / digest


def user_cache() -> Path:
    """``$XDG_CACHE_HOME`` when it is an absolute path, else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def working_folder(studies: str, dicomweb_cache: Optional[str] = None) -> Path:
    """The local folder that plays the studies folder: the folder itself, or a DICOMweb server's mirror."""
    return cache_root(studies, dicomweb_cache) if is_dicomweb(studies) else Path(studies)


def results_folder() -> Path:
    """Where the infer tasks write their answers, for MONAI Label to send. Not straight in the temporary folder:
    MONAI Label's client saves a download as <its tmpdir>/<same file name>, and on a machine running both Slicer and
    the server it would then be deleted by the server's clean-up of its copy."""
    return Path(tempfile.gettempdir()) / "amoslabel-results"
