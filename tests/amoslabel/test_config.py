"""apps.yaml parses into typed objects; unknown keys and bad values stop start-up naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from amoslabel.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config
from amoslabel.organs import ORGANS


@pytest.fixture()
def raw():
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_repository_config_parses_with_every_required_part():
    config = load_config()
    assert config.labels == {o.name: o.id for o in ORGANS} and len(config.labels) == 15
    assert {"unet", "vnet"} <= set(config.models)
    assert {"full", "cpu"} <= set(config.presets)
    assert config.modalities["ct"].normalisation.window == (-991, 362)
    assert config.modalities["ct"].normalisation.mean == 50 and config.modalities["ct"].normalisation.std == 141
    assert config.modalities["mri"].normalisation.kind == "zscore_nonzero"
    full = config.presets["full"]
    # AMOS patch sizes, written z,y,x in the paper: CT 64x160x160, MRI 48x160x224
    assert full.plans["ct"].patch_size == (160, 160, 64)
    assert full.plans["mri"].patch_size == (224, 160, 48)
    assert full.train.momentum == 0.99 and full.train.learning_rate == 0.01
    assert full.inference.tta_flip is True and config.presets["cpu"].inference.tta_flip is False


def test_presets_inherit_and_override(raw):
    config = parse_config(raw)
    cpu, full = config.presets["cpu"], config.presets["full"]
    assert cpu.train.momentum == full.train.momentum  # inherited
    assert cpu.train.max_epochs != full.train.max_epochs  # overridden
    # the cpu MRI plan inherits the cpu CT plan, not the full preset's MRI plan
    assert cpu.plans["mri"] == cpu.plans["ct"]
    assert config.presets["cpu-fast"].plans["ct"].spacing == (3.0, 3.0, 3.0)
    assert config.presets["cpu-fast"].networks == cpu.networks


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["presets"]["cpu"]["train"].update(learning_rat=0.1), "presets.cpu.train.learning_rat"),
        (lambda r: r.update(colour="blue"), "unknown key 'colour'"),
        (lambda r: r["presets"]["full"]["plans"]["ct"].update(spacing=[1, 0, 1]), "presets.full.plans.ct.spacing"),
        (
            lambda r: r["presets"]["full"]["plans"]["ct"].update(patch_size=[100, 160, 64]),
            "presets.full.plans.ct.patch_size",
        ),
        (lambda r: r["presets"]["full"]["inference"].update(sw_overlap=1.5), "presets.full.inference.sw_overlap"),
        (lambda r: r.update(device="tpu"), "'device'"),
        (lambda r: r["labels"].update(spleen=2), "'labels'"),
        (lambda r: r["modalities"]["ct"]["normalisation"].pop("window"), "modalities.ct.normalisation"),
        (lambda r: r.update(preset="gpu-huge"), "preset 'gpu-huge'"),
        (lambda r: r["presets"]["cpu"].update(inherits="nope"), "presets.cpu.inherits"),
    ],
)
def test_bad_configuration_names_the_key(raw, mutate, expected):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(ConfigError) as err:
        parse_config(broken)
    assert expected in str(err.value)


def test_conf_overrides_chosen_keys_only(raw):
    config = parse_config(raw, {"preset": "full", "tta": "false", "device": "cpu", "max_epochs": "3"})
    assert config.preset == "full"
    assert config.active.inference.tta_flip is False
    assert config.active.train.max_epochs == 3
    assert config.presets["cpu"].train.max_epochs != 3  # only the preset in use is touched
    assert config.device == "cpu"
    with pytest.raises(ConfigError, match="--conf ttaa: unknown key.*did you mean 'tta'"):
        parse_config(raw, {"ttaa": "true"})
    with pytest.raises(ConfigError, match="set by --conf sw_overlap"):
        parse_config(raw, {"sw_overlap": "2"})
    assert parse_config(raw, {"click_engine": "sam2"}).clicks.engine == "sam2"
    with pytest.raises(ConfigError, match="set by --conf click_engine"):
        parse_config(raw, {"click_engine": "nninteractive"})


def test_the_fallback_is_one_model_or_one_per_modality(raw):
    assert parse_config(raw, {"fallback_model": "tinynn"}).fallback_model == "tinynn"
    per_modality = parse_config({**raw, "fallback_model": {"ct": "total", "mri": "total_mr"}})
    assert (per_modality.fallback_for("ct"), per_modality.fallback_for("mri")) == ("total", "total_mr")
    with pytest.raises(ConfigError, match="fallback_model"):
        parse_config({**raw, "fallback_model": {"pet": "x"}})


def test_missing_or_unreadable_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_fingerprint_changes_with_configuration(raw):
    a = parse_config(raw)
    b = parse_config(raw, {"tta": "true"})
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == parse_config(raw).fingerprint()
