"""AMOS Label: the MONAI Label app. It only wires configuration, datastore, infer and train tasks together."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

# MONAI Label loads this file by path and puts only app/ on sys.path; the project packages sit one level up.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

from amoslabel.cases import WORKSPACE_DIR, check_id  # noqa: E402
from amoslabel.config import AppConfig, load_config  # noqa: E402
from amoslabel.datastore import AmosDatastore  # noqa: E402
from amoslabel.dicomweb_store import PRELABEL_PREFIX, AmosDicomWebDatastore, cache_root, seg_for_infer  # noqa: E402
from amoslabel.errors import NotFound  # noqa: E402
from amoslabel.organs import label_table  # noqa: E402
from amoslabel.server_routes import install_route_overrides  # noqa: E402
from models.infer_task import SegmentationInferTask  # noqa: E402
from models.prior_task import PRIOR_MODEL, AtlasCache, PriorInferTask  # noqa: E402
from models.promotion import due_for_training  # noqa: E402
from review.api import create_review_api  # noqa: E402
from review.service import ReviewQueueStrategy, ReviewService  # noqa: E402
from models.train_task import SegmentationTrainTask  # noqa: E402
from models.versions import ModelStore  # noqa: E402
from strategies.baselines import ForegroundRandom  # noqa: E402
from strategies.selection import score_strategies  # noqa: E402
from strategies.service import ATTENTION_TAG, ActiveLearningService  # noqa: E402


logger = logging.getLogger(__name__)


class AmosLabelApp(MONAILabelApp):
    """Pre-labels abdominal CT and MRI with the 15 AMOS organs and trains the models on final labels."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.config: AppConfig = load_config(conf.get("config"), conf)
        # a DICOMweb server's series are mirrored into a local working folder, which then plays the studies folder
        self.local_root = cache_root(studies, settings.MONAI_LABEL_DICOMWEB_CACHE_PATH) if _is_url(studies) else None
        self.models_dir = self._models_dir(app_dir, studies)
        review_root = str(self.local_root or studies)
        self.review = ReviewService(self.config, review_root, self._publish_final)
        self.review.on_flagged = self._flag_working_label
        self.review.locate_image = self._image_file
        self.review.locate_attention = self._attention_file
        self.review.modality_of = self._modality_of
        logger.info(
            f"AMOS Label: preset {self.config.preset!r}, models {self.config.models}, "
            f"model versions in {self.models_dir}"
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=self.config.name,
            description="Semi-automatic annotation of 15 abdominal organs in CT and MRI (AMOS)",
            version="1.0",
            labels=label_table(),
        )

    def _models_dir(self, app_dir: str, studies: str) -> Path:
        if self.config.storage.models_dir:
            path = Path(self.config.storage.models_dir)
        elif self.local_root is not None:
            path = self.local_root / WORKSPACE_DIR / "models"
        else:
            path = Path(studies) / WORKSPACE_DIR / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def init_datastore(self) -> Datastore:
        options = dict(
            max_voxels=self.config.storage.max_image_voxels,
            max_upload_bytes=self.config.storage.max_upload_mb * 2**20,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            index_delay_s=10.0,
        )
        if self.local_root is not None:
            store = AmosDicomWebDatastore(self.studies, self.local_root, **options)
            _dicom_seg_output_with_organ_codes()
            self.review.ohif_viewer = os.environ.get("AMOSLABEL_OHIF_URL")  # set by the run command's OHIF
            self.review.study_of = lambda case_id: store.records.get(case_id).get("study_uid")
        else:
            store = AmosDatastore(self.studies, **options)
        store.label_saver = self.review.save_from_viewer
        store.image_added = self._image_added
        return store

    def init_infers(self):
        infers = {name: SegmentationInferTask(name, self.config, self._store(name)) for name in self.config.models}
        self.atlas = AtlasCache(
            self.config, lambda: getattr(self, "_datastore", None), self.models_dir.parent / "prior"
        )
        infers[PRIOR_MODEL] = PriorInferTask(self.config, self.atlas)
        return infers

    def init_trainers(self):
        return {
            name: SegmentationTrainTask(
                name, self.config, self._store(name), self.studies, self.review.workflow.final_labels
            )
            for name in self.config.models
        }

    def init_strategies(self):
        return {
            ReviewQueueStrategy.NAME: ReviewQueueStrategy(self.review),
            "random": Random(),
            "first": First(),
            "foreground_random": ForegroundRandom(),
            **score_strategies(self.review.store),
        }

    def _store(self, name: str) -> ModelStore:
        return ModelStore(self.models_dir, name)

    def infer(self, request: Dict[str, Any], datastore=None):
        """Check the image reference before MONAI Label turns it into a path, and attach the case record."""
        request = dict(request)
        image = request.get("image")
        if isinstance(image, str) and not _is_uploaded_file(image):
            check_id(image)
            store = datastore or self.datastore()
            if not store.get_image_uri(image):
                raise NotFound(f"image {image!r} is not in the datastore")
            request["case_id"] = image
            if isinstance(store, AmosDatastore):
                request["case_record"] = store.case_record(image)
        model = request.get("model")
        if model and model not in self._infers:
            raise NotFound(f"no model {model!r}; models: {sorted(self._infers)}")
        task = self._infers.get(model)
        pinned = str(request.get("model_version") or "latest").strip().lower() != "latest"
        if isinstance(task, SegmentationInferTask) and not pinned and task.store.champion() is None:
            # Before the first training the prior pre-labels, and the result says so (requested_model, fallback).
            logger.info(f"model {model!r} has no trained version: pre-labelling with the atlas prior")
            request["requested_model"], request["model"] = model, PRIOR_MODEL
        result = super().infer(request, datastore)
        case_id = request.get("case_id")
        if case_id and request.get("client_id"):  # a viewer (Slicer, OHIF) opened the scan to pre-label it
            self.review.workflow.record_opened(str(request["client_id"]), case_id, f"viewer /infer/{model}")
        if case_id and result.get("file") and self.review.workflow.register_case(case_id) == "new":
            # the first pre-label of a case starts its workflow (Slicer's auto-segmentation, or the server's own)
            params = result.get("params") or {}
            tag = params.get("model_tag") or f"{params.get('model')}:v{params.get('model_version')}"
            self.review.workflow.record_prelabel(case_id, result["file"], tag, {"params": params})
            store = self.datastore()
            if isinstance(store, AmosDicomWebDatastore):  # OHIF shows the pre-label from the DICOMweb server
                try:
                    store.send_seg(case_id, result["file"], f"{PRELABEL_PREFIX} {tag}", automatic=True)
                except Exception:  # the viewer still gets its pre-label; only OHIF's copy is missing
                    logger.exception(f"{case_id}: the pre-label could not be stored as DICOM SEG")
        return result

    def bundle_path(self, model):
        # MONAI Label's /train/{model} queues a training subprocess without checking the name; this lookup is the one
        # call it makes in the server process first, so an unknown model is refused here, with a 404, before queuing.
        if isinstance(model, str) and model and model not in self._trainers and model not in self._infers:
            raise NotFound(f"no model {model!r}; models: {sorted(self._trainers)}")
        return super().bundle_path(model)

    def _publish_final(self, case_id: str, label_path: Path, info: Dict[str, Any]) -> None:
        store = self.datastore()
        if isinstance(store, AmosDatastore) and store.has_image(case_id):
            store.publish_label(case_id, str(label_path), "final", info)
        self._retrain_if_due()

    def _retrain_if_due(self) -> None:
        """Start training a model (queued behind any running one) once enough new consensus finals arrived."""
        every = self.config.retraining.after_new_finals
        if every <= 0 or "monailabel.app" not in sys.modules:
            return
        finals = [f["case_id"] for f in self.review.workflow.final_labels()]
        for name, task in self._infers.items():
            if not isinstance(task, SegmentationInferTask):
                continue
            champion = task.store.champion()
            trained_on = champion.meta.get("training_cases", []) if champion else []
            if due_for_training(finals, trained_on, every):
                logger.info(f"{name}: {every}+ new final labels since version {champion.number if champion else '-'}")
                self.async_training(name, enqueue=True)

    def _image_added(self, case_id: str) -> None:
        """A new scan is a new case at once: routable, and scored by the background worker without waiting."""
        self.review.workflow.register_case(case_id)
        worker = getattr(getattr(self, "active_learning", None), "worker", None)
        if worker is not None:
            worker.wake()

    def _flag_working_label(self, case_id: str, meta: Dict[str, Any]) -> None:
        store = self.datastore()
        if isinstance(store, AmosDatastore) and store.get_label_uri(case_id, store.working_tag):
            store.update_label_info(case_id, store.working_tag, {"segmentationMeta": meta})

    # -- what the review pages read from the datastore -------------------------------------------------------------
    def _image_file(self, case_id: str) -> Optional[str]:
        store = self.datastore()
        uri = store.get_image_uri(case_id) if isinstance(store, AmosDatastore) and store.has_image(case_id) else None
        return uri if uri and Path(uri).is_file() else None

    def _attention_file(self, case_id: str) -> Optional[str]:
        store = self.datastore()
        if not isinstance(store, AmosDatastore) or not store.has_image(case_id):
            return None
        uri = store.get_label_uri(case_id, ATTENTION_TAG)
        return uri if uri and Path(uri).is_file() else None

    def _modality_of(self, case_id: str) -> str:
        store = self.datastore()
        modality = store.records.modality(case_id) if isinstance(store, AmosDatastore) else None
        return "MR" if modality == "mri" else "CT"

    def _sync_cases(self) -> None:
        """Every datastore image is a case; a label imported as final with its scan makes the case final."""
        store = self.datastore()
        if not isinstance(store, AmosDatastore):
            return
        workflow = self.review.workflow
        for image_id in workflow.register_cases(store.list_images()):
            final = store.get_label_uri(image_id, "final") if store.has_image(image_id) else None
            if final and Path(final).is_file():
                workflow.import_final(image_id, final, "the datastore's final label at start-up")
        recovered = workflow.recover()
        if recovered:
            logger.info(f"review: finalised {recovered} case(s) left in consensus by a previous run")

    def _mount_review_api(self) -> None:
        import monailabel.app as server  # the FastAPI app this process serves (absent in training subprocesses)
        from a2wsgi import WSGIMiddleware

        server.app.router.routes[:] = [r for r in server.app.router.routes if getattr(r, "path", "") != "/review"]
        server.app.mount("/review", WSGIMiddleware(create_review_api(self.review), workers=16))
        install_route_overrides(server.app, ReviewQueueStrategy.NAME, _review_sample)
        logger.info("review API mounted at /review/api (OpenAPI: /review/api/openapi.json)")

    def _start_scoring(self) -> None:
        networks = {k: v for k, v in self._infers.items() if isinstance(v, SegmentationInferTask)}
        self.active_learning = ActiveLearningService(
            self.config, self.review, lambda: networks, self.atlas, self.datastore
        )
        self.active_learning.worker.start()
        logger.info(f"active learning: scoring in the background every {self.config.active_learning.interval_s} s")

    def on_init_complete(self):
        super().on_init_complete()
        self._sync_cases()
        if "monailabel.app" in sys.modules:
            self._mount_review_api()
            if self.config.active_learning.enabled:
                self._start_scoring()
        trained = {
            k: (v.store.champion().number if v.store.champion() else None)
            for k, v in self._infers.items()
            if isinstance(v, SegmentationInferTask)
        }
        logger.info(f"AMOS Label ready: {len(self.datastore().list_images())} image(s); newest versions {trained}")
        for name, number in trained.items():
            if number is None:
                logger.warning(
                    f"Model {name!r} has no trained version: the atlas prior pre-labels in its place until it is "
                    f"trained (POST /train/{name})."
                )


