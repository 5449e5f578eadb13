"""Which datastore a studies argument opens: a folder of NIfTI files, or a DICOMweb server mirrored locally."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from amoslabel.config import StorageSettings
from amoslabel.data.datastore import AmosDatastore
from amoslabel.data.dicomweb import AmosDicomWebDatastore, cache_root

# MONAI Label rewrites its index on every save; a short delay turns a burst of saves into one write (datastore.py).
INDEX_DELAY_S = 10.0


def is_dicomweb(studies: str) -> bool:
    """True when the studies argument is a DICOMweb server's URL rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def working_folder(studies: str, dicomweb_cache: Optional[str] = None) -> Path:
    """The local folder that plays the studies folder: the folder itself, or a DICOMweb server's mirror."""
    return cache_root(studies, dicomweb_cache) if is_dicomweb(studies) else Path(studies)


def open_datastore(
    studies: str,
    storage: StorageSettings,
    dicomweb_cache: Optional[str] = None,
    auto_reload: bool = False,
    read_only: bool = False,
) -> AmosDatastore:
    """The datastore of ``studies`` (a folder, or a DICOMweb URL), with the limits of ``apps.yaml``'s storage."""
    options = dict(
        max_voxels=storage.max_image_voxels,
        max_upload_bytes=storage.max_upload_mb * 2**20,
        auto_reload=auto_reload,
        read_only=read_only,
        index_delay_s=INDEX_DELAY_S,
    )
    if is_dicomweb(studies):
        return AmosDicomWebDatastore(studies, working_folder(studies, dicomweb_cache), **options)
    return AmosDatastore(studies, **options)
