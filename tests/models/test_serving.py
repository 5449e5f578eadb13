"""Which model answers a pre-label request, and the per-model setup the app delegates to (no server)."""

from __future__ import annotations

import pytest
import torch

from amoslabel.config import load_config
from amoslabel.errors import NotFound
from models.infer_task import SegmentationInferTask
from models.prior_task import PRIOR_MODEL, AtlasCache, PriorInferTask
from models.click_scribbles import ScribbleInferTask
from models.click_task import ClickInferTask
from models.click_train import ClickTrainTask
from models.serving import ServedModels, check_model_name, route_request
from models.train_task import SegmentationTrainTask


@pytest.fixture()
def served(tmp_path):
    config = load_config(overrides={"preset": "cpu-fast", "models": "unet,vnet"})
    atlas = AtlasCache(config, lambda: None, tmp_path / "prior")
    return ServedModels(config, tmp_path / "models", atlas)


def test_each_model_sets_up_its_own_tasks_on_its_own_store(served, tmp_path):
    infers = served.infers()
    assert sorted(infers) == ["deepedit", "deepedit_scribbles", "prior", "unet", "vnet"]
    assert isinstance(infers["unet"], SegmentationInferTask) and isinstance(infers[PRIOR_MODEL], PriorInferTask)
    assert infers["vnet"].store.root == tmp_path / "models" / "vnet"
    trainers = served.trainers(str(tmp_path), lambda: [])
    assert sorted(trainers) == ["deepedit", "unet", "vnet"] and isinstance(trainers["unet"], SegmentationTrainTask)
    assert trainers["unet"].store.root == infers["unet"].store.root
    # the click model: its own store, the base segmentor's architecture and store to start from
    assert isinstance(infers["deepedit"], ClickInferTask) and isinstance(trainers["deepedit"], ClickTrainTask)
    assert infers["deepedit"].store.root == trainers["deepedit"].store.root == tmp_path / "models" / "deepedit"
    assert infers["deepedit"].base_store.root == infers["unet"].store.root
    # Slicer's scribbles on the click model's own task: one network in memory for both
    assert (
        isinstance(infers["deepedit_scribbles"], ScribbleInferTask)
        and infers["deepedit_scribbles"].clicks is infers["deepedit"]
    )
    assert served.click_models() == ["deepedit", "deepedit_scribbles"]
    assert served.serving_versions() == {"unet": None, "vnet": None, "deepedit": None}


def test_an_untrained_network_hands_its_request_to_the_prior_unless_a_version_is_pinned(served):
    infers = served.infers()
    routed = route_request({"model": "unet", "image": "a"}, infers)
    assert routed["model"] == PRIOR_MODEL and routed["requested_model"] == "unet"
    pinned = {"model": "unet", "image": "a", "model_version": 2}
    assert route_request(pinned, infers) == pinned  # the infer task answers it: 404/409, never the prior
    assert route_request({"model": "prior"}, infers) == {"model": "prior"}

    served.networks["unet"].store.publish({"w": torch.zeros(1)}, {})
    assert route_request({"model": "unet", "image": "a"}, infers)["model"] == "unet"
    assert served.serving_versions()["unet"] == 1


def test_the_fallback_follows_the_scans_modality(served, shared):
    """``fallback_model: {ct: ..., mri: ...}``: each scan gets its modality's pre-labeler; a modality left out (or a
    name that is not served) gets the atlas prior."""
    infers = {**served.infers(), "ts_ct": object(), "ts_mr": object()}  # two imported models, by name
    config = load_config(overrides={"preset": "cpu-fast", "fallback_model": "ct=ts_ct,mri=ts_mr"})
    assert config.fallback_model == {"ct": "ts_ct", "mri": "ts_mr"} and config.fallback_for("ct") == "ts_ct"
    mr_case = {"model": "unet", "image": "case", "case_id": "case", "case_record": {"modality": "mri"}}
    assert route_request(mr_case, infers, config.fallback_for)["model"] == "ts_mr"
    assert route_request({**mr_case, "modality": "ct"}, infers, config.fallback_for)["model"] == "ts_ct"
    upload = {"model": "unet", "image": str(shared / "mr" / "ts_abdomen_mr_small.nii.gz")}  # its name says MR
    assert route_request(upload, infers, config.fallback_for)["model"] == "ts_mr"
    only_ct = load_config(overrides={"preset": "cpu-fast", "fallback_model": "ct=ts_ct"})
    assert route_request(mr_case, infers, only_ct.fallback_for)["model"] == PRIOR_MODEL
    assert load_config(overrides={"fallback_model": "ts_ct"}).fallback_for("mri") == "ts_ct"  # one name: every scan


def test_unknown_model_names_are_404(served):
    infers = served.infers()
    trainers = served.trainers("studies", lambda: [])
    with pytest.raises(NotFound, match="no model 'segresnet'"):
        route_request({"model": "segresnet"}, infers)
    with pytest.raises(NotFound, match="no model"):
        check_model_name("../unet", trainers, infers)
    check_model_name("unet", trainers, infers)
    check_model_name("prior", trainers, infers)  # served, not trainable: MONAI Label answers that itself
