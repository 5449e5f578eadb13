"""Pretrained models brought by a team, made here: a tiny nnU-Net v2 model trained by nnU-Net's own trainer (a few
iterations, CPU) and a tiny MONAI bundle written by the test. Both are imported with the command a team runs, served
by the real server, pre-label the real CT on its exact grid through the client 3D Slicer uses, join the scoring
ensemble, and the bundle is fine-tuned once. Bad imports are refused with their reason, and register nothing.

No weights are downloaded: the formats are the real ones, the weights are this test's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from amoslabel.errors import Conflict, InputError
from models.versions import ModelStore
from tests.app.test_server import train
from tests.conftest import amoslabel_command, NO_SCORER, ROOT, ServerProcess, running

REAL_CT = "ts_abdomen_ct"


def import_command(studies: Path, *args: str) -> subprocess.CompletedProcess:
    return amoslabel_command("models", "import", *args, "--studies", studies)


def write_bundle(folder: Path) -> Path:
    """A MONAI bundle in the model zoo's layout: a 5-class UNet at 6 mm with the usual pre- and postprocessing."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 5,
        "channels": [4, 8],
        "strides": [2],
    }
    config = {
        "bundle_root": ".",
        "image_key": "image",
        "network_def": network,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [6.0, 6.0, 6.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "@image_key",
                    "a_min": -1000,
                    "a_max": 1000,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "@image_key",
                    "nearest_interp": True,
                },
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
            ],
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    channels = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_right", "4": "prostate"}
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": channels}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=5, channels=(4, 8), strides=(2,))
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    with torch.no_grad():  # a bias towards "prostate", so that the untrained bundle surely labels some
        last.bias[4] += 0.3
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    (folder / "map.yaml").write_text(
        "name: tiny_bundle\norgans:\n  liver: liver\n  spleen: spleen\n  right kidney: kidney_right\n"
        "  prostate/uterus: {male: prostate, female: null}\nnotes:\n  prostate/uterus: no uterus class\n"
    )
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny_bundle")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    from amoslabel.data.importer import import_source

    folder = tmp_path_factory.mktemp("studies")
    report = import_source(ROOT / "samples" / "shared-data.yaml", folder, link_images=True, progress=False)
    assert not report.skipped
    return folder


def models_dir(studies: Path) -> Path:
    return studies / ".amoslabel" / "models"


