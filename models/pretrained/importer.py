"""Import a pretrained model as a served pre-labeler: check it whole, then publish it as a version of its own model.

    python -m amoslabel models import --format nnunetv2 RESULT_FOLDER [RESULT_FOLDER ...] --name NAME --label-map MAP
    python -m amoslabel models import --format monai-bundle BUNDLE_FOLDER --name NAME --label-map MAP

Everything is checked before anything is written (the files, the folds, every checkpoint loading into its network,
every class the label map names); a refused import leaves nothing behind. The files serving needs are copied into a
new version folder (``<models>/<name>/v0001/imported/``), published as any trained version is (staged, renamed into
place), with a fingerprint of the weights, the label map and where they came from. The server serves every imported
model at its next start.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from amoslabel.errors import Conflict, InputError
from amoslabel.files import file_sha256, fsync_dir, fsync_file
from amoslabel.ids import check_id
from models.pretrained.bundle import PickChannels, channel_pick, inspect_bundle, load_state, parse_network
from models.pretrained.label_maps import LabelMap
from models.pretrained.nnunet import combined_classes, inspect_part
from models.versions import IMPORTED_DIR, WEIGHTS_FILE, ModelStore, ModelVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedModel:
    """What a format found in the folders: classes, files to copy, and its part of the version's metadata."""

    classes: Dict[str, int]
    files: Dict[Path, Path]  # destination (relative to imported/) -> source
    record: Dict[str, Any]
    write_extra: Optional[Callable[[Path, Mapping[int, int]], Dict[str, Any]]] = None


def _nnunet(paths: Sequence[Path], folds: Optional[Sequence[str]]) -> CheckedModel:
    parts = [inspect_part(p, folds) for p in paths]
    files = {Path(f"part{i}") / f: part.folder / f for i, part in enumerate(parts) for f in part.files()}
    record = {
        "parts": [
            {
                "folder": f"part{i}",
                "source": str(part.folder.resolve()),
                "folds": list(part.folds),
                "trainer": part.trainer,
                "configuration": part.configuration,
                "classes": len(part.classes) - 1,
            }
            for i, part in enumerate(parts)
        ]
    }
    return CheckedModel(combined_classes([part.classes for part in parts]), files, record)


def _bundle(paths: Sequence[Path], folds: Optional[Sequence[str]]) -> CheckedModel:
    if len(paths) != 1 or folds:
        raise InputError("a MONAI bundle import takes one bundle folder and no --folds")
    info = inspect_bundle(paths[0])
    files = {Path("bundle") / f: info.folder / f for f in info.files()}

    def write_trainable(staging: Path, chosen: Mapping[int, int]) -> Dict[str, Any]:
        # the same weights behind the head that picks the AMOS channels: the start the first training fine-tunes
        pick = channel_pick(chosen, background=info.classes.get("background", 0))
        network = PickChannels(parse_network(info.config, str(info.folder)), pick)
        network.network.load_state_dict(load_state(info.folder / "models" / "model.pt"))
        torch.save(network.state_dict(), staging / WEIGHTS_FILE)
        fsync_file(staging / WEIGHTS_FILE)
        return {"network": {"name": "monai_bundle", "params": {"config": info.config, "pick": pick}}}

    record = {"source": str(info.folder.resolve()), "config": str(info.config_file.relative_to(info.folder))}
    return CheckedModel(info.classes, files, record, write_trainable)


#: format name -> checker (one entry per format; ``--format`` choices come from here)
FORMATS: Dict[str, Callable[[Sequence[Path], Optional[Sequence[str]]], CheckedModel]] = {
    "nnunetv2": _nnunet,
    "monai-bundle": _bundle,
}


def import_model(
    fmt: str,
    paths: Sequence[Path],
    name: str,
    label_map: str | Path,
    models_dir: Path,
    reserved: Sequence[str] = (),
    folds: Optional[Sequence[str]] = None,
    actor: str = "operator",
    fetched: Optional[Mapping[str, Any]] = None,
) -> ModelVersion:
    """Check and publish a pretrained model as the next version of model ``name``.

    Args:
        fmt: a key of :data:`FORMATS`.
        paths: the folders (several nnU-Net parts make one model, in order).
        reserved: names the app uses for its own models (networks it trains, ``prior``): refused.
        folds: nnU-Net folds to use (default: every ``fold_*`` present).
        fetched: where the files came from, when :mod:`models.pretrained.fetch` fetched them (kept in ``imported``).

    Raises:
        InputError: anything wrong with the folders, the map or the name; nothing is written then.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; formats: {sorted(FORMATS)}")
    name = check_id(name, "model name")
    if name in reserved:
        raise Conflict(f"{name!r} is one of the app's own models ({sorted(reserved)}): choose another name")
    store = ModelStore(models_dir, name)
    trained = [n for n in store.numbers() if "imported" not in store.get(n).meta]
    if trained:
        raise Conflict(f"model {name!r} has trained versions {trained}: import under another name")
    labels = LabelMap.load(label_map)
    checked = FORMATS[fmt]([Path(p) for p in paths], folds)
    labels.check(checked.classes)
    chosen, _ = labels.resolve(checked.classes, None)
    started = time.monotonic()

    def write(staging: Path) -> Dict[str, Any]:
        target = staging / IMPORTED_DIR
        for relative, source in sorted(checked.files.items()):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / relative)
            fsync_file(target / relative)
        for folder in sorted({(target / r).parent for r in checked.files}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        extra = checked.write_extra(staging, chosen) if checked.write_extra is not None else {}
        record = {**imported, "fingerprint": fingerprint(target)}
        return {**extra, "imported": record}

    imported = {"format": fmt, **checked.record, "by": actor, "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if fetched:
        imported["fetched"] = dict(fetched)
    version = store.publish_staged(
        write,
        {"label_map": labels.as_json(), "organs_mapped": sorted(chosen), "parent_version": None},
    )
    log.info(
        f"imported {fmt} model as {version.tag} ({version.meta['imported']['fingerprint'][:12]}) in "
        f"{time.monotonic() - started:.1f} s"
    )
    return version


def fingerprint(folder: Path) -> str:
    """SHA-256 over every file's relative path and SHA-256, in order: the weights' identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
