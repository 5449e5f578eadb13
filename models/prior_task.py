"""MONAI Label infer task for the atlas prior, served as model ``prior``.

The atlas is built from the datastore's final labels (the newest ``prior.max_final_labels``) and the label-only maps
named in ``apps.yaml``. It is rebuilt when that set changes and cached on disk by a fingerprint of its sources, so a
restart does not rebuild it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

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


class AtlasCache:
    """The current atlas for a set of label maps: built once per distinct set, kept on disk."""

    def __init__(self, config: AppConfig, datastore: Callable[[], Optional[Datastore]], cache_dir: Path):
        self.config = config
        self.datastore = datastore
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._atlas: Optional[Atlas] = None
        self._key = ""

    def sources(self) -> List[Tuple[str, Path]]:
        """(name, path) of every label map the atlas is built from, in a stable order."""
        found: List[Tuple[str, Path]] = []
        base = Path(self.config.source_dir or ".")
        for path in self.config.prior.label_map_paths(base):
            if path.is_file():
                found.append((path.name.split(".")[0], path))
            else:
                log.warning("prior: label map %s does not exist; skipped", path)
        store = self.datastore()
        if store is not None and self.config.prior.max_final_labels > 0:
            finals = []
            for image_id in store.get_labeled_images(label_tag=DefaultLabelTag.FINAL):
                uri = store.get_label_uri(image_id, DefaultLabelTag.FINAL)
                if uri and Path(uri).is_file():
                    finals.append((Path(uri).stat().st_mtime, image_id, Path(uri)))
            finals.sort(reverse=True)
            found += [(image_id, path) for _, image_id, path in finals[: self.config.prior.max_final_labels]]
        return found

    def _key_of(self, sources: List[Tuple[str, Path]]) -> str:
        digest = hashlib.sha256()
        prior = self.config.prior
        digest.update(f"{prior.spacing_mm}/{prior.smoothing_mm}".encode())
        for name, path in sources:
            stat = path.stat()
            digest.update(f"{name}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def get(self) -> Atlas:
        """The atlas for the current sources (built or loaded if they changed).

        Raises:
            Conflict: there is no label map to build it from.
        """
        with self._lock:
            sources = self.sources()
            if not sources:
                raise Conflict("the atlas prior has no label maps: add final labels or prior.label_maps in apps.yaml")
            key = self._key_of(sources)
            if self._atlas is not None and key == self._key:
                return self._atlas
            cached = self.cache_dir / f"atlas-{key}.npz"
            if cached.is_file():
                try:
                    self._atlas, self._key = Atlas.load(cached), key
                    return self._atlas
                except (OSError, ValueError, KeyError) as e:
                    log.warning("prior: cached atlas %s unreadable (%s); rebuilding", cached, e)
            maps = []
            for name, path in sources:
                try:
                    maps.append((name, read_label(path)))
                except Exception as e:  # one bad file must not stop the prior: skip it and say so
                    log.warning("prior: label map %s skipped: %s", path, getattr(e, "detail", e))
            try:
                atlas = build_atlas(maps, self.config.prior.spacing_mm, self.config.prior.smoothing_mm)
            except ValueError as e:
                raise Conflict(f"the atlas prior cannot be built: {e}") from e
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atlas.save(cached)
            self._atlas, self._key = atlas, key
            return atlas


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
        atlas = self.atlas.get()
        label, record = label_with_prior(atlas, data["image"], data["modality"], PriorSettings(threshold=threshold))
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
