"""Network registry: 3D segmentors chosen by name, each with one input channel and 16 output channels.

Adding an architecture is one more :func:`register_network` entry; ``apps.yaml`` then names it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Sequence

import torch
from monai.networks.nets import DynUNet, SegResNet, SwinUNETR, UNETR, VNet

from amoslabel.organs import NUM_CLASSES

NetworkFactory = Callable[..., torch.nn.Module]


@dataclass(frozen=True)
class NetworkEntry:
    """A registered architecture: its factory and a one-line description."""

    name: str
    factory: NetworkFactory
    description: str


_REGISTRY: Dict[str, NetworkEntry] = {}


def register_network(name: str, description: str) -> Callable[[NetworkFactory], NetworkFactory]:
    """Decorator: register ``factory(in_channels, out_channels, **params)`` under ``name``."""

    def wrap(factory: NetworkFactory) -> NetworkFactory:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is already registered")
        _REGISTRY[name] = NetworkEntry(name, factory, description)
        return factory

    return wrap


def registered_networks() -> Dict[str, NetworkEntry]:
    """All registered architectures by name."""
    return dict(_REGISTRY)


def build_network(
    name: str, params: Mapping[str, Any] | None = None, out_channels: int = NUM_CLASSES, in_channels: int = 1
) -> torch.nn.Module:
    """Build a registered network with ``in_channels`` inputs (the scan; a click model adds guidance channels) and
    ``out_channels`` outputs.

    Raises:
        KeyError: ``name`` is not registered.
        TypeError: ``params`` holds an argument the factory does not take.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown network {name!r}; registered: {sorted(_REGISTRY)}")
    factory = _REGISTRY[name].factory
    params = dict(params or {})
    accepted = set(inspect.signature(factory).parameters) - {"in_channels", "out_channels"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(f"network {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    return factory(in_channels=in_channels, out_channels=out_channels, **params)


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def count_gflops(network: torch.nn.Module, input_size: Sequence[int] = (1, 1, 128, 128, 128)) -> float:
    """Forward-pass GFLOPs at ``input_size`` (AMOS Table 4 uses 1x1x128x128x128).

    Counted by ``torch.utils.flop_counter`` on the meta device (shapes only: no memory, no compute), which counts
    convolutions, matrix products and attention at 2 FLOPs per multiply-add; normalisation and activations are not
    counted. Halve it for GMACs, the unit some papers call FLOPs.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.zeros(*input_size, device="meta"))
    return counter.get_total_flops() / 1e9


@register_network("dynunet", "nnU-Net-style 3D UNet (MONAI DynUNet): 3x3x3 convolutions, stride-2 downsampling")
def _dynunet(
    in_channels: int,
    out_channels: int,
    filters: Sequence[int] = (32, 64, 128, 256, 320),
    norm: str = "instance",
    residual: bool = False,
) -> torch.nn.Module:
    levels = len(filters)
    kernels = [[3, 3, 3]] * levels
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        norm_name=norm,
        res_block=residual,
    )


@register_network("vnet", "MONAI VNet (Milletari et al. 2016)")
def _vnet(in_channels: int, out_channels: int, dropout_prob: float = 0.0) -> torch.nn.Module:
    # VNet's first block adds its input to 16 copies of itself, which needs 1 (or 16) input channels.
    return VNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        dropout_prob_down=dropout_prob,
        dropout_prob_up=(dropout_prob, dropout_prob),
    )


@register_network("segresnet", "MONAI SegResNet (Myronenko 2018), the network of MONAI Label's radiology app")
def _segresnet(
    in_channels: int, out_channels: int, init_filters: int = 16, dropout_prob: float = 0.0
) -> torch.nn.Module:
    return SegResNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        dropout_prob=dropout_prob or None,
    )


@register_network("unetr", "MONAI UNETR (Hatamizadeh et al. 2022): a ViT encoder; input size fixed by img_size")
def _unetr(
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int] = (96, 96, 96),
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
) -> torch.nn.Module:
    # the sliding window must use exactly img_size: the plan's patch size has to match it
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(img_size),
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
    )


@register_network("swinunetr", "MONAI SwinUNETR (Hatamizadeh et al. 2022): a Swin transformer encoder")
def _swinunetr(in_channels: int, out_channels: int, feature_size: int = 48, use_v2: bool = False) -> torch.nn.Module:
    # sizes must be divisible by 32 (five 2x downsamplings)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, use_v2=use_v2)
