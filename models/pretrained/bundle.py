"""MONAI bundles (``configs/inference.json|yaml``, ``models/model.pt``): checked on import, run by ``monai.bundle``.

Serving an imported bundle runs the bundle's own ``preprocessing``, ``network_def`` with its weights, ``inferer`` and
``postprocessing`` (its ``SaveImage`` steps left out), parsed by ``monai.bundle.ConfigParser``; the result is then
resampled by physical coordinates onto the scan's own grid. The class names come from the bundle's
``configs/metadata.json`` (``network_data_format.outputs.pred.channel_def``).

A bundle's network is one we can train: ``monai_bundle`` in the network registry builds it from the bundle's config
and puts a fixed head on it that picks the AMOS organs' channels (:class:`PickChannels`), so the first training
fine-tunes the imported weights with the app's own data, losses and preprocessing, and records its parent.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import yaml

from amoslabel.errors import InputError
from amoslabel.organs import NUM_CLASSES
from models.networks import register_network

CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
WEIGHTS = "models/model.pt"
METADATA = "configs/metadata.json"
#: the logit of an AMOS organ the bundle has no class for: never chosen
ABSENT_LOGIT = -1.0e4


@dataclass(frozen=True)
class BundleInfo:
    """A checked bundle: its inference config (as data), its classes and its weights file."""

    folder: Path
    config_file: Path
    config: Dict[str, Any]
    classes: Dict[str, int]

    def files(self) -> List[Path]:
        """What serving needs, relative to the folder: the configs and the weights."""
        configs = [p.relative_to(self.folder) for p in sorted((self.folder / "configs").glob("*")) if p.is_file()]
        return configs + [Path(WEIGHTS)]


def read_config(path: Path) -> Dict[str, Any]:
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid {path.suffix[1:].upper()} ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a bundle config must be a mapping")
    return data


def load_state(path: Path) -> Dict[str, torch.Tensor]:
    """A bundle's weights: a plain state dict, or MONAI's checkpoint ``{"model": state dict, ...}``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


