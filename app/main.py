"""AMOS Label: the MONAI Label app. It only wires: each decision lives in the package that owns it.

* the datastore (folder or DICOMweb, its checks and label links): ``amoslabel.data``;
* the served models (trained here or imported), their tasks and the fallback: ``models.serving``;
  retraining: ``models.retraining``;
* the review workflow and what it does with saves, pre-labels and finals: ``review.service``;
* Next Sample strategies and background scoring: ``strategies``;
* what changes in MONAI Label's server (review API mount, endpoint overrides): ``amoslabel.server.routes``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict

# MONAI Label loads this file by path and puts only app/ on sys.path; the project packages sit one level up.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402

from amoslabel.config import AppConfig, load_config  # noqa: E402
from amoslabel.data.locations import working_folder  # noqa: E402
from amoslabel.data.stores import open_datastore  # noqa: E402
from amoslabel.organs import label_table  # noqa: E402
from amoslabel.server import identity, routes  # noqa: E402
from amoslabel.server.dicomweb_launch import OHIF_URL_ENV  # noqa: E402
from amoslabel.workspace import Workspace  # noqa: E402
from models.click_request import WHOLE_LABEL_KEY  # noqa: E402
from models.prior_task import AtlasCache  # noqa: E402
from models.retraining import RetrainingTrigger  # noqa: E402
from models.serving import ServedModels, check_model_name, route_request  # noqa: E402
from review.service import ReviewService  # noqa: E402
from strategies.selection import next_sample_strategies  # noqa: E402
from strategies.service import ActiveLearningService  # noqa: E402

logger = logging.getLogger(__name__)


class AmosLabelApp(MONAILabelApp):
    """Pre-labels abdominal CT and MRI with the 15 AMOS organs and trains the models on final labels."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.config: AppConfig = load_config(conf.get("config"), conf)
        if not self.config.auth.enabled and routes.in_server_process():
            identity.check_auth_off(identity.bind_host())  # refuses to start beyond loopback
        self.workspace = Workspace(working_folder(studies, settings.MONAI_LABEL_DICOMWEB_CACHE_PATH))
        models_dir = self.workspace.models(self.config.storage.models_dir)
        models_dir.mkdir(parents=True, exist_ok=True)
        self.review = ReviewService(self.config, str(self.workspace.studies))
        self.atlas = AtlasCache(
            self.config,
            lambda: getattr(self, "_datastore", None),
            self.workspace.prior_cache(self.config.storage.models_dir),
        )
        self.served = ServedModels(self.config, models_dir, self.atlas)
        logger.info(
            f"AMOS Label: preset {self.config.preset!r}, models {self.config.models}, model versions in {models_dir}"
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=self.config.name,
            description="Semi-automatic annotation of 15 abdominal organs in CT and MRI (AMOS)",
            version="1.0",
            # a list in id order, as MONAI Label publishes labels merged from its models: its OHIF panel appends to
            # it (a {name: id} table broke the panel); each model's own labels stay the {name: id} table
            labels=list(label_table()),
        )

    def init_datastore(self) -> Datastore:
        store = open_datastore(
            self.studies,
            self.config.storage,
            settings.MONAI_LABEL_DICOMWEB_CACHE_PATH,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )
        self.review.attach(store, ohif_viewer=os.environ.get(OHIF_URL_ENV))
        return store

    def init_infers(self):
        return self.served.infers(current_label=self.review.current_label_file)

    def init_trainers(self):
        return self.served.trainers(self.studies, self.review.workflow.final_labels)

    def init_strategies(self):
        return next_sample_strategies(self.review, self._organ_cases)

    def infer(self, request: Dict[str, Any], datastore=None):
        """Check the image and the model before MONAI Label runs the request; the review workflow records it."""
        request.pop(WHOLE_LABEL_KEY, None)  # named by an infer task in its answer, never by a request
        request = (datastore or self.datastore()).infer_request(request)
        request = route_request(request, self._infers, self.config.fallback_for)
        if request.get("model") in self.served.click_models():
            request["save_label"] = False  # a click's answer is the user's label version (review.record_inference)
        result = super().infer(request, datastore)
        self.review.record_inference(request, result)
        return result

    def bundle_path(self, model):
        check_model_name(model, self._trainers, self._infers)
        return super().bundle_path(model)

    def on_init_complete(self):
        super().on_init_complete()
        if routes.in_server_process():
            retraining = RetrainingTrigger(
                self.config.retraining.after_new_finals,
                self.served.stores(),
                lambda: [f["case_id"] for f in self.review.workflow.final_labels()],
                lambda name: self.async_training(name, enqueue=True),
            )
            self.review.final_listeners.append(retraining.check)
            self.review.final_listeners.append(self.atlas.final_published)  # the atlas prior rebuilt with new finals...
            self.atlas.watch()  # ...and with those another server of a team published (models/prior_task.py)
        self.review.sync_cases()
        if routes.in_server_process():
            import monailabel.app as server  # the FastAPI app this process serves (absent in training subprocesses)

            routes.install(server.app, self.review, self.datastore(), self.config)
            self.review.start_background()
            if self.config.active_learning.enabled:
                self.active_learning = ActiveLearningService(
                    self.config,
                    self.review,
                    self._network_tasks,
                    self.atlas,
                    self.datastore,
                    self.workspace.models(self.config.storage.models_dir),
                ).start()
        logger.info(
            f"AMOS Label ready: {len(self.datastore().list_images())} image(s); "
            f"newest versions {self.served.serving_versions()}"
        )
        self.served.log_state()

    def _organ_cases(self):
        service = getattr(self, "active_learning", None)
        return service.organ_cases() if service is not None else {}

    def _network_tasks(self):
        return {name: task for name, task in self._infers.items() if name in self.served.scorers()}
