"""Networks come from a registry by name, all with one input and 16 output channels."""

from __future__ import annotations

import pytest
import torch

from amoslabel.config import load_config
from amoslabel.organs import NUM_CLASSES
from models.networks import build_network, count_gflops, count_parameters, register_network, registered_networks


@pytest.mark.parametrize("preset", ["full", "cpu"])
@pytest.mark.parametrize("model", ["unet", "vnet"])
def test_served_models_build_with_16_outputs(preset, model):
    spec = load_config().presets[preset].networks[model]
    network = build_network(spec.network, spec.params).eval()
    with torch.inference_mode():
        out = network(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, NUM_CLASSES, 32, 32, 32)
    assert count_parameters(network) > 0


def test_unet_is_dynunet_and_vnet_is_monai_vnet():
    from monai.networks.nets import DynUNet, VNet

    assert isinstance(build_network("dynunet"), DynUNet)
    assert isinstance(build_network("vnet"), VNet)


def test_unknown_name_or_parameter_is_refused():
    with pytest.raises(KeyError, match="unknown network 'segformer'"):
        build_network("segformer")
    with pytest.raises(TypeError, match="does not take"):
        build_network("dynunet", {"filterz": [8, 16]})


def test_one_more_registry_entry_adds_an_architecture():
    name = "test-tiny-conv"
    if name not in registered_networks():

        @register_network(name, "a single convolution, for this test")
        def _tiny(in_channels, out_channels, width: int = 4):
            return torch.nn.Sequential(
                torch.nn.Conv3d(in_channels, width, 3, padding=1), torch.nn.Conv3d(width, out_channels, 1)
            )

    net = build_network(name, {"width": 2})
    assert net(torch.zeros(1, 1, 8, 8, 8)).shape[1] == NUM_CLASSES
    with pytest.raises(ValueError, match="already registered"):
        register_network(name, "again")(lambda in_channels, out_channels: None)


@pytest.mark.parametrize("model", ["unet", "vnet", "segresnet", "unetr", "swinunetr"])
def test_amos_table_networks_are_registered_and_run_in_the_cpu_preset(model):
    spec = load_config(overrides={"preset": "cpu"}).active.networks[model]
    network = build_network(spec.network, spec.params).eval()
    with torch.inference_mode():
        out = network(torch.zeros(1, 1, 64, 64, 64))  # the cpu preset's patch
    assert out.shape == (1, NUM_CLASSES, 64, 64, 64)


def test_complexity_is_counted_at_the_amos_table_input():
    small = build_network("dynunet", {"filters": [8, 16, 32, 64]})
    large = build_network("dynunet", {"filters": [16, 32, 64, 128]})
    # convolution FLOPs grow with the product of input and output widths: twice the widths, four times the FLOPs
    assert count_gflops(large) / count_gflops(small) == pytest.approx(4.0, rel=0.1)
    assert count_parameters(large) > 3.5 * count_parameters(small)
    # a 3x3x3 convolution 1->8 at 128^3 alone is 2 * 27 * 8 * 128^3 FLOPs
    conv = torch.nn.Conv3d(1, 8, 3, padding=1, bias=False)
    assert count_gflops(conv) == pytest.approx(2 * 27 * 8 * 128**3 / 1e9)


def test_extra_networks_can_be_served_by_conf():
    config = load_config(overrides={"models": "unet,segresnet,swinunetr"})
    assert config.models == ["unet", "segresnet", "swinunetr"]