# -- bad imports: a clear reason, nothing registered ----------------------------------------------------------------
def test_bad_imports_are_refused_with_their_reason_and_register_nothing(nnunet_model, bundle, tmp_path, studies):
    from models.pretrained.importer import import_model

    target = tmp_path / "models"
    cases = []
    # a fold that is not there
    cases.append((lambda: import_model("nnunetv2", [nnunet_model], "m1", "amos", target, folds=["0"]), "fold"))
    # a label map naming a class the model does not have
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("organs: {liver: hepar}\n")
    cases.append((lambda: import_model("nnunetv2", [nnunet_model], "m2", wrong, target), "hepar"))
    # a checkpoint that does not load
    broken = tmp_path / "broken" / nnunet_model.name
    shutil.copytree(nnunet_model, broken)
    (broken / "fold_all" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    cases.append((lambda: import_model("nnunetv2", [broken], "m3", "amos", target), "does not load"))
    # a bundle without an inference config
    no_config = tmp_path / "no_config"
    shutil.copytree(bundle, no_config)
    (no_config / "configs" / "inference.json").unlink()
    cases.append(
        (lambda: import_model("monai-bundle", [no_config], "m4", bundle / "map.yaml", target), "no inference config")
    )
    # bundle weights of another network
    other = tmp_path / "other_weights"
    shutil.copytree(bundle, other)
    torch.save({"weight": torch.zeros(3)}, other / "models" / "model.pt")
    cases.append((lambda: import_model("monai-bundle", [other], "m5", bundle / "map.yaml", target), "do not load"))
    # a name that is a path, and the app's own model names
    cases.append((lambda: import_model("nnunetv2", [nnunet_model], "../x", "amos", target), "model name"))
    cases.append(
        (lambda: import_model("nnunetv2", [nnunet_model], "unet", "amos", target, reserved=["unet"]), "app's own")
    )
    for attempt, reason in cases:
        with pytest.raises(InputError, match=reason) as error:
            attempt()
        assert error.value.status in (400, 404, 409, 422)
    folders = [d for d in target.iterdir() if d.is_dir()] if target.exists() else []
    assert all(not ModelStore(target, d.name).numbers() for d in folders), "nothing registered"
    assert not list(target.rglob(".staging-*"))
    # through the command a team runs: exit status and message, and still nothing in the studies folder
    done = import_command(studies, "--format", "nnunetv2", str(broken), "--name", "broken", "--label-map", "amos")
    assert done.returncode != 0 and "does not load" in done.stderr
    assert not (models_dir(studies) / "broken").exists() or not ModelStore(models_dir(studies), "broken").numbers()


# -- imported, served, scored, fine-tuned -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(studies, nnunet_model, bundle, tmp_path_factory):
    for args in (
        ["--format", "nnunetv2", str(nnunet_model), "--name", "tinynn", "--label-map", "amos"],
        ["--format", "monai-bundle", str(bundle), "--name", "tinybundle", "--label-map", str(bundle / "map.yaml")],
    ):
        done = import_command(studies, *args)
        assert done.returncode == 0, done.stderr
        assert "imported" in done.stdout and "fingerprint" in done.stdout
    # an import under a name that already holds an import is a new version of it, not an overwrite
    # one pre-labeler per modality, from one server: CT scans get the nnU-Net model, MRI scans the bundle
    conf = {"preset": "cpu-fast", "fallback_model": "ct=tinynn,mri=tinybundle", **NO_SCORER}
    with running(ServerProcess(studies, tmp_path_factory.mktemp("server"), conf)) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return server.client(tmp_path_factory.mktemp("client"))


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (
        b.GetSize(),
        b.GetSpacing(),
        b.GetOrigin(),
        b.GetDirection(),
    )


def test_info_lists_the_imported_models_and_only_the_bundle_trains(client):
    info = client.info()
    assert {"tinynn", "tinybundle", "unet", "prior"} <= set(info["models"])
    assert info["models"]["tinynn"]["imported"]["format"] == "nnunetv2"
    assert "tinybundle" in info["trainers"] and "tinynn" not in info["trainers"]


def test_the_nnunet_model_prelabels_the_real_ct_on_its_exact_grid(client, studies, shared):
    label_file, result = client.infer("tinynn", REAL_CT, {})
    label, image = sitk.ReadImage(label_file), sitk.ReadImage(str(shared / "ct" / f"{REAL_CT}.nii.gz"))
    assert same_grid(label, image)
    version = ModelStore(models_dir(studies), "tinynn").get(1)
    assert result["model_tag"] == "tinynn:v1" and result["imported"]["format"] == "nnunetv2"
    assert result["imported"]["fingerprint"] == version.meta["imported"]["fingerprint"]
    assert result["label_map"]["name"] == "amos" and result["label_map"]["classes"]["6"] == 6
    values = set(np.unique(sitk.GetArrayFromImage(label)).tolist())
    assert values <= set(range(16)) and set(result["organs_found"]) == values - {0}


def test_an_untrained_network_falls_back_to_the_imported_model_of_the_scans_modality(client):
    _, result = client.infer("unet", REAL_CT, {})
    assert result["model"] == "tinynn" and result["requested_model"] == "unet" and "fallback" in result
    _, mri = client.infer("unet", "ts_abdomen_mr_small", {})  # recorded as MRI at import
    assert mri["model"] == "tinybundle" and mri["requested_model"] == "unet" and "fallback" in mri


def test_the_bundle_prelabels_with_its_own_pipeline_and_label_15_follows_the_sex(client, shared):
    image = sitk.ReadImage(str(shared / "ct" / f"{REAL_CT}.nii.gz"))
    female_file, female = client.infer("tinybundle", REAL_CT, {"sex": "female"})
    male_file, male = client.infer("tinybundle", REAL_CT, {"sex": "male"})
    assert same_grid(sitk.ReadImage(female_file), image)
    assert female["label_map"]["patient_sex"] == "female" and "15" in female["label_map"]["empty"]
    assert "no uterus class" in female["label_map"]["empty"]["15"]
    assert male["label_map"]["classes"]["15"] == 4 and "15" not in male["label_map"]["empty"]
    assert 15 in male["organs_found"]
    assert 15 not in female["organs_found"]
    female_voxels = sitk.GetArrayFromImage(sitk.ReadImage(female_file))
    male_voxels = sitk.GetArrayFromImage(sitk.ReadImage(male_file))
    # the same prediction; only where the male map puts a prostate does the female one leave background
    differs = female_voxels != male_voxels
    assert np.all(male_voxels[differs] == 15) and np.all(female_voxels[differs] == 0)


def test_imported_models_join_the_scoring_ensemble(studies, shared):
    from amoslabel.config import load_config
    from models.serving import ImportedConfig
    from strategies.members import case_members

    config = load_config(overrides={"preset": "cpu-fast"})
    tasks = {
        name: ImportedConfig(name, config, ModelStore(models_dir(studies), name)).infer()
        for name in ("tinynn", "tinybundle")
    }
    outputs, grid, _ = case_members(str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"), "ct", tasks, None)
    assert [o.name for o in outputs] == ["tinynn", "tinybundle"]
    for member in outputs:
        assert member.probabilities.shape[0] == 16 and member.version == 1
        assert np.allclose(member.probabilities.sum(0), 1.0, atol=1e-3)


def test_the_bundle_is_fine_tuned_once_and_the_child_records_its_parent(client, studies, shared):
    status = train(client, "tinybundle", {"max_epochs": 1, "iterations_per_epoch": 2, "val_interval": 1})
    assert status.get("status") == "DONE", status
    store = ModelStore(models_dir(studies), "tinybundle")
    assert store.numbers() == [1, 2]
    parent, child = store.get(1), store.get(2)
    assert "imported" not in child.meta and child.meta["parent_version"] == 1
    assert child.meta["parent_imported"]["fingerprint"] == parent.meta["imported"]["fingerprint"]
    assert child.meta["network"] == parent.meta["network"]  # the bundle's network behind the same head
    # the fine-tuned version serves through the app's own pipeline, on the scan's grid
    label_file, result = client.infer("tinybundle", REAL_CT, {"model_version": 2})
    assert result["model_version"] == 2 and "imported" not in result
    assert same_grid(sitk.ReadImage(label_file), sitk.ReadImage(str(shared / "ct" / f"{REAL_CT}.nii.gz")))


def test_a_pinned_version_that_does_not_exist_is_404_and_the_server_keeps_serving(client, server):
    from monailabel.client.client import MONAILabelClientException

    from tests.app.test_server import status_of

    with pytest.raises(MONAILabelClientException) as error:
        client.infer("tinynn", REAL_CT, {"model_version": 9})
    assert status_of(error.value) == 404
    assert server.alive()


def test_conflicting_trained_versions_block_an_import_under_that_name(studies, nnunet_model):
    from models.pretrained.importer import import_model

    with pytest.raises(Conflict, match="trained versions"):
        import_model("nnunetv2", [nnunet_model], "tinybundle", "amos", models_dir(studies))