def parse_network(config: Mapping[str, Any], bundle_root: str = ".") -> torch.nn.Module:
    """The bundle's ``network_def``, instantiated by ``monai.bundle``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(dict(config))
    parser["bundle_root"] = bundle_root
    return parser.get_parsed_content("network_def")


def inspect_bundle(folder: Path) -> BundleInfo:
    """Check a bundle whole and load its weights into its network.

    Raises:
        InputError: no inference config, no weights, no class table, or weights that do not load.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (a MONAI bundle: configs/inference.json, models/model.pt)")
    config_file = next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)
    if config_file is None:
        raise InputError(f"{folder}: no inference config ({' or '.join(CONFIG_NAMES)}): not a MONAI bundle")
    if not (folder / WEIGHTS).is_file():
        raise InputError(f"{folder}: no {WEIGHTS}")
    config = read_config(config_file)
    for key in ("network_def", "preprocessing", "inferer"):
        if key not in config:
            raise InputError(
                f"{config_file}: no {key!r}; the app runs the bundle's network_def, preprocessing, "
                "inferer and postprocessing"
            )
    classes = bundle_classes(folder)
    try:
        network = parse_network(config, str(folder))
        network.load_state_dict(load_state(folder / WEIGHTS))
    except Exception as exc:  # monai.bundle and torch raise many kinds for a bad config or checkpoint
        raise InputError(
            f"{folder}: the weights do not load into the bundle's network_def: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return BundleInfo(folder, config_file, config, classes)


def bundle_classes(folder: Path) -> Dict[str, int]:
    path = folder / METADATA
    try:
        table = json.loads(path.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {str(name): int(index) for index, name in table.items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(
            f"{folder}: no class table: {METADATA} needs network_data_format.outputs.pred.channel_def "
            "({index: class name})"
        ) from None


class PickChannels(torch.nn.Module):
    """A bundle network with a fixed head: its logits of the AMOS organs, in AMOS order (16 channels).

    Args:
        network: the bundle's network.
        pick: for background and each AMOS id, the bundle channel, or -1 where it has none (:data:`ABSENT_LOGIT`).
    """

    def __init__(self, network: torch.nn.Module, pick: Sequence[int]):
        super().__init__()
        self.network = network
        self.register_buffer("pick", torch.as_tensor(list(pick), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        absent = torch.full_like(logits[:, :1], ABSENT_LOGIT)
        padded = torch.cat([logits, absent], dim=1)
        index = torch.where(self.pick < 0, torch.full_like(self.pick, padded.shape[1] - 1), self.pick)
        return padded.index_select(1, index)


def channel_pick(chosen: Mapping[int, int], background: int = 0) -> List[int]:
    """The :class:`PickChannels` head for a label map's ``{AMOS id: class}``."""
    return [background] + [int(chosen.get(i, -1)) for i in range(1, NUM_CLASSES)]


@register_network("monai_bundle", "an imported MONAI bundle's network_def, with a head picking the AMOS organs")
def _monai_bundle(in_channels: int, out_channels: int, config: Mapping[str, Any], pick: Sequence[int]):
    if out_channels != len(pick):
        raise ValueError(f"monai_bundle: {len(pick)} picked channels, {out_channels} wanted")
    return PickChannels(parse_network(config), pick)


class BundleRunner:
    """An imported bundle's own pipeline, loaded once per device."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._loaded: Optional[Tuple[str, Any]] = None

    def classes(self) -> Dict[str, int]:
        """The bundle's class table."""
        return bundle_classes(self.folder)

    def _parts(self, device: str):
        if self._loaded is None or self._loaded[0] != device:
            from monai.bundle import ConfigParser

            config_file = next(self.folder / n for n in CONFIG_NAMES if (self.folder / n).is_file())
            parser = ConfigParser(read_config(config_file))
            parser["bundle_root"] = str(self.folder)
            network = parser.get_parsed_content("network_def")
            network.load_state_dict(load_state(self.folder / WEIGHTS))
            network = network.to(torch.device(device)).eval()
            post = parser.get_parsed_content("postprocessing") if "postprocessing" in parser.config else None
            self._loaded = (
                device,
                (parser.get_parsed_content("preprocessing"), network, parser.get_parsed_content("inferer"), post),
            )
        return self._loaded[1]

    def predict(self, image: sitk.Image, device: str, probabilities: bool = False) -> np.ndarray:
        """Class map (z, y, x) uint16, or class probabilities (K, z, y, x) float32, on ``image``'s grid."""
        from monai.transforms import Compose

        preprocessing, network, inferer, postprocessing = self._parts(device)
        with tempfile.TemporaryDirectory(prefix="amoslabel-bundle-") as tmp:
            source = Path(tmp) / "image.nii.gz"
            sitk.WriteImage(image, str(source))
            data = preprocessing({"image": str(source)})
            inputs = data["image"].unsqueeze(0).to(torch.device(device))
            with torch.inference_mode():
                logits = inferer(inputs, network)
            data["pred"] = logits[0].detach().cpu()
            if probabilities:
                data["pred"] = torch.softmax(data["pred"].float(), dim=0)
            steps = [t for t in _steps(postprocessing) if not _skipped(t, probabilities)]
            data = Compose(steps)(data) if steps else data
            pred = data["pred"]
            array = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred, np.float32)
            affine = np.asarray(getattr(pred, "affine", data["image"].affine), np.float64)
        if not probabilities:
            classes = array.argmax(0) if array.shape[0] > 1 else array[0]
            return sitk.GetArrayFromImage(_onto(classes.astype(np.uint16), affine, image, sitk.sitkNearestNeighbor))
        return np.stack([sitk.GetArrayFromImage(_onto(c, affine, image, sitk.sitkLinear)) for c in array])


def _steps(postprocessing) -> list:
    if postprocessing is None:
        return []
    return list(getattr(postprocessing, "transforms", [postprocessing]))


def _skipped(transform, probabilities: bool) -> bool:
    """Writing files is the app's job; a probability request stops before the argmax."""
    name = type(transform).__name__
    return name.startswith("SaveImage") or (probabilities and name in ("AsDiscreted", "AsDiscrete", "Activationsd"))


def _onto(array_xyz: np.ndarray, affine_ras: np.ndarray, reference: sitk.Image, interpolator: int) -> sitk.Image:
    """A MONAI (x, y, z) array with its RAS affine, resampled by physical coordinates onto ``reference``."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine_ras[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:, 3]])
    image.SetDirection([float(v) for v in (lps[:, :3] / spacing).ravel()])
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0)
