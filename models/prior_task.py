"""MONAI Label infer task for the atlas prior, served as model ``prior``.

The atlas is built from the datastore's final labels (the newest ``prior.max_final_labels``, by when each became
final) and the label-only maps named in ``apps.yaml``. The finals are read from the datastore's ``labels/final/``
folder on disk, not from this process's datastore index: in a team the leader publishes every final, and the other
servers' indexes do not list it until they restart.

It is rebuilt when that set changes, and cached on disk by a fingerprint of its sources (a restart, or another server
of a team, loads it instead of building it). The first atlas is built when it is first needed. A later change (a new
final) is built in the background, started by the first of: the review workflow publishing a final in this process
(:meth:`AtlasCache.refresh`), the periodic check (:meth:`AtlasCache.watch`, every :data:`CHECK_S` seconds: finals
another server published), or a request that finds the sources changed. A request waits up to :data:`WAIT_S`
seconds for that build and is otherwise answered with the previous atlas; its result names the label maps the atlas
it used was built from (``atlas_sources``), those left out (``atlas_skipped``) and those still being added
(``atlas_pending``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from filelock import FileLock
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from amoslabel.config import AppConfig
from amoslabel.errors import Conflict, Unprocessable
from amoslabel.organs import label_table
from amoslabel.volume import read_label
from models.atlas_placement import PriorSettings, label_with_prior
from models.atlas_prior import Atlas, build_atlas
from models.infer_task import labels_present, sha256_of, write_prelabel
from models.preprocessing import LoadVolumed, ResolveModalityd, preprocessing_summary

log = logging.getLogger(__name__)

PRIOR_MODEL = "prior"
CHECK_S = 30.0  # how often a server looks for finals that another server of its team published
GATHER_S = 1.0  # the finals published within this long after one make one look at the sources, not one each
WAIT_S = 20.0  # how long a request waits for the atlas of the current finals before the previous one answers
KEEP_CACHED = 4  # atlas files kept in the cache folder (the newest); older ones are deleted
RETRY_S = 600.0  # a set of sources whose build failed is tried again after this long (or when the sources change)
LABEL_EXTENSIONS = (".nii.gz", ".nii")

Sources = List[Tuple[str, Path]]


def final_label_folder(store: Datastore) -> Optional[Path]:
    """The datastore's ``labels/final/`` folder, where it has one (MONAI Label's local datastore, which ours extend).

    MONAI Label has no public accessor for it; its local datastore finds labels by listing this folder.
    """
    layout = getattr(store, "_datastore", None)
    label_path = getattr(layout, "label_path", None)
    return Path(label_path(DefaultLabelTag.FINAL)) if callable(label_path) else None


def final_labels(store: Datastore, limit: Optional[int] = None) -> List[Tuple[float, str, Path]]:
    """(when it became final, image id, label file) of each final label, newest first (the ``limit`` newest).

    Read from the final-label folder on disk, which every server of a team shares and the review workflow's
    :meth:`~amoslabel.data.datastore.AmosDatastore.publish_final` links into (the index of this process lists only
    what this process linked, and what was there at its start). A final's time is that of its entry in the folder
    (the link, made when it was published), not of the version file it points to: a consensus that approves a label
    unchanged publishes a version file stored when it was submitted. A datastore without such a folder: its index.
    Only the newest entries' links are followed: a folder of thousands of finals is listed, not resolved.
    """
    folder = final_label_folder(store)
    found = []
    if folder is None:
        for image_id in store.get_labeled_images(label_tag=DefaultLabelTag.FINAL):
            uri = store.get_label_uri(image_id, DefaultLabelTag.FINAL)
            if uri and Path(uri).is_file():
                found.append((Path(uri).stat().st_mtime, image_id, Path(uri)))
        found.sort(key=lambda f: (-f[0], f[1]))
        return found[:limit]
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        entries = []
    listed = []
    for entry in entries:
        image_id = next((entry.name[: -len(e)] for e in LABEL_EXTENSIONS if entry.name.endswith(e)), None)
        if not image_id or entry.name.startswith("."):  # a link being swapped in is a dot-file
            continue
        try:
            listed.append((entry.stat(follow_symlinks=False).st_mtime, image_id, entry.path))
        except OSError:  # removed meanwhile
            continue
    listed.sort(key=lambda f: (-f[0], f[1]))
    for published, image_id, path in listed:
        if limit is not None and len(found) >= limit:
            break
        try:
            target = Path(path).resolve(strict=True)
        except OSError:  # removed meanwhile, or a link to a missing version file
            log.warning("prior: final label %s has no file; skipped", path)
            continue
        if target.is_file():
            found.append((published, image_id, target))
    return found


class AtlasCache:
    """The current atlas for a set of label maps: built once per distinct set, kept on disk.

    Args:
        wait_s: how long :meth:`get` waits for the atlas of changed sources before it answers with the previous one.
    """

    def __init__(
        self,
        config: AppConfig,
        datastore: Callable[[], Optional[Datastore]],
        cache_dir: Path,
        wait_s: float = WAIT_S,
    ):
        self.config = config
        self.datastore = datastore
        self.cache_dir = cache_dir
        self.wait_s = wait_s
        self._state = threading.Condition()  # guards the fields below; notified when an atlas is swapped in
        self._atlas: Optional[Atlas] = None
        self._key = ""
        self._builder: Optional[threading.Thread] = None
        self._asked = 0  # rebuilds asked for; the builder looks again when this moved while it worked
        self._failed: Dict[str, Tuple[str, float]] = {}  # key -> why its build failed, when (see _gave_up)
        self._build_lock = threading.Lock()  # one build at a time in this process (and the file lock: in a team)
        self._stop = threading.Event()
        self._published = threading.Event()  # a new final since the watcher's last look
        self._watcher: Optional[threading.Thread] = None

    # -- what the atlas is built from --------------------------------------------------------------------------------
    def sources(self) -> Sources:
        """(name, path) of every label map the atlas is built from: the label maps, then the newest finals."""
        found: Sources = []
        base = Path(self.config.source_dir or ".")
        for path in self.config.prior.label_map_paths(base):
            if path.is_file():
                found.append((path.name.split(".")[0], path))
            else:
                log.warning("prior: label map %s does not exist; skipped", path)
        store = self.datastore()
        if store is not None and self.config.prior.max_final_labels > 0:
            finals = final_labels(store, self.config.prior.max_final_labels)
            found += [(image_id, path) for _, image_id, path in finals]
        return found

    def _key_of(self, sources: Sources) -> str:
        digest = hashlib.sha256()
        prior = self.config.prior
        digest.update(f"{prior.spacing_mm}/{prior.smoothing_mm}".encode())
        for name, path in sources:
            stat = path.stat()
            digest.update(f"{name}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _wanted(self) -> Tuple[Sources, str]:
        """The current sources and their key (a file withdrawn between listing and reading it: listed again)."""
        for attempt in range(3):
            sources = self.sources()
            try:
                return sources, self._key_of(sources) if sources else ""
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- the atlas ---------------------------------------------------------------------------------------------------
    def get(self, wait_s: Optional[float] = None) -> Atlas:
        """The atlas for the current sources; see :meth:`current`."""
        return self.current(wait_s)[0]

    def current(self, wait_s: Optional[float] = None) -> Tuple[Atlas, List[str]]:
        """The atlas for the current sources, and the names of the sources it does not include yet (``[]``).

        The first atlas is built (or loaded from the cache folder) here. When the sources changed since, the new atlas
        is built in the background; this waits for it up to ``wait_s`` (default: the cache's) and otherwise answers
        with the previous atlas, naming the sources it lacks.

        Raises:
            Conflict: there is no label map to build it from, or none of them can be used.
        """
        wait_s = self.wait_s if wait_s is None else wait_s
        sources, key = self._wanted()
        if not sources:
            raise Conflict("the atlas prior has no label maps: add final labels or prior.label_maps in apps.yaml")
        with self._state:
            if self._atlas is not None and key == self._key:
                return self._atlas, []
            first = self._atlas is None
            if not first and not self._gave_up(key):
                self._start_builder()
        if first:
            with self._build_lock:  # a build under way (the background's) finishes first; this then loads its file
                with self._state:
                    if self._atlas is not None and key == self._key:
                        return self._atlas, []
                atlas = self._load_or_build(key, sources)
                with self._state:
                    self._atlas, self._key = atlas, key
                    self._state.notify_all()
                return atlas, []
        with self._state:
            self._state.wait_for(
                lambda: self._key == key or self._gave_up(key) or self._builder is None, timeout=max(wait_s, 0)
            )
            if self._key == key:
                return self._atlas, []
            pending = [n for n, _ in sources if n not in self._atlas.sources and n not in self._atlas.skipped]
            if self._gave_up(key):
                log.warning("prior: the atlas of the current label maps could not be built (%s); the previous "
                            "one answers (%d label maps)", self._failed[key][0], len(self._atlas.sources))  # fmt: skip
            else:
                log.info(
                    "prior: the atlas is being rebuilt from %d label maps (new: %s); the previous one answers "
                    "meanwhile (%d label maps)", len(sources), ", ".join(pending) or "changed files",
                    len(self._atlas.sources),
                )  # fmt: skip
            return self._atlas, pending

    def refresh(self) -> bool:
        """Look at the sources now and, when they changed, start building their atlas in the background (a new final:
        the review workflow's final listeners call this). True when a build was started or is under way. Before the
        first atlas was asked for, nothing is built: the first request builds it."""
        try:
            sources, key = self._wanted()
        except OSError as e:  # a file went between listing and reading: the next look sees the folder as it is
            log.warning("prior: could not list the atlas's label maps: %s", e)
            return False
        with self._state:
            if self._atlas is None or not sources or key == self._key or self._gave_up(key):
                return self._builder is not None
            self._start_builder()
            return True

    def final_published(self) -> None:
        """A new final (the review workflow's final listeners call this): the watcher looks at the sources at once,
        and the finals published within :data:`GATHER_S` after it make one more look rather than one each (a look
        lists the final-label folder: under a busy review it was a twentieth of the server's CPU). Without a
        watcher, it looks now."""
        if self._watcher is None:
            self.refresh()
        else:
            self._published.set()

    def watch(self, interval_s: float = CHECK_S) -> "AtlasCache":
        """Check the sources every ``interval_s`` seconds in a daemon thread (:meth:`refresh`); :meth:`stop` ends it."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(interval_s,), name="atlas-watch", daemon=True)
            self._watcher.start()
            log.info("prior: the atlas follows the final labels (checked every %.0f s, and on each new final)",
                     interval_s)  # fmt: skip
        return self

    def stop(self) -> None:
        self._stop.set()
        self._published.set()  # the watcher wakes, sees the stop and ends

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until no build runs in the background; False if one still runs after ``timeout`` seconds."""
        with self._state:
            return self._state.wait_for(lambda: self._builder is None, timeout=timeout)

    def _watch(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self._published.wait(interval_s)
            if self._stop.is_set():
                return
            self._published.clear()
            try:
                self.refresh()
            except Exception:  # the check must outlive one bad look at the folder
                log.exception("prior: checking the atlas's label maps failed")
            self._stop.wait(GATHER_S)  # finals published meanwhile: one look after this pause

    def _gave_up(self, key: str) -> bool:
        """(Under ``_state``.) Whether the build of ``key`` failed less than :data:`RETRY_S` seconds ago."""
        failed = self._failed.get(key)
        return failed is not None and time.monotonic() - failed[1] < RETRY_S

    def _start_builder(self) -> None:
        """(Under ``_state``.) Build the current sources' atlas in the background, unless a builder runs already."""
        self._asked += 1
        if self._builder is None:
            # not a daemon: at the server's exit Python waits for the build (seconds) instead of stopping the thread
            # inside ITK's C++ code, which aborts the process ("FATAL: exception not rethrown", exit status 134)
            self._builder = threading.Thread(target=self._build_in_background, name="atlas-build", daemon=False)
            self._builder.start()

    def _build_in_background(self) -> None:
        try:
            while True:
                with self._state:
                    asked = self._asked
                try:
                    sources, key = self._wanted()
                except OSError as e:
                    sources, key = [], ""
                    log.warning("prior: could not list the atlas's label maps: %s", e)
                with self._state:
                    if not sources or key == self._key or self._gave_up(key):
                        if asked == self._asked:  # nobody asked since this look: done
                            self._builder = None
                            self._state.notify_all()
                            return
                        continue
                    before = len(self._atlas.sources) if self._atlas is not None else 0
                meanwhile = f" (the previous one, of {before}, answers meanwhile)" if before else ""
                log.info("prior: building the atlas of %d label maps in the background%s", len(sources), meanwhile)
                try:
                    with self._build_lock:
                        atlas = self._load_or_build(key, sources)
                except Exception as e:  # noqa: BLE001 - a failed rebuild keeps the previous atlas serving
                    reason = getattr(e, "detail", None) or str(e)
                    log.exception("prior: building the atlas failed (%s); the previous one goes on answering", reason)
                    with self._state:
                        self._failed[key] = (reason, time.monotonic())
                        self._state.notify_all()
                    continue
                with self._state:
                    self._atlas, self._key = atlas, key
                    self._state.notify_all()
                log.info("prior: atlas %s of %d label maps (%s) answers from now on", atlas.fingerprint,
                         len(atlas.sources), ", ".join(atlas.sources))  # fmt: skip
        except BaseException:
            with self._state:
                self._builder = None
                self._state.notify_all()
            raise

    def _load_or_build(self, key: str, sources: Sources) -> Atlas:
        """The atlas of ``sources``: from the cache folder when this set was built before (here, or by another server
        of the team: the file lock lets one of them build it), else built and saved there."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cached = self.cache_dir / f"atlas-{key}.npz"
        with FileLock(str(self.cache_dir / "build.lock")):
            if cached.is_file():
                try:
                    atlas = Atlas.load(cached)
                    log.info("prior: atlas %s of %d label maps loaded from %s", atlas.fingerprint, len(atlas.sources),
                             cached.name)  # fmt: skip
                    return atlas
                except (OSError, ValueError, KeyError) as e:
                    log.warning("prior: cached atlas %s unreadable (%s); rebuilding", cached, e)
            started = time.monotonic()
            maps, unreadable = [], {}
            for name, path in sources:
                try:
                    maps.append((name, read_label(path)))
                except Exception as e:  # one bad file must not stop the prior: skip it and say so
                    unreadable[name] = f"unreadable: {getattr(e, 'detail', e)}"
                    log.warning("prior: label map %s skipped: %s", path, getattr(e, "detail", e))
            try:
                atlas = build_atlas(maps, self.config.prior.spacing_mm, self.config.prior.smoothing_mm)
            except ValueError as e:
                raise Conflict(f"the atlas prior cannot be built: {e}") from e
            atlas.skipped = {**unreadable, **atlas.skipped}
            atlas.save(cached)
            log.info("prior: atlas %s built in %.1f s", atlas.fingerprint, time.monotonic() - started)
            self._prune(keep=cached)
            return atlas

    def _prune(self, keep: Path) -> None:
        """Delete all but the newest :data:`KEEP_CACHED` atlas files (one per set of sources ever built)."""
        dated = []
        for path in self.cache_dir.glob("atlas-*.npz"):
            try:
                dated.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # pruned by another server meanwhile
                continue
        for _, old in sorted(dated, reverse=True)[KEEP_CACHED:]:
            if old != keep:
                old.unlink(missing_ok=True)


def _threshold(value: Any) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0 < threshold <= 1:
        raise Unprocessable(f"threshold must be a number in (0, 1], got {str(value)[:40]!r}")
    return threshold


class PriorInferTask(InferTask):
    """Pre-label with the probabilistic atlas; the app falls back to it while a network has no trained version."""

    def __init__(self, config: AppConfig, atlas: AtlasCache):
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=label_table(),
            dimension=3,
            description="15 AMOS organs from a probabilistic atlas (no training needed; coarse)",
            config={"modality": "auto", "threshold": config.prior.threshold},
        )
        self.app_config = config
        self.atlas = atlas

    def is_valid(self) -> bool:
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info.update({"network": "atlas prior", "trained": True})
        return info

    def __call__(self, request: Dict[str, Any], callbacks=None) -> Tuple[str, Dict[str, Any]]:
        data = LoadVolumed(self.app_config.storage.max_image_voxels)(dict(request))
        data = ResolveModalityd()(data)
        threshold = _threshold(request.get("threshold", self.app_config.prior.threshold))
        atlas, pending = self.atlas.current()
        label, record = label_with_prior(atlas, data["image"], data["modality"], PriorSettings(threshold=threshold))
        if pending:  # final labels the atlas did not include yet: it was being rebuilt with them
            record["atlas_pending"] = pending
        path = write_prelabel(label, request.get("result_extension"))
        result = {
            "model": PRIOR_MODEL,
            "model_version": atlas.fingerprint,
            "requested_model": request.get("requested_model", PRIOR_MODEL),
            "source": "atlas prior",
            "prior": record,
            "config_fingerprint": self.app_config.fingerprint(),
            "input_sha256": sha256_of(data.get("image_path")),
            "preprocessing": preprocessing_summary(data),
            "organs_found": labels_present(label),
        }
        if result["requested_model"] != PRIOR_MODEL:
            result["fallback"] = f"model {result['requested_model']!r} has no trained version yet"
        return path, result