def _review_sample(params: dict) -> dict:
    """Next Sample from the review queue, answered as MONAI Label's ``sample`` answers (id, path, image info).

    It skips what ``sample`` adds for its own strategies: the whole app ``info()`` (for strategy settings this one
    has none of) and a note of the strategy in the image's info (the claim is in the case's audit log). Both cost
    more than finding and claiming the case.
    """
    from monailabel.interfaces.utils.app import app_instance

    instance = app_instance()
    result = instance.next_sample({**params, "strategy": ReviewQueueStrategy.NAME})
    if not result:
        return {}
    return {**instance.datastore().get_image_info(result["id"]), **result}


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


def _is_url(studies: str) -> bool:
    return studies.startswith(("http://", "https://"))


def _dicom_seg_output_with_organ_codes() -> None:
    """``/infer?output=dicom_seg`` through our coded writer.

    MONAI Label's endpoint converts the result with ``nifti_to_dicom_seg``, which codes every segment as spleen,
    and only for its own DICOMweb datastore class; it looks both names up in its module at each call, so replacing
    them there is enough.
    """
    import monailabel.endpoints.infer as infer_endpoint

    infer_endpoint.nifti_to_dicom_seg = seg_for_infer
    infer_endpoint.DICOMWebDatastore = (infer_endpoint.DICOMWebDatastore, AmosDicomWebDatastore)  # isinstance takes it
