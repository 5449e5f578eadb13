"""The two cohort jobs: what each plans, the stages its cases stream through, and how the driver stores a result.

A job is the only place that knows its kind of work; :mod:`cohort.runner` runs any job the same way (a registry,
:data:`JOBS`, not an if-chain).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional, Sequence

from amoslabel.errors import InputError
from amoslabel.volume import read_header
from amoslabel.workspace import Workspace
from cohort.plan import PRELABEL_STATES, CohortPlan, plan_cases, prelabelled_by, scored_with, states
from cohort.spec import CohortSpec, network_task
from cohort.stages import (
    CpuStage,
    EncodeStage,
    NetworkWorker,
    PreprocessStage,
    ReadStage,
    RestoreStage,
    ScoreNetworkWorker,
    ScorePrepareStage,
    ScoreStage,
    heat_image,
)
from review.states import CLOSED
from review.service import ReviewService

log = logging.getLogger(__name__)


def readable_scan(case_id: str, path: Optional[str]) -> str:
    """The case's scan file, once its header reads. A missing or corrupt file fails here, as the run is planned,
    and never reaches the cluster: a re-run whose only cases left are corrupt joins no cluster and starts no worker."""
    if not path:
        raise InputError(f"{case_id}: the scan's file is missing")
    if os.path.isfile(path):  # a series folder is read whole by the read stage
        try:
            read_header(path)
        except RuntimeError as error:
            reason = " ".join(str(error).split("sitk::ERROR:")[-1].split())[:200]  # SimpleITK's own words
            raise InputError(f"{case_id}: the scan does not read ({reason})") from error
    return path


@dataclass(frozen=True)
class Resources:
    """What each stage asks of the Ray cluster.

    Attributes:
        workers: model actors in the pool (one per GPU on a GPU cluster).
        gpus_per_worker: GPUs each model actor holds (0 on CPU).
        cpus_per_worker: CPUs each model actor holds (its torch threads on a CPU).
        cpu_stage_workers: the most workers of each CPU stage pool (read + preprocess; restore or score); Ray Data
            grows a pool from one as cases queue up in front of it.
        cpus_per_cpu_stage: what each CPU stage worker asks of Ray's CPU bookkeeping (they wait on files and on the
            model actors much of the time).
    """

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    cpu_stage_workers: int = 2
    cpus_per_cpu_stage: float = 0.25

    def actor_pool(self) -> Dict[str, Any]:
        """The model actors: a fixed pool, one case per call."""
        import ray.data

        return {
            "compute": ray.data.ActorPoolStrategy(size=self.workers),
            "batch_size": 1,
            "num_cpus": self.cpus_per_worker,
            "num_gpus": self.gpus_per_worker,
        }

    def cpu_pool(self) -> Dict[str, Any]:
        """A CPU stage's workers: from one up to :attr:`cpu_stage_workers`, as the queue in front of them asks."""
        import ray.data

        return {
            "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, self.cpu_stage_workers)),
            "num_cpus": self.cpus_per_cpu_stage,
        }


class PrelabelJob:
    """Pre-label every case still before its junior with one model version; skip those it pre-labelled already."""

    kind = "prelabel"

    def __init__(self, review: ReviewService, datastore: Any, spec: CohortSpec):
        self.review, self.datastore, self.spec = review, datastore, spec
        self.task = network_task(spec)
        self.tag = self.task.store.get(spec.version).tag

    @property
    def title(self) -> str:
        return f"pre-label with {self.tag}"

    def plan(self, wanted: Optional[Sequence[str]], limit: Optional[int]) -> CohortPlan:
        store = self.review.store
        done = prelabelled_by(store, self.tag)
        return plan_cases(states(store), done, PRELABEL_STATES, f"pre-labelled by {self.tag} already", wanted, limit)

    def first_payload(self, case_id: str) -> Dict[str, Any]:
        """What the server's ``/infer`` request carries once MONAI Label resolved the image (see
        :meth:`amoslabel.data.datastore.AmosDatastore.infer_request`)."""
        path = readable_scan(case_id, self.datastore.image_file(case_id))
        config = self.spec.config()
        return {
            "image": path,
            "image_path": path,
            "case_id": case_id,
            "case_record": self.datastore.case_record(case_id),
            "model_version": self.spec.version,
            "modality": "auto",
            "tta": config.active.inference.tta_flip,
        }

    def pipeline(self, ds, resources: Resources):
        prepare = (("read", ReadStage(self.spec)), ("preprocess", PreprocessStage(self.spec)))
        ds = ds.map(CpuStage, fn_constructor_args=prepare, **resources.cpu_pool())
        ds = ds.map_batches(NetworkWorker, fn_constructor_args=(self.spec,), **resources.actor_pool())
        finish = (("restore", RestoreStage(self.spec)), ("encode", EncodeStage(self.spec)))
        return ds.map(CpuStage, fn_constructor_args=finish, **resources.cpu_pool())

    def store(self, case_id: str, data: Dict[str, Any]) -> str:
        """Store the label file the infer task's writer made (on a worker) as a pre-label version, unless this model
        version pre-labelled the case meanwhile (a retried case is written once). Returns what happened."""
        if prelabelled_by(self.review.store, self.tag, case_id):
            return "skipped"
        result = data["result"]
        result["latencies"] = {stage: round(s, 2) for stage, s in data.get("timings", {}).items()}
        result["cohort"] = True
        fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="cohort-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data["label_file"])
            self.review.store_prelabel(case_id, path, result)
        finally:
            os.unlink(path)
        return "done"


