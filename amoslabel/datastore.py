"""MONAI Label's local datastore, made safe for a team's work.

Differences from ``monailabel.datastore.local.LocalDatastore``, which this extends:

* The JSON index is written atomically (temporary file, fsync, rename). MONAI Label rewrites it in place and a crash
  mid-write leaves it empty, after which the server will not start. If an index is found unreadable anyway (written
  by plain MONAI Label, or damaged), it is moved aside and rebuilt from the files on disk, which are the truth.
* Ids and tags are checked before they become file names (no paths, no control characters).
* Uploaded images and labels are checked before anything is stored: readable, 3D, finite intensities, AMOS label
  ids 0-15, and a label on exactly its image's grid. Bad input raises an :class:`~amoslabel.errors.InputError`,
  which MONAI Label's endpoints turn into a 4xx answer; nothing is half-written and nothing stored is touched.
* Images and labels are copied in atomically, so a crash leaves either the old file or the new one.
* Removal through the API (``DELETE /datastore/image``, ``DELETE /datastore/label``) cannot destroy work: a scan is a
  review case, so its removal is refused, and so is removing a label the workflow owns (``final``, ``working``,
  ``original``). MONAI Label's own removal deletes the *target* of a symlinked image, i.e. the team's source
  dataset when the studies were imported with ``--link``; a label removed here unlinks only its own file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from amoslabel.cases import WORKSPACE_DIR, CaseRecords, check_id, check_tag
from amoslabel.errors import InputError, NotFound, TooLarge
from amoslabel.modality import normalise_name
from amoslabel.volume import (
    Geometry,
    copy_atomic,
    read_header,
    read_image,
    read_label,
    write_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "datastore_v2.json"
WORKFLOW_TAGS = ("final", "working", "original")  # written by the review workflow and /infer; never removed by API


class AmosDatastore(LocalDatastore):
    """A local studies folder: images at the top, labels under ``labels/<tag>/``, our records under ``.amoslabel/``."""

    def __init__(
        self,
        studies: str,
        max_voxels: int,
        max_upload_bytes: int,
        auto_reload: bool = False,
        read_only: bool = False,
        extensions=("*.nii.gz", "*.nii"),
        index_delay_s: float = 0.0,
    ):
        self.max_voxels = max_voxels
        self.max_upload_bytes = max_upload_bytes
        # set by the app when the review workflow runs: (image id, checked label file, tag, info) -> taken?
        self.label_saver: Optional[Callable[[str, str, str, Dict[str, Any]], Optional[str]]] = None
        self.image_added: Optional[Callable[[str], None]] = None  # told once a new scan is stored (the workflow)
        self.working_tag = "working"
        self.index_delay_s = index_delay_s
        self._index_timer: Optional[threading.Timer] = None
        self._index_timer_lock = threading.Lock()
        self._status_cache: Optional[tuple] = None
        self._started = False
        self.records = CaseRecords(studies)
        self.scratch = Path(studies) / WORKSPACE_DIR / "tmp"
        self.scratch.mkdir(parents=True, exist_ok=True)
        _set_aside_unreadable_index(Path(studies) / INDEX_FILE)
        super().__init__(studies, extensions=extensions, auto_reload=auto_reload, read_only=read_only)
        self._started = True

    # -- the index ---------------------------------------------------------------------------------------------
    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the index soon, not now: many saves within ``index_delay_s`` cost one write.

        MONAI Label rewrites the whole index (2.75 MB at 10,000 images) on every save, which made each save cost
        0.2-0.5 s of CPU. Label and image files are written (atomically) before this is called, and start-up
        reconciles the index with the files on disk, so a crash inside the delay loses no file; the workflow's
        own records are in its database.
        """
        if self.index_delay_s <= 0 or not self._started:
            self._write_index(lock)  # start-up's reconciled index is written at once
            return
        with self._index_timer_lock:
            if self._index_timer is None:
                self._index_timer = threading.Timer(self.index_delay_s, self._flush_scheduled)
                self._index_timer.daemon = True
                self._index_timer.start()

    def _flush_scheduled(self) -> None:
        with self._index_timer_lock:
            self._index_timer = None
        self._write_index(lock=True)

    def flush_index(self) -> None:
        """Write the index now (and cancel a pending delayed write)."""
        with self._index_timer_lock:
            if self._index_timer is not None:
                self._index_timer.cancel()
                self._index_timer = None
        self._write_index(lock=True)

    def _write_index(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            # pydantic's own serialiser: 20 ms at 10,000 images where json.dumps(indent=2) held the GIL for 150 ms
            text = self._datastore.model_dump_json(exclude={"base_path"}, indent=2)
            write_text_atomic(text, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    # -- writes ------------------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """Check and store an uploaded scan as ``<id>.nii.gz``; its modality (if given) goes to the case record."""
        if not image_id:
            image_id = _id_from_upload(image_filename)
        check_id(image_id)
        self._check_upload_size(image_filename)
        image = read_image(image_filename, self.max_voxels, name=f"image {image_id}")
        dest = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        info = dict(image_info or {})
        modality = info.get("modality")
        if modality is not None and normalise_name(modality) is None:
            raise InputError(f"modality {modality!r} is not supported; use 'ct' or 'mri'")
        with FileLock(self._lock_file):
            if image_filename.endswith(".nii.gz"):
                copy_atomic(image_filename, dest, self.scratch)
            else:
                write_atomic(image, dest, self.scratch)
            info.update({"ts": int(time.time()), "name": dest.name, "sha256": file_sha256(dest)})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=".nii.gz"))
            self._update_datastore_file(lock=False)
        record = {"source": "upload", "uploaded_by": info.get("user"), "geometry": Geometry.of(image).to_json()}
        if modality:
            record.update(modality=normalise_name(modality), modality_source="uploader")
        self.records.update(image_id, record)
        logger.info(f"Added image {image_id} ({'x'.join(map(str, image.GetSize()))})")
        if self.image_added is not None:
            self.image_added(image_id)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Check and store a label map for an existing image as ``labels/<tag>/<id>.nii.gz`` (uint8).

        With a :attr:`label_saver` attached (the review workflow), a checked label goes to it first; a save it
        takes is kept here under :attr:`working_tag` instead of the tag asked for, so that ``final`` only ever
        holds what the workflow publishes.
        """
        return self._save_label(image_id, label_filename, label_tag, label_info, through_workflow=True)

    def publish_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Store a label the workflow has decided on (its consensus ``final``), bypassing :attr:`label_saver`."""
        return self._save_label(image_id, label_filename, label_tag, label_info, through_workflow=False)

    def _save_label(self, image_id, label_filename, label_tag, label_info, through_workflow: bool) -> str:
        check_id(image_id)
        check_tag(label_tag)
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        self._check_upload_size(label_filename)
        label = read_label(label_filename, self.max_voxels, name=f"label for {image_id}")
        image_geometry = Geometry.of(read_header(self.get_image_uri(image_id)))
        reason = image_geometry.mismatch(Geometry.of(label))
        if reason:
            raise InputError(f"label for {image_id}: {reason}; a label must be on its image's grid", status=422)
        image_geometry.apply_to(label)  # within tolerance: store it on the image's exact grid
        if through_workflow and self.label_saver is not None:
            staged = self.scratch / f"checked-{image_id}-{os.getpid()}-{time.monotonic_ns()}.nii.gz"
            write_atomic(label, staged, self.scratch)
            try:
                taken = self.label_saver(image_id, str(staged), label_tag, dict(label_info or {}))
            finally:
                staged.unlink(missing_ok=True)
            if taken:
                label_tag = self.working_tag
        label_dir = Path(self._datastore.label_path(label_tag))
        dest = label_dir / f"{image_id}.nii.gz"
        with FileLock(self._lock_file):
            label_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(label, dest, self.scratch)
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": dest.name, "sha256": file_sha256(dest)})
            obj.labels[label_tag] = DataModel(info=info, ext=".nii.gz")
            self._update_datastore_file(lock=False)
        logger.info(f"Saved label {label_tag!r} for {image_id}")
        return image_id

    # -- removals ----------------------------------------------------------------------------------------------
    def remove_image(self, image_id: str) -> None:
        """Refused (403): the scan is a review case; its versions, reviews and audit would be orphaned."""
        check_id(image_id)
        if image_id not in self._datastore.objects:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        raise InputError(
            f"image {image_id!r} is a review case: scans are not removed through the API (its label versions, "
            "reviews and history would be orphaned)",
            status=403,
        )

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label the workflow does not own (e.g. a ``draft``); the workflow's tags are refused (403)."""
        check_id(label_id)
        check_tag(label_tag)
        if label_tag in WORKFLOW_TAGS:
            raise InputError(
                f"the label tag {label_tag!r} is kept by the review workflow and is not removed through the API",
                status=403,
            )
        obj = self._datastore.objects.get(label_id)
        if obj is None or label_tag not in obj.labels:
            raise NotFound(f"no label {label_tag!r} for image {label_id!r}")
        path = Path(self._datastore.label_path(label_tag)) / f"{label_id}{obj.labels[label_tag].ext}"
        with FileLock(self._lock_file):
            path.unlink(missing_ok=True)  # the entry itself, never what a link points to
            del obj.labels[label_tag]
            self._update_datastore_file(lock=False)
        logger.info(f"Removed label {label_tag!r} of {label_id}")

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        """MONAI Label's update, with an unknown image or label answered 404 (it raised a 500)."""
        check_id(label_id)
        check_tag(label_tag)
        obj = self._datastore.objects.get(label_id)
        if obj is None or label_tag not in obj.labels:
            raise NotFound(f"no label {label_tag!r} for image {label_id!r}")
        super().update_label_info(label_id, label_tag, info)

    def _check_upload_size(self, path: str) -> None:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size > self.max_upload_bytes:
            raise TooLarge(
                f"upload of {size / 2**20:.0f} MB exceeds the limit of {self.max_upload_bytes / 2**20:.0f} MB"
            )

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        """Update an image's info in memory and in its own small record file.

        MONAI Label calls this on every Next Sample (to note the strategy); its own version rewrites the whole index
        each time (2.75 MB at 10,000 images), which made Next Sample cost a second. The index picks the info up
        at its next rewrite; the case record keeps it across restarts meanwhile.
        """
        obj = self._datastore.objects.get(check_id(image_id))
        if obj is None:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        obj.image.info.update(info)
        self.records.update(image_id, {"image_info": {**self.records.get(image_id).get("image_info", {}), **info}})

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        info = super().get_image_info(image_id)
        if info:
            info = {**self.records.get(image_id).get("image_info", {}), **info}
        return info

    def status(self) -> Dict[str, Any]:
        """MONAI Label's datastore statistics, cached for a few seconds.

        MONAI Label asks for them on every Next Sample (through ``info()``), and they cost a pass over every image
        (90 ms at 10,000 images).
        """
        now = time.monotonic()
        cached = self._status_cache
        if cached is None or now - cached[0] > 5.0:
            cached = (now, super().status())
            self._status_cache = cached
        return dict(cached[1])

    def has_image(self, image_id: str) -> bool:
        return image_id in self._datastore.objects

    def case_record(self, image_id: str) -> Dict[str, Any]:
        return self.records.get(image_id)


def _set_aside_unreadable_index(index: Path) -> Optional[Path]:
    """Move an unreadable JSON index out of the way so the datastore rebuilds it from the files on disk."""
    if not index.exists():
        return None
    try:
        json.loads(index.read_text() or "null") or _raise_empty()
        return None
    except (ValueError, OSError) as e:
        aside = index.with_name(f"{index.name}.unreadable-{int(time.time())}")
        os.replace(index, aside)
        logger.warning(
            f"Datastore index {index} was unreadable ({e}); moved to {aside.name} and rebuilt from the "
            "images and labels on disk (their files are intact; per-label info such as timestamps is "
            "reset)"
        )
        return aside


def _raise_empty():
    raise ValueError("empty index")


def _id_from_upload(filename: str) -> str:
    name = os.path.basename(filename)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
