"""Active learning wired to the app: scoring members from the served models, attention maps into the datastore,
and the background worker that keeps every open case scored."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import SimpleITK as sitk

from amoslabel.config import AppConfig
from amoslabel.data.tags import ATTENTION_TAG
from amoslabel.errors import InputError
from amoslabel.volume import Geometry, read_header, write_image
from models.infer_task import SegmentationInferTask
from models.prior_task import AtlasCache
from review.service import ReviewService
from strategies.anatomy import AnatomyPrior
from strategies.members import case_members, grid_image
from strategies.quality_history import QualitySource, retrain
from strategies.queue_order import apply_priorities
from strategies.scoring import CaseScorer, ScoringWorker, learn_anatomy

log = logging.getLogger(__name__)


class ActiveLearningService:
    """Builds the scorer and its background worker from the app's models, atlas and datastore."""

    def __init__(
        self,
        config: AppConfig,
        review: ReviewService,
        networks: Callable[[], Dict[str, SegmentationInferTask]],
        atlas: AtlasCache,
        datastore: Callable[[], object],
        models_dir: Optional[Path] = None,
    ):
        self.config, self.review, self.networks, self.atlas, self.datastore = config, review, networks, atlas, datastore
        self._anatomy: Tuple[tuple, Optional[AnatomyPrior]] = ((), None)
        self._lock = threading.Lock()
        self.models_dir = models_dir
        self.quality = QualitySource(models_dir) if models_dir is not None else None
        self._quality_finals: Optional[int] = None
        self.scorer = CaseScorer(
            review.store,
            config.active_learning,
            self.members,
            review.image_file,
            review.modality_of,
            self.save_attention,
            self.anatomy,
            self.quality.current if self.quality else None,
        )
        self.worker = ScoringWorker(
            self.scorer,
            review.workflow,
            config.active_learning,
            self.member_versions,
            review.leadership.is_leader,
            self.prioritise,
        )

    def start(self) -> "ActiveLearningService":
        """Score in the background from now on; a new case wakes the worker at once."""
        self.review.new_case_listeners.append(lambda _case_id: self.worker.wake())
        self.worker.start()
        log.info(f"active learning: scoring in the background every {self.config.active_learning.interval_s} s")
        return self

    def trained(self) -> Dict[str, SegmentationInferTask]:
        return {name: task for name, task in self.networks().items() if task.store.champion() is not None}

    def member_versions(self) -> Dict[str, Optional[int]]:
        """The versions a score was computed with: the trained networks' and the quality estimator's (a new version
        of either makes every open case's score stale)."""
        versions = {name: task.store.champion().number for name, task in self.trained().items()}
        quality = self.quality.version() if self.quality else None
        return versions | ({"quality": quality} if quality is not None else {})

    def prioritise(self) -> int:
        """Retrain the quality estimator when the finals changed, then set the queue's order from the scores."""
        finals = len(self.review.workflow.final_labels())
        if self.quality is not None and finals != self._quality_finals:
            self._quality_finals = finals
            try:
                outcome = retrain(self.review.store, self.models_dir)
                log.info("quality estimator: %s", outcome["why"])
            except Exception:  # the estimator never blocks the queue
                log.exception("quality estimator: retraining failed; the serving version stays")
        problem = self.quality.problem if self.quality is not None else None
        if problem:
            self.review.notices["quality"] = problem
        else:
            self.review.notices.pop("quality", None)
        return apply_priorities(self.review.workflow, self.config.active_learning, self.organ_cases())

    def members(self, scan_path: str, modality: str) -> tuple:
        try:
            atlas = self.atlas.get()
        except InputError as error:  # no label maps for the prior yet: score with the networks alone
            log.info("active learning: no atlas prior (%s)", error.message)
            atlas = None
        short = "ct" if modality == "CT" else "mri"
        return case_members(scan_path, short, self.trained(), atlas, self.config.active_learning.grid_mm)

    def anatomy(self) -> Optional[AnatomyPrior]:
        """The anatomical prior of the current final labels, relearned when they change."""
        finals = self.review.workflow.final_labels()
        key = tuple((f["case_id"], f["version"]) for f in finals)
        with self._lock:
            if key != self._anatomy[0]:
                self._anatomy = (key, learn_anatomy([f["label"] for f in finals]))
            return self._anatomy[1]

    def organ_cases(self) -> Dict[int, int]:
        """Per organ id, how many final labels have it (from the cached anatomical prior)."""
        anatomy = self.anatomy()
        return {organ: prior.cases for organ, prior in anatomy.organs.items()} if anatomy else {}

    def save_attention(self, case_id: str, heat: sitk.Image) -> None:
        """The heat map, on the scan's own grid, as the case's label tagged ``attention``."""
        store = self.datastore()
        path = self.review.image_file(case_id)
        if store is None or not path or not hasattr(store, "publish_label"):
            return
        reference = grid_image(Geometry.of(read_header(path)))
        on_scan = sitk.Resample(heat, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        with tempfile.TemporaryDirectory(prefix="attention-") as tmp:
            file = Path(tmp) / "attention.nii.gz"
            write_image(on_scan, file)
            store.publish_label(case_id, str(file), ATTENTION_TAG, {"source": "active learning"})