class ScoreJob:
    """Score every open case with the scoring networks' current versions and the atlas prior, as the server's
    background scorer does; skip cases scored with those versions already."""

    kind = "score"

    def __init__(self, review: ReviewService, datastore: Any, spec: CohortSpec, models: Sequence[str]):
        from models.prior_task import AtlasCache
        from strategies.scoring import learn_anatomy
        from strategies.service import ActiveLearningService

        self.review, self.datastore, self.spec = review, datastore, spec
        config = spec.config()
        self.members: Dict[str, CohortSpec] = {}
        for name in models:
            champion = network_task(replace(spec, model=name)).store.champion()
            if champion is None:
                raise InputError(f"model {name!r} has no trained version: nothing to score with")
            self.members[name] = replace(spec, model=name, version=champion.number)
        atlas_cache = AtlasCache(
            config, lambda: datastore, Workspace(spec.studies).prior_cache(config.storage.models_dir)
        )
        try:
            self.atlas = atlas_cache.get()
        except InputError as error:  # as the server: score with the networks alone
            log.info("cohort: no atlas prior (%s)", error.message)
            self.atlas = None
        self.anatomy = learn_anatomy([f["label"] for f in review.workflow.final_labels()])
        self.service = ActiveLearningService(config, review, dict, atlas_cache, lambda: datastore)

    @property
    def title(self) -> str:
        return "score with " + ", ".join(f"{m}:v{s.version}" for m, s in self.members.items())

    def plan(self, wanted: Optional[Sequence[str]], limit: Optional[int]) -> CohortPlan:
        store = self.review.store
        table = states(store)
        done = scored_with(store, {m: s.version for m, s in self.members.items()})
        open_states = sorted({s for s in table.values() if s not in CLOSED})
        return plan_cases(table, done, open_states, "scored with these versions already", wanted, limit)

    def first_payload(self, case_id: str) -> Dict[str, Any]:
        path = readable_scan(case_id, self.datastore.image_file(case_id))
        modality = self.review.modality_of(case_id)
        return {"image_path": path, "case_id": case_id, "modality": modality, "modality_short": short(modality)}

    def pipeline(self, ds, resources: Resources):
        prepare = (("read+preprocess", ScorePrepareStage(self.members)),)
        ds = ds.map(CpuStage, fn_constructor_args=prepare, **resources.cpu_pool())
        ds = ds.map_batches(ScoreNetworkWorker, fn_constructor_args=(self.spec,), **resources.actor_pool())
        score = (("score", ScoreStage(self.spec, self.atlas, self.anatomy)),)
        return ds.map(CpuStage, fn_constructor_args=score, **resources.cpu_pool())

    def store(self, case_id: str, data: Dict[str, Any]) -> str:
        from strategies.scoring import store_score

        from review.queries import prelabels

        self.service.save_attention(case_id, heat_image(data))
        row = data["score"]
        prelabel = prelabels(self.review.store, case_id).get(case_id)
        if prelabel:  # the case's pre-label when scored (the server rescores a case whose pre-label is newer)
            row = {**row, "members": {**row["members"], "prelabel": prelabel[0]}}
        store_score(self.review.store, case_id, row)
        return "done"

    def finish(self) -> None:
        """The queue's order follows the new scores, as after the server's scoring pass."""
        from strategies.queue_order import apply_priorities

        apply_priorities(self.review.workflow, self.spec.config().active_learning, self.service.organ_cases())


def short(modality_code: str) -> str:
    return "ct" if modality_code == "CT" else "mri"


JOBS: Dict[str, Callable[..., Any]] = {"prelabel": PrelabelJob, "score": ScoreJob}
