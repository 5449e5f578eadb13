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
* A label the review workflow takes (a viewer's save, a consensus final) is written once, into the workflow's
  version store; the datastore's tag (``working``, ``final``) is a relative symbolic link to that version's file.
  MONAI Label needs no copy: it finds labels by listing ``labels/<tag>/`` and serves them by path, and both follow
  the link.
* Removal through the API (``DELETE /datastore/image``, ``DELETE /datastore/label``) cannot destroy work: a scan is a
  review case, so its removal is refused, and so is removing a label the workflow owns (``final``, ``working``,
  ``original``). MONAI Label's own removal deletes the *target* of a symlinked image, i.e. the team's source
  dataset when the studies were imported with ``--link``; a label removed here unlinks only its own file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

import SimpleITK as sitk

from amoslabel.data.records import CaseRecords
from amoslabel.data.tags import FINAL_TAG, KEPT_AS_VERSION, ORIGINAL_TAG, WORKFLOW_TAGS, WORKING_TAG
from amoslabel.errors import InputError, NotFound, TooLarge
from amoslabel.files import copy_atomic, file_sha256, move_entry, write_text_atomic
from amoslabel.ids import check_id, check_tag
from amoslabel.modality import normalise_name
from amoslabel.volume import Geometry, read_image, read_label_on_grid, write_atomic
from amoslabel.workspace import Workspace

logger = logging.getLogger(__name__)

INDEX_FILE = "datastore_v2.json"
PURGED = "PURGED"  # what a purged, withdrawn image leaves in its archive folder

# The review workflow's hook on saves: (image id, checked label on its image's grid, tag asked for, info) -> the
# version file the workflow stored it as, or None when the workflow does not take that save.
LabelSaver = Callable[[str, sitk.Image, str, Dict[str, Any]], Optional[Path]]


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
        self.label_saver: Optional[LabelSaver] = None  # set when the review workflow runs
        # asked who may save (image id, tag, info) before an uploaded file is read; raises to refuse
        self.label_save_check: Optional[Callable[[str, str, Dict[str, Any]], Any]] = None
        self.image_added: Optional[Callable[[str], None]] = None  # told once a new scan is stored (the workflow)
        # whether this process leads its team's background work (amoslabel.cluster.leadership); set by the workflow
        self.leads: Callable[[], bool] = lambda: True
        self.index_delay_s = index_delay_s
        self._index_timer: Optional[threading.Timer] = None
        self._index_timer_lock = threading.Lock()
        self._status_cache: Optional[tuple] = None
        self._refresh_lock = threading.Lock()
        self._started = False
        self.workspace = Workspace(Path(studies))
        self.records = CaseRecords(studies)
        self.scratch = self.workspace.scratch
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

        With a :attr:`label_saver` attached (the review workflow), a checked label goes to it first. A save it takes
        is written once, into its version store, and kept here as a link under ``working`` (a pre-label: under
        ``original``) instead of the tag asked for, so that ``final`` only ever holds what the workflow publishes.
        """
        check_id(image_id)
        check_tag(label_tag)
        if self.label_save_check is not None:
            self._object(image_id)  # an unknown image is a 404 before anything else
            self.label_save_check(image_id, label_tag, dict(label_info or {}))  # who may save, before the file
        label = self._checked_label(image_id, label_filename)
        if self.label_saver is not None:
            version_file = self.label_saver(image_id, label, label_tag, dict(label_info or {}))
            if version_file is KEPT_AS_VERSION:
                return image_id  # a version of the workflow's only; the datastore's labels stay as they are
            if version_file is not None:
                tag = ORIGINAL_TAG if label_tag == ORIGINAL_TAG else WORKING_TAG
                return self.link_label(image_id, version_file, tag, label_info)
        return self._store_label(image_id, label, label_tag, label_info)

    def publish_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Store a label decided outside a viewer's save (e.g. an attention map), bypassing :attr:`label_saver`."""
        check_id(image_id)
        check_tag(label_tag)
        return self._store_label(image_id, self._checked_label(image_id, label_filename), label_tag, label_info)

    def publish_final(self, image_id: str, version_file: str | Path, info: Dict[str, Any]) -> Optional[str]:
        """The workflow's consensus label as the datastore's ``final``: a link to its version file."""
        if not self.has_image(image_id):
            return None
        return self.link_label(image_id, version_file, FINAL_TAG, info)

    def link_label(self, image_id: str, version_file: str | Path, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Make ``labels/<tag>/<id>.nii.gz`` a relative link to a stored version file (named by its SHA-256).

        The version file was checked when the workflow stored it; the link is swapped in atomically, so a reader sees
        the old label or the new one. A relative link survives moving or restoring the studies folder whole.
        """
        obj = self._object(check_id(image_id))
        version_file = Path(version_file)
        if not version_file.is_file():
            raise NotFound(f"label version {version_file.name} of {image_id!r} is not in the version store")
        label_dir = Path(self._datastore.label_path(check_tag(label_tag)))
        dest = label_dir / f"{image_id}.nii.gz"
        with FileLock(self._lock_file):
            label_dir.mkdir(parents=True, exist_ok=True)
            tmp = label_dir / f".{image_id}.{os.getpid()}.{time.monotonic_ns()}.link"
            os.symlink(os.path.relpath(version_file.resolve(), label_dir.resolve()), tmp)
            os.replace(tmp, dest)
            self._index_label(obj, label_tag, dest, label_info, sha256=version_file.name.split(".")[0])
        logger.info(f"Label {label_tag!r} of {image_id} is label version {version_file.name}")
        return image_id

    def _checked_label(self, image_id: str, label_filename: str) -> sitk.Image:
        """The uploaded label read and checked (ids 0-15, size limits, on its image's grid), on that exact grid."""
        self._object(image_id)
        self._check_upload_size(label_filename)
        name = f"label for {image_id}"
        return read_label_on_grid(self.get_image_uri(image_id), label_filename, self.max_voxels, name)

    def _store_label(self, image_id: str, label: sitk.Image, label_tag: str, label_info: Dict[str, Any]) -> str:
        obj = self._object(image_id)
        label_dir = Path(self._datastore.label_path(label_tag))
        dest = label_dir / f"{image_id}.nii.gz"
        with FileLock(self._lock_file):
            label_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(label, dest, self.scratch)
            self._index_label(obj, label_tag, dest, label_info, sha256=file_sha256(dest))
        logger.info(f"Saved label {label_tag!r} for {image_id}")
        return image_id

    def _index_label(self, obj, label_tag: str, dest: Path, label_info: Dict[str, Any], sha256: str) -> None:
        info = dict(label_info or {})
        info.update({"ts": int(time.time()), "name": dest.name, "sha256": sha256})
        obj.labels[label_tag] = DataModel(info=info, ext=".nii.gz")
        self._update_datastore_file(lock=False)

    def _object(self, image_id: str) -> ImageLabelModel:
        obj = self._datastore.objects.get(image_id) if self.has_image(image_id) else None
        if obj is None:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        return obj

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

    def withdraw_image(self, image_id: str) -> Optional[Path]:
        """Move the scan and its labels out of the datastore into ``.amoslabel/withdrawn/<id>/`` (a linked scan: the
        link, never its target) and forget the image. Returns the archive folder (None: the image is not here)."""
        archive = self.workspace.withdrawn / check_id(image_id)
        obj = self._datastore.objects.get(image_id) if self.has_image(image_id) else None
        if obj is None:
            return archive if archive.is_dir() else None
        with FileLock(self._lock_file):
            image = Path(self._datastore.image_path()) / f"{image_id}{obj.image.ext}"
            if image.exists() or image.is_symlink():
                move_entry(image, archive / image.name)
            for tag, label in obj.labels.items():
                path = Path(self._datastore.label_path(tag)) / f"{image_id}{label.ext}"
                if path.exists() or path.is_symlink():
                    move_entry(path, archive / "labels" / tag / path.name)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info(f"Withdrew image {image_id}: archived in {archive}")
        return archive

    def purge_withdrawn(self, image_id: str) -> int:
        """Delete a withdrawn image's archive and its case record; how many files went. Links go, never their
        targets."""
        archive = self.workspace.withdrawn / check_id(image_id)
        if image_id in self._datastore.objects:
            raise InputError(f"image {image_id!r} is in the datastore: withdraw it before purging", status=409)
        count = 0
        if archive.is_dir():
            count = sum(1 for p in archive.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != PURGED)
            shutil.rmtree(archive)  # removes links themselves, does not follow them
        record = self.records.root / f"{image_id}.json"
        if record.is_file():
            record.unlink()
            count += 1
        # what stays is a marker: the id stays withdrawn (a DICOMweb mirror must not fetch the series again)
        archive.mkdir(parents=True, exist_ok=True)
        write_text_atomic(time.strftime("purged %Y-%m-%dT%H:%M:%S%z\n"), archive / PURGED)
        return count

    def is_withdrawn(self, image_id: str) -> bool:
        return (self.workspace.withdrawn / image_id).is_dir()

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
        self.has_image(image_id)
        info = super().get_image_info(image_id)
        if info:
            info = {**self.records.get(image_id).get("image_info", {}), **info}
        return info

    def image_info_without_path(self, image_id: str) -> Dict[str, Any]:
        """:meth:`get_image_info` less the scan's path on the server, which it resolves on disk: what a viewer's
        Next Sample answers (``amoslabel.server.routes.review_sample``; resolving the path cost a tenth of a busy
        server's Next Sample). Empty for an image not in the datastore."""
        self.has_image(image_id)
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return {}
        return {**self.records.get(image_id).get("image_info", {}), **copy.deepcopy(obj.image.info)}

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
        """Whether the image is in the datastore. An image that another server of a team added (its file is in the
        shared studies folder; this process's index does not have it yet) is taken into this index first, with the
        labels its tag folders hold for it; the index file is left to the server that wrote it."""
        if image_id in self._datastore.objects:
            return True
        try:
            check_id(image_id)
        except InputError:
            return False
        folder = Path(self._datastore.image_path())
        ext = next((e for e in (".nii.gz", ".nii") if (folder / f"{image_id}{e}").is_file()), None)
        if ext is not None:
            with self._refresh_lock:
                if image_id not in self._datastore.objects:
                    self._datastore.objects[image_id] = self._adopted(folder, image_id, ext)
                    logger.info(f"datastore: {image_id} was added by another server; taken into this index")
        return image_id in self._datastore.objects

    def _adopted(self, folder: Path, image_id: str, ext: str) -> ImageLabelModel:
        labels = {}
        labels_root = Path(self._datastore.label_path(FINAL_TAG)).parent
        for tag_dir in sorted(p for p in labels_root.iterdir() if p.is_dir()) if labels_root.is_dir() else []:
            label_ext = next((e for e in (".nii.gz", ".nii") if (tag_dir / f"{image_id}{e}").is_file()), None)
            if label_ext is not None:
                labels[tag_dir.name] = DataModel(ext=label_ext, info={})
        stamp = int((folder / f"{image_id}{ext}").stat().st_mtime)
        return ImageLabelModel(image=DataModel(ext=ext, info={"ts": stamp}), labels=labels)

    def get_image_uri(self, image_id: str) -> str:
        self.has_image(image_id)
        return super().get_image_uri(image_id)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file; a label that another server of a team linked (the index of this process does not have
        it yet) is found at its place in the shared folder."""
        uri = super().get_label_uri(label_id, label_tag)
        if uri or not self.has_image(label_id):
            return uri
        try:
            linked = Path(self._datastore.label_path(check_tag(label_tag))) / f"{check_id(label_id)}.nii.gz"
        except InputError:
            return ""
        return str(linked.resolve()) if linked.is_file() else ""

    def case_record(self, image_id: str) -> Dict[str, Any]:
        return self.records.get(image_id)

    # -- what the review workflow and active learning read of a case ----------------------------------------------
    def image_file(self, image_id: str) -> Optional[str]:
        """The scan's file, or None when the image is unknown or its file is missing."""
        uri = self.get_image_uri(image_id) if self.has_image(image_id) else None
        return uri if uri and Path(uri).is_file() else None

    def label_file(self, image_id: str, tag: str) -> Optional[str]:
        """The file of the image's label ``tag``, or None."""
        uri = self.get_label_uri(image_id, tag) if self.has_image(image_id) else None
        return uri if uri and Path(uri).is_file() else None

    def modality_code(self, image_id: str) -> str:
        """The DICOM modality code of a case: ``MR`` for a scan recorded as MRI, else ``CT``."""
        return "MR" if self.records.modality(image_id) == "mri" else "CT"

    def study_uid(self, image_id: str) -> Optional[str]:
        """The DICOM StudyInstanceUID of a case, where its scan came from a DICOMweb server."""
        return None

    def flag_working(self, image_id: str, meta: Dict[str, Any]) -> None:
        """Put the reviewers' ``segmentationMeta`` on the working label (MONAI Label's Slicer Reviewer reads it)."""
        if self.has_image(image_id) and self.get_label_uri(image_id, WORKING_TAG):
            self.update_label_info(image_id, WORKING_TAG, {"segmentationMeta": meta})

    def prelabel_recorded(self, image_id: str, label_file: str, model_tag: str, version: int) -> None:
        """Told when a case's first pre-label became its first label version (the DICOMweb store sends it on)."""

    def version_for_readers(self, notice: Dict[str, Any]) -> None:
        """Told of each version a reader must see (submitted, a reviewer's edit: see
        :class:`review.workflow.Workflow`); a folder of files has no DICOM viewer to send it to."""

    def cases_of_study(self, study_uid: str) -> List[str]:
        """The cases whose scan is a series of a DICOM study (none here: no DICOM server)."""
        return []

    def seg_series(self, image_id: str) -> Set[str]:
        """The SeriesInstanceUIDs of the SEGs a DICOM server holds for a case (none here: no DICOM server)."""
        return set()

    def infer_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Check the image a ``/infer`` request names before MONAI Label turns it into a path; add the case.

        An uploaded scan (MONAI Label's temporary file) passes as it is. A named image must be a valid id of an
        image here: the request then carries ``case_id`` and the case's import record.
        """
        request = dict(request)
        image = request.get("image")
        if isinstance(image, str) and not _is_uploaded_file(image):
            check_id(image)
            if not self.get_image_uri(image):
                raise NotFound(f"image {image!r} is not in the datastore")
            request["case_id"] = image
            request["case_record"] = self.case_record(image)
        return request


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


def _is_uploaded_file(path: str) -> bool:
    """True for the temporary file MONAI Label's /infer endpoint writes when a client uploads the scan itself."""
    if "\x00" in path:
        return False  # not a file name at all; the id check refuses it
    real = os.path.realpath(path)
    return (
        os.path.isfile(real)
        and os.path.dirname(real) == os.path.realpath(tempfile.gettempdir())
        and os.path.basename(real).startswith("tmp")
    )
