"""AMOS Label: the MONAI Label app. It only wires configuration, datastore, infer and train tasks together."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

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
from amoslabel.errors import NotFound  # noqa: E402
from amoslabel.organs import label_table  # noqa: E402
from models.infer_task import SegmentationInferTask  # noqa: E402
from models.prior_task import PRIOR_MODEL, AtlasCache, PriorInferTask  # noqa: E402
from models.train_task import SegmentationTrainTask  # noqa: E402
from models.versions import ModelStore  # noqa: E402

logger = logging.getLogger(__name__)


class AmosLabelApp(MONAILabelApp):
    """Pre-labels abdominal CT and MRI with the 15 AMOS organs and trains the models on final labels."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.config: AppConfig = load_config(conf.get("config"), conf)
        self.models_dir = self._models_dir(app_dir, studies)
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
        elif studies.startswith(("http://", "https://")):
            path = Path(app_dir) / "model"
        else:
            path = Path(studies) / WORKSPACE_DIR / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return AmosDatastore(
            self.studies,
            max_voxels=self.config.storage.max_image_voxels,
            max_upload_bytes=self.config.storage.max_upload_mb * 2**20,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        infers = {name: SegmentationInferTask(name, self.config, self._store(name)) for name in self.config.models}
        atlas = AtlasCache(self.config, lambda: getattr(self, "_datastore", None), self.models_dir.parent / "prior")
        infers[PRIOR_MODEL] = PriorInferTask(self.config, atlas)
        return infers

    def init_trainers(self):
        return {
            name: SegmentationTrainTask(name, self.config, self._store(name), self.studies)
            for name in self.config.models
        }

    def init_strategies(self):
        return {"random": Random(), "first": First()}

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
        if isinstance(task, SegmentationInferTask) and not pinned and task.store.latest() is None:
            # Before the first training the prior pre-labels, and the result says so (requested_model, fallback).
            logger.info(f"model {model!r} has no trained version: pre-labelling with the atlas prior")
            request["requested_model"], request["model"] = model, PRIOR_MODEL
        return super().infer(request, datastore)

    def bundle_path(self, model):
        # MONAI Label's /train/{model} queues a training subprocess without checking the name; this lookup is the one
        # call it makes in the server process first, so an unknown model is refused here, with a 404, before queuing.
        if isinstance(model, str) and model and model not in self._trainers and model not in self._infers:
            raise NotFound(f"no model {model!r}; models: {sorted(self._trainers)}")
        return super().bundle_path(model)

    def on_init_complete(self):
        super().on_init_complete()
        trained = {
            k: (v.store.latest().number if v.store.latest() else None)
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


def _is_uploaded_file(path: str) -> bool:
    """True for the temporary file MONAI Label's /infer endpoint writes when a client uploads the scan itself."""
    real = os.path.realpath(path)
    return (
        os.path.isfile(real)
        and os.path.dirname(real) == os.path.realpath(tempfile.gettempdir())
        and os.path.basename(real).startswith("tmp")
    )
