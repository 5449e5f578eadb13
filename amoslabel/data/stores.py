"""Which datastore a studies argument opens: a folder of NIfTI files, or a DICOMweb server mirrored locally."""

from __future__ import annotations

from typing import Optional

from amoslabel.config import StorageSettings
from amoslabel.data.datastore import AmosDatastore
from amoslabel.data.dicomweb import AmosDicomWebDatastore
from amoslabel.data.locations import is_dicomweb, working_folder

# MONAI Label rewrites its index on every save; a short delay turns a burst of saves into one write (datastore.py).
INDEX_DELAY_S = 10.0


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
