"""Fetch the strongest open models and import them as pre-labelers: TotalSegmentator (CT ``total``, MRI ``total_mr``)
through the installed ``totalsegmentator`` package's own downloader, MONAI bundles through ``monai.bundle.download``.

    python -m amoslabel models fetch totalsegmentator --task total|total_mr [--fast] --studies DIR
    python -m amoslabel models fetch monai-bundle wholeBody_ct_segmentation --label-map monai_wholebody_ct --studies DIR
    ... --from FILE.zip|DIR      (an air-gapped server: the same release files, carried in by hand)

There is no downloader here and no URL list: the packages know where their files are. What this module adds is what
a hospital server needs around them:

* **Nothing half-made is registered.** A download goes into a staging folder beside the package's weights folder and
  is renamed into place once whole; a killed run leaves only the staging folder, which the next run removes and
  starts again. The import (:func:`models.pretrained.importer.import_model`) checks everything before it publishes.
* **Weights already there are used** (a hospital copied TotalSegmentator's folder in): nothing is downloaded.
* **Nothing phones home.** TotalSegmentator's usage statistics are switched off in its own configuration
  (``send_usage_stats``) before anything of it runs; the only connection is the download.
* **What was fetched is recorded** in the version's ``meta.json``: the task, the package's release, the zip's SHA-256
  when one was carried in, who accepted which terms (``--accept-licence``), beside the import's fingerprint.
* **A failure is one message** that says what to do (exit 2): no network, a broken zip, the wrong layout, a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from amoslabel.errors import InputError
from amoslabel.files import file_sha256
from models.pretrained.importer import import_model
from models.versions import ModelVersion

log = logging.getLogger(__name__)
STAGING_PREFIX = ".amoslabel-partial-"  # a download in progress, beside the package's weights folder
TOTALSEG_TERMS = (
    "TotalSegmentator's open weights (the tasks total and total_mr): the terms are in the TotalSegmentator README "
    "(github.com/wasserth/TotalSegmentator); they are not a licence for clinical use"
)


@dataclass(frozen=True)
class TotalSegTask:
    """One TotalSegmentator task as this app imports it: the nnU-Net parts holding AMOS organs, and its label map."""

    task_ids: Tuple[int, ...]
    label_map: str
    name: str  # the model's default name here


#: (task, fast) -> what to fetch. The parts are those holding the 14 AMOS organs TotalSegmentator has
#: (tests/models/pretrained/test_label_maps.py checks that against the package's class tables).
TOTALSEG_TASKS: Dict[Tuple[str, bool], TotalSegTask] = {
    ("total", False): TotalSegTask((291, 293), "totalsegmentator_total", "totalseg"),  # organs + cardiac (vessels)
    ("total", True): TotalSegTask((297,), "totalsegmentator_total", "totalseg_fast"),  # one 3 mm model
    ("total_mr", False): TotalSegTask((850,), "totalsegmentator_total_mr", "totalseg_mr"),  # organs
    ("total_mr", True): TotalSegTask((852,), "totalsegmentator_total_mr", "totalseg_mr_fast"),
}


def totalseg_task(task: str, fast: bool) -> TotalSegTask:
    try:
        return TOTALSEG_TASKS[(task, fast)]
    except KeyError:
        tasks = sorted({t for t, _ in TOTALSEG_TASKS})
        raise InputError(f"TotalSegmentator task {task!r} is not one this app imports; tasks: {tasks}") from None


def usage_stats_off() -> Path:
    """TotalSegmentator's configuration with its usage statistics off (its own key); returns the file."""
    from totalsegmentator.config import get_totalseg_dir, set_config_key, setup_totalseg

    setup_totalseg()  # writes its config.json if there is none (nothing is sent)
    set_config_key("send_usage_stats", False)
    return get_totalseg_dir() / "config.json"


