"""Import scans (and their labels) into a MONAI Label studies folder, case by case, never half.

Sources: an AMOS-layout dataset (``dataset.json`` with ``imagesTr/``, ``labelsTr/``, ``imagesVa/``, ``labelsVa/``,
``imagesTs/``), a manifest YAML listing cases, a DICOM series folder, a single NIfTI file, or a plain folder of NIfTI
files (searched recursively; ``<case>_label.nii.gz`` or ``_seg``/``_labels`` beside ``<case>.nii.gz`` is its label;
subfolders holding DICOM series are series).

Each case is checked completely (image readable, 3D, finite; label ids 0-15 and on the image's grid) before
anything of it is written, and its files are written atomically; a bad case is reported by name and skipped, and
the others go in. Re-running an import skips cases already imported from the same unchanged source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import SimpleITK as sitk
import yaml
from tqdm import tqdm

from amoslabel.data.records import CaseRecords
from amoslabel.ids import check_id, check_tag
from amoslabel.dicom.deidentify import UID_MAP, UidMap, private_folder
from amoslabel.dicom.series import is_dicom_dir, read_series
from amoslabel.errors import InputError
from amoslabel.modality import normalise_name
from amoslabel.workspace import Workspace
from amoslabel.files import copy_atomic
from amoslabel.volume import (
    DEFAULT_MAX_VOXELS,
    NIFTI_SUFFIXES,
    Geometry,
    onto_grid,
    read_image,
    read_label,
    strip_volume_suffix,
    write_atomic,
)

logger = logging.getLogger(__name__)

LABEL_TAGS = {"final": "final", "prelabel": "original"}  # how a label is imported -> MONAI Label tag
_LABEL_SUFFIX = re.compile(r"_(label|labels|seg|segmentation|mask)$")
_AMOS_SPLITS = (("imagesTr", "labelsTr", "train"), ("imagesVa", "labelsVa", "validation"), ("imagesTs", None, "test"))


@dataclass
class ImportItem:
    """One case to import."""

    case_id: str
    image: Path
    label: Optional[Path] = None
    label_as: str = "final"
    modality: Optional[str] = None
    split: Optional[str] = None
    series_uid: Optional[str] = None


@dataclass
class ImportReport:
    imported: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"imported {len(self.imported)}, unchanged {len(self.unchanged)}, skipped {len(self.skipped)}"
        for s in self.skipped:
            text += f"\n  skipped {s['case']}: {s['reason']}"
        return text


def discover(source: str | Path, labels_as: str = "final", modality: Optional[str] = None) -> List[ImportItem]:
    """List the cases in ``source`` (see the module docstring for the layouts understood)."""
    source = Path(source)
    if labels_as not in LABEL_TAGS:
        raise InputError(f"labels_as must be one of {sorted(LABEL_TAGS)}, got {labels_as!r}")
    if not source.exists():
        raise InputError(f"{source}: no such file or folder", status=404)
    if source.is_file() and source.suffix in (".yaml", ".yml"):
        items = _from_manifest(source, labels_as)
    elif source.is_file():
        items = [ImportItem(_safe_id(strip_volume_suffix(source.name)), source, _sibling_label(source), labels_as)]
    elif (source / "dataset.json").is_file() and (source / "imagesTr").is_dir():
        items = _from_amos(source, labels_as)
    elif is_dicom_dir(source):
        items = [ImportItem(_safe_id(source.name), source, None, labels_as)]
    else:
        items = _from_plain_folder(source, labels_as)
    if modality:
        for item in items:
            item.modality = item.modality or modality
    return items


def _from_manifest(path: Path, labels_as: str) -> List[ImportItem]:
    doc = yaml.safe_load(path.read_text()) or {}
    base = path.parent / doc.get("root", ".")
    items = []
    for i, entry in enumerate(doc.get("cases", [])):
        unknown = set(entry) - {"id", "image", "label", "label_as", "modality", "split", "series_uid"}
        if unknown:
            raise InputError(f"{path.name}: case {i}: unknown key(s) {sorted(unknown)}")
        image = (base / entry["image"]).resolve()
        items.append(
            ImportItem(
                case_id=_safe_id(entry.get("id") or strip_volume_suffix(image.name)),
                image=image,
                label=(base / entry["label"]).resolve() if entry.get("label") else None,
                label_as=entry.get("label_as", labels_as),
                modality=entry.get("modality"),
                split=entry.get("split"),
                series_uid=entry.get("series_uid"),
            )
        )
    return items


def _from_amos(root: Path, labels_as: str) -> List[ImportItem]:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except ValueError as e:
        raise InputError(f"{root.name}/dataset.json is not valid JSON ({e})") from None
    modality_names = {str(v).lower() for v in (meta.get("modality") or {}).values()}
    single = normalise_name(next(iter(modality_names))) if len(modality_names) == 1 else None
    items = []
    for images_dir, labels_dir, split in _AMOS_SPLITS:
        folder = root / images_dir
        if not folder.is_dir():
            continue
        images = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        # nnU-Net's channel suffix: every image of an nnU-Net folder ends in _0000; in any other, synth_0000 is a name
        channel_suffix = bool(images) and all(strip_volume_suffix(p.name).endswith("_0000") for p in images)
        for image in images:
            stem = strip_volume_suffix(image.name)
            case = re.sub(r"_0000$", "", stem) if channel_suffix else stem
            label = None
            if labels_dir:
                candidates = [root / labels_dir / f"{case}{s}" for s in NIFTI_SUFFIXES]
                label = next((c for c in candidates if c.is_file()), None)
            # AMOS numbers its MRI cases above 500, whatever dataset.json's single "modality" entry says
            amos = re.fullmatch(r"amos_(\d{4})", case)
            modality = ("mri" if int(amos.group(1)) > 500 else "ct") if amos else single
            items.append(ImportItem(_safe_id(case), image, label, labels_as, modality, split))
    return items


def _from_plain_folder(root: Path, labels_as: str) -> List[ImportItem]:
    items = []
    for folder, dirs, files in os.walk(root):
        folder_path = Path(folder)
        dirs.sort()
        for d in list(dirs):
            if is_dicom_dir(folder_path / d):
                label = _sibling_label(folder_path / d)
                items.append(ImportItem(_safe_id(d), folder_path / d, label, labels_as))
                dirs.remove(d)
        for name in sorted(files):
            if not name.endswith(NIFTI_SUFFIXES) or _LABEL_SUFFIX.search(strip_volume_suffix(name)):
                continue
            image = folder_path / name
            items.append(ImportItem(_safe_id(strip_volume_suffix(name)), image, _sibling_label(image), labels_as))
    return items


def _sibling_label(image: Path) -> Optional[Path]:
    stem = strip_volume_suffix(image.name)
    for suffix in ("_label", "_labels", "_seg", "_segmentation"):
        for ext in NIFTI_SUFFIXES:
            candidate = image.parent / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _safe_id(text: str) -> str:
    return check_id(re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:128] or "case")


class Importer:
    """Writes checked cases into a studies folder laid out as MONAI Label's local datastore expects."""

    def __init__(self, studies: str | Path, link_images: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS):
        self.studies = Path(studies)
        self.studies.mkdir(parents=True, exist_ok=True)
        self.records = CaseRecords(self.studies)
        self.scratch = Workspace(self.studies).scratch
        self.link_images = link_images
        self.max_voxels = max_voxels

    def run(self, items: List[ImportItem], progress: bool = True) -> ImportReport:
        report = ImportReport()
        seen: Dict[str, Path] = {}
        for item in tqdm(items, desc="import", unit="case", disable=not progress):
            if item.case_id in seen:
                report.skipped.append({"case": item.case_id, "reason": f"duplicate id (also {seen[item.case_id]})"})
                continue
            seen[item.case_id] = item.image
            try:
                outcome = self.import_one(item)
            except InputError as e:
                logger.warning(f"import: skipped {item.case_id}: {e}")
                report.skipped.append({"case": item.case_id, "reason": str(e)})
                continue
            (report.unchanged if outcome == "unchanged" else report.imported).append(item.case_id)
        return report

    def import_one(self, item: ImportItem) -> str:
        fingerprint = _source_fingerprint(item)
        image_dest = self.studies / f"{item.case_id}.nii.gz"
        tag = check_tag(LABEL_TAGS.get(item.label_as, item.label_as))
        label_dest = self.studies / "labels" / tag / f"{item.case_id}.nii.gz"
        record = self.records.get(item.case_id)
        if (
            record.get("source_fingerprint") == fingerprint
            and image_dest.exists()
            and (item.label is None or label_dest.exists())
        ):
            return "unchanged"

        # 1. check everything before writing anything
        is_dicom = item.image.is_dir()
        image = read_series(item.image, item.series_uid) if is_dicom else read_image(item.image, self.max_voxels)
        geometry = Geometry.of(image)
        label, label_note = self._checked_label(item.label, image) if item.label else (None, None)
        modality, modality_source = _modality_of(item, image)

        # 2. write: image, then label, then the record that says the case is complete
        if not is_dicom and item.image.name.endswith(".nii.gz"):
            if self.link_images:
                _symlink_atomic(item.image.resolve(), image_dest)
            else:
                copy_atomic(item.image, image_dest, self.scratch)
        else:
            write_atomic(image, image_dest, self.scratch)
        if label is not None:
            label_dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(label, label_dest, self.scratch)
        self.records.put(
            item.case_id,
            {
                "source": str(item.image),
                "source_kind": "dicom" if is_dicom else "nifti",
                "source_fingerprint": fingerprint,
                "modality": modality,
                "modality_source": modality_source,
                "split": item.split,
                "geometry": geometry.to_json(),
                "label_source": str(item.label) if item.label else None,
                "label_tag": tag if item.label else None,
                "label_note": label_note,
                "series_uid": self._pseudonymous_series_uid(image) if is_dicom else None,
            },
        )
        return "imported"

    def _pseudonymous_series_uid(self, image: sitk.Image) -> Optional[str]:
        """The series' de-identified UID; the original stays in the workspace's private UID mapping only."""
        if not image.HasMetaDataKey("0020|000e"):
            return None
        original = image.GetMetaData("0020|000e")
        uids = UidMap(private_folder(self.studies) / UID_MAP)
        try:
            new = uids.new_uid(original)
            uids.record({original: (new, "SeriesInstanceUID")}, patient_id="", pseudonym="")
        finally:
            uids.close()
        return new

    def _checked_label(self, path: Path, image: sitk.Image):
        """The label on the image's grid, and a note when it had to be resampled (same region, another grid)."""
        label = read_label(path, self.max_voxels)
        return onto_grid(Geometry.of(image), label, f"label {path.name}")


def _modality_of(item: ImportItem, image: sitk.Image):
    if item.modality:
        found = normalise_name(item.modality)
        if found is None:
            raise InputError(f"modality {item.modality!r} is not supported; use 'ct' or 'mri'")
        return found, "import"
    if image.HasMetaDataKey("0008|0060"):
        found = normalise_name(image.GetMetaData("0008|0060"))
        if found:
            return found, "dicom"
    return None, None


def _source_fingerprint(item: ImportItem) -> str:
    parts = []
    for p in (item.image, item.label):
        if p is None:
            continue
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        parts += [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file()]
    parts.append(f"{item.label_as}:{item.modality}:{item.series_uid}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def _symlink_atomic(target: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.link-tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, dest)


def import_source(
    source: str | Path,
    studies: str | Path,
    labels_as: str = "final",
    modality: Optional[str] = None,
    link_images: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    progress: bool = True,
) -> ImportReport:
    """Discover and import every case of ``source`` into ``studies``; see :class:`Importer`."""
    items = discover(source, labels_as, modality)
    return Importer(studies, link_images, max_voxels).run(items, progress)


def report_json(report: ImportReport) -> Dict[str, Any]:
    return {"imported": report.imported, "unchanged": report.unchanged, "skipped": report.skipped}