def fetch_totalsegmentator(
    task: str,
    fast: bool,
    models_dir: Path,
    name: Optional[str] = None,
    source: Optional[Path] = None,
    accept_licence: bool = False,
    reserved: Sequence[str] = (),
    actor: str = "operator",
) -> ModelVersion:
    """Find or download a TotalSegmentator task's weights, then import them as model ``name``.

    Args:
        source: a release zip or a folder carried in by hand (an air-gapped server), instead of the download.
        accept_licence: record that ``actor`` accepted the weights' terms (:data:`TOTALSEG_TERMS`).

    Raises:
        InputError: no network, a broken or wrong zip, a full disk, a refused import; nothing is registered then.
    """
    wanted = totalseg_task(task, fast)
    usage_stats_off()
    from totalsegmentator.config import get_weights_dir
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    weights = get_weights_dir()
    fetched: Dict[str, Any] = {"from": "totalsegmentator", "task": task, "fast": fast}
    fetched["task_ids"] = list(wanted.task_ids)
    folders = []
    for task_id in wanted.task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        fetched.setdefault("releases", []).append(info.get("version"))
        if source is not None:
            dataset, carried = _carried_in(Path(source), info["foldername"], weights)
            fetched.setdefault("carried_in", []).append(carried)
        else:
            dataset = _downloaded(task_id, info["foldername"], weights)
        folders.append(result_folder(dataset))
    if accept_licence:
        fetched["licence"] = {"terms": TOTALSEG_TERMS, "accepted_by": actor, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return import_model(
        "nnunetv2",
        folders,
        name or wanted.name,
        wanted.label_map,
        models_dir,
        reserved=reserved,
        actor=actor,
        fetched=fetched,
    )


def fetch_bundle(
    bundle: str,
    label_map: str | Path,
    models_dir: Path,
    name: Optional[str] = None,
    version: Optional[str] = None,
    hub: str = "monaihosting",
    url: Optional[str] = None,
    source: Optional[Path] = None,
    reserved: Sequence[str] = (),
    actor: str = "operator",
) -> ModelVersion:
    """Download a MONAI bundle with ``monai.bundle.download`` (or take it from ``source``), then import it."""
    fetched: Dict[str, Any] = {"from": "monai-bundle", "bundle": bundle, "version": version, "source": hub}
    with _staging(models_dir.parent / "downloads", bundle) as staging:
        if source is not None:
            folder, carried = _bundle_carried_in(Path(source), bundle, staging)
            fetched["carried_in"] = carried
        else:
            from monai.bundle import download

            with _what_failed(f"the MONAI bundle {bundle!r}", staging):
                download(name=bundle, version=version, bundle_dir=staging, source=hub, url=url, progress=True)
            folder = _bundle_folder(staging, bundle)
            fetched["url"] = url
        return import_model(
            "monai-bundle", [folder], name or bundle, label_map, models_dir, reserved=reserved, actor=actor,
            fetched=fetched,
        )  # fmt: skip


def result_folder(dataset: Path) -> Path:
    """The nnU-Net result folder (``Trainer__Plans__configuration``, with ``plans.json``) inside a dataset folder."""
    found = sorted(p.parent for p in dataset.glob("*/plans.json"))
    if len(found) != 1:
        raise InputError(
            f"{dataset}: expected one nnU-Net result folder (Trainer__Plans__configuration with plans.json) inside, "
            f"found {len(found)}; is this TotalSegmentator's release layout?"
        )
    return found[0]


# -- TotalSegmentator's folders -------------------------------------------------------------------------------------
def _downloaded(task_id: int, folder_name: str, weights: Path) -> Path:
    """The task's dataset folder in the package's weights folder, downloaded by the package if it is not whole."""
    target = weights / folder_name
    if target.is_dir() and _is_whole(target):
        log.info("TotalSegmentator task %s: weights found in %s; nothing downloaded", task_id, target)
        return target
    if target.exists():  # half unpacked by the package itself at some time: start clean
        log.warning("TotalSegmentator task %s: %s is incomplete; removing it and downloading again", task_id, target)
        shutil.rmtree(target)
    from totalsegmentator import libs

    with _staging(weights, folder_name) as staging:
        with _weights_path(staging), _what_failed(f"TotalSegmentator task {task_id}", staging):
            libs.download_pretrained_weights(task_id)
        dataset = staging / folder_name
        if not dataset.is_dir():
            raise InputError(f"TotalSegmentator task {task_id}: the download held no {folder_name} folder")
        os.replace(dataset, target)
    return target


def _carried_in(source: Path, folder_name: str, weights: Path) -> Tuple[Path, Dict[str, Any]]:
    """The task's dataset folder from a release zip (unpacked into the package's weights folder, checked first) or
    from a folder (the dataset folder itself, or one that holds it)."""
    if source.is_dir():
        dataset = source if source.name == folder_name else source / folder_name
        if not dataset.is_dir():
            raise InputError(f"{source}: no {folder_name} folder in it (TotalSegmentator's release layout)")
        return dataset, {"folder": str(source.resolve())}
    zip_file = source if source.is_file() else None
    if zip_file is None:
        raise InputError(f"{source}: no such file or folder")
    target = weights / folder_name
    with _staging(weights, folder_name) as staging:
        _unzip(zip_file, staging)
        dataset = staging / folder_name
        if not dataset.is_dir():
            raise InputError(
                f"{zip_file.name}: no {folder_name} folder at its top; is it TotalSegmentator's release zip "
                f"{folder_name}.zip?"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(dataset, target)
    return target, {"zip": zip_file.name, "sha256": file_sha256(zip_file)}


def _is_whole(dataset: Path) -> bool:
    """A dataset folder with one result folder whose every fold has its final checkpoint."""
    results = list(dataset.glob("*/plans.json"))
    return len(results) == 1 and any(results[0].parent.glob("fold_*/checkpoint_final.pth"))


@contextlib.contextmanager
def _weights_path(folder: Path) -> Iterator[None]:
    """The package's weights folder pointed at ``folder`` for the call (it reads ``TOTALSEG_WEIGHTS_PATH`` then)."""
    before = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)
        else:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = before


# -- bundles --------------------------------------------------------------------------------------------------------
def _bundle_carried_in(source: Path, bundle: str, staging: Path) -> Tuple[Path, Dict[str, Any]]:
    if source.is_dir():  # the bundle's folder, or one that holds it
        folder = source if (source / "configs").is_dir() else _bundle_folder(source, bundle)
        return folder, {"folder": str(source.resolve())}
    if not source.is_file():
        raise InputError(f"{source}: no such file or folder")
    _unzip(source, staging)
    return _bundle_folder(staging, bundle), {"zip": source.name, "sha256": file_sha256(source)}


def _bundle_folder(parent: Path, bundle: str) -> Path:
    """The bundle's folder (with ``configs/``) under ``parent``: named after the bundle, or the only one there."""
    named = parent / bundle
    if (named / "configs").is_dir():
        return named
    found = sorted(p.parent.parent for p in parent.glob("*/configs/metadata.json"))
    if len(found) != 1:
        raise InputError(
            f"no MONAI bundle folder (configs/metadata.json, configs/inference.json, models/model.pt) for {bundle!r}"
        )
    return found[0]


# -- shared ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _staging(parent: Path, name: str) -> Iterator[Path]:
    """A fresh staging folder under ``parent`` (a killed run's is removed first), removed when the block ends."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{name}"
    if staging.exists():
        log.warning("%s: left by an interrupted run; removing it and starting again", staging)
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unzip(zip_file: Path, into: Path) -> None:
    """Unpack a zip checked whole first (its CRCs), with no entry outside ``into``."""
    with _what_failed(zip_file.name, into):
        try:
            with zipfile.ZipFile(zip_file) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise InputError(f"{zip_file.name}: {bad} is damaged (a broken download?): fetch the zip again")
                root = into.resolve()
                for member in archive.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise InputError(f"{zip_file.name}: the entry {member!r} points outside its folder: refused")
                archive.extractall(into)
        except zipfile.BadZipFile:
            raise InputError(f"{zip_file.name}: not a whole zip file (a broken download?): fetch it again") from None


@contextlib.contextmanager
def _what_failed(what: str, folder: Path) -> Iterator[None]:
    """A download's or an unpacking's failure as one message saying what to do."""
    import requests

    try:
        yield
    except InputError:
        raise
    except requests.exceptions.ConnectionError as e:
        raise InputError(
            f"{what}: the server cannot be reached ({type(e).__name__}). Without internet, carry the release zip in "
            "and run the same command with --from FILE.zip"
        ) from None
    except requests.exceptions.HTTPError as e:
        raise InputError(f"{what}: the download was refused ({e})") from None
    except zipfile.BadZipFile:
        raise InputError(f"{what}: the download is not a whole zip file (interrupted?): run again") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise InputError(f"{what}: the disk is full at {folder}; free some space and run again") from None
        raise InputError(f"{what}: {e.strerror or e} ({getattr(e, 'filename', '') or folder})") from None
    except (ValueError, RuntimeError) as e:  # the packages' own refusals (an unknown task, a bad bundle name)
        raise InputError(f"{what}: {e}") from None


#: ``make run PRETRAINED=...``: the TotalSegmentator task each modality gets, (task, fast)
FIRST_DAY: Dict[str, Dict[str, Tuple[str, bool]]] = {
    "totalsegmentator": {"ct": ("total", False), "mri": ("total_mr", False)},
    "totalsegmentator-fast": {"ct": ("total", True), "mri": ("total_mr", True)},
}


def first_day_prelabelers(
    choice: str, models_dir: Path, reserved: Sequence[str] = (), actor: str = "operator"
) -> Dict[str, str]:
    """The pre-labelers of ``choice`` (a key of :data:`FIRST_DAY`), fetched and imported unless they are already;
    returns ``{modality: model name}``, the ``fallback_model`` that makes them the first pre-labelers."""
    if choice not in FIRST_DAY:
        raise InputError(f"PRETRAINED={choice!r}: choose one of {sorted(FIRST_DAY)}")
    chosen = {}
    for modality, (task, fast) in FIRST_DAY[choice].items():
        name = totalseg_task(task, fast).name
        if (models_dir / name).is_dir() and any((models_dir / name).glob("v*/meta.json")):
            log.info("%s: %s is imported already", modality, name)
        else:
            which = f"{task}{' (fast)' if fast else ''}"
            print(f"[amoslabel] fetching TotalSegmentator {which} for {modality} scans ...", flush=True)
            fetch_totalsegmentator(task, fast, models_dir, name, reserved=reserved, actor=actor)
        chosen[modality] = name
    return chosen
