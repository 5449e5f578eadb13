"""SAM2's weights for the click model's ``sam2`` engine (:mod:`models.click_sam2`): fetched, checked, versioned.

    python -m amoslabel models fetch sam2 --studies DIR             (MONAI Label's SAM2 hiera-large checkpoint)
    ... --url URL                                                   (another size, or a mirror)
    ... --from sam2.1_hiera_tiny.pt                                 (an air-gapped server: the file carried in)

The URL is MONAI Label's own setting (``MONAI_SAM_MODEL_PT``, which its ``monailabel.sam2`` task downloads: SAM2
hiera-large, or SAM2.1's where MONAI Label finds the package under the name it looks for), and the download is
MONAI's (:func:`monai.apps.download_url`). The checkpoint's release (SAM2 or SAM2.1) and size (tiny, small, base+ or
large) are read from its weights, which must load whole into the ``sam2`` package's own model of that release and
size: anything else is refused with one message, and nothing is registered. The version
(``<models_dir>/sam2/vNNNN``) keeps the weights alone (weights-only loading), and its ``meta.json`` the package's
config, the input size, the URL or the carried file's SHA-256, and the weights' licence (Apache-2.0).

``--image-size``: SAM2 was trained on 1024-pixel frames. A smaller input is much faster on a CPU (about 20 times at
256) and less accurate; the tests use it with weights made here.
"""

from __future__ import annotations

import http.client
import logging
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from amoslabel.errors import Conflict, InputError
from amoslabel.files import file_sha256
from models.versions import ModelStore, ModelVersion

log = logging.getLogger(__name__)
SAM2_MODEL = "sam2"
LICENCE = "Apache-2.0 (github.com/facebookresearch/sam2)"
#: (patch embedding width, trunk blocks) -> the size's config name in the ``sam2`` package
SIZES: Dict[tuple, str] = {(96, 12): "hiera_t", (96, 16): "hiera_s", (112, 24): "hiera_b+", (144, 48): "hiera_l"}
SAM2_1_ONLY = "no_obj_embed_spatial"  # a weight SAM2.1 added: its checkpoints have it, SAM2's do not
TRAINED_IMAGE_SIZE = 1024


def default_url() -> str:
    """MONAI Label's SAM2 checkpoint URL (its ``MONAI_SAM_MODEL_PT`` setting)."""
    from monailabel.config import settings

    return settings.MONAI_SAM_MODEL_PT


def config_of(weights: Mapping[str, torch.Tensor]) -> str:
    """The ``sam2`` package's config for these weights (their release and size), or InputError."""
    patch = weights.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    key = (int(patch.shape[0]) if patch is not None else None, len(blocks))
    if key not in SIZES:
        raise InputError(
            f"not a SAM2 checkpoint (patch embedding {key[0]}, {key[1]} trunk blocks): fetch one of SAM2's or "
            "SAM2.1's hiera tiny, small, base+ or large"
        )
    if SAM2_1_ONLY in weights:
        return f"configs/sam2.1/sam2.1_{SIZES[key]}.yaml"
    return f"configs/sam2/sam2_{SIZES[key]}.yaml"


def build_predictor(config: str, image_size: int, weights: Optional[Mapping[str, torch.Tensor]], device: str):
    """SAM2's video predictor of ``config`` at ``image_size``, with ``weights`` loaded whole (strict)."""
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        config, None, device="cpu", mode="eval", hydra_overrides_extra=[f"++model.image_size={int(image_size)}"]
    )
    if weights is not None:
        predictor.load_state_dict(dict(weights), strict=True)
    return predictor.to(torch.device(device)).eval()


def fetch_sam2(
    models_dir: Path,
    url: Optional[str] = None,
    source: Optional[Path] = None,
    image_size: int = TRAINED_IMAGE_SIZE,
    actor: str = "operator",
) -> ModelVersion:
    """Download SAM2's checkpoint (or take ``source``), check that it loads whole, and publish it as the serving
    version of model ``sam2``."""
    if not 64 <= image_size <= 2048 or image_size % 32:
        raise InputError(f"--image-size {image_size}: a multiple of 32 between 64 and 2048 (SAM2 trained at 1024)")
    store = ModelStore(models_dir, SAM2_MODEL)
    fetched: Dict[str, Any] = {"licence": LICENCE, "by": actor}
    staging: Optional[Path] = None  # this fetch's own download (another fetch at the same time has its own)
    try:
        if source is not None:
            if not Path(source).is_file():
                raise InputError(f"{source}: no such file")
            checkpoint_file = Path(source)
            fetched.update({"carried_in": checkpoint_file.name, "sha256": file_sha256(checkpoint_file)})
        else:
            from monai.apps import download_url

            url = url or default_url()
            (models_dir.parent / "downloads").mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(".pt", ".amoslabel-partial-sam2-", models_dir.parent / "downloads")
            os.close(handle)
            staging = Path(name)
            staging.unlink()  # MONAI's download_url skips a file that exists
            try:
                download_url(url, str(staging), progress=True)
            except (OSError, RuntimeError, ValueError, http.client.HTTPException) as error:  # urllib's and MONAI's
                raise InputError(
                    f"SAM2's checkpoint: the download from {url} failed ({type(error).__name__}: {error}). Without "
                    "internet, carry the .pt file in and run the same command with --from FILE.pt"
                ) from None
            if not staging.is_file():  # MONAI's download_url logs some failures (a folder it may not write) only
                raise InputError(f"SAM2's checkpoint: nothing was downloaded from {url} (see the log above)")
            checkpoint_file = staging
            fetched.update({"url": url, "sha256": file_sha256(staging)})
        weights = _read_checkpoint(checkpoint_file)
        config = config_of(weights)
        try:
            build_predictor(config, image_size, weights, "cpu")
        except RuntimeError as error:
            raise InputError(f"{checkpoint_file.name}: its weights do not fit SAM2's {config}: {error}") from None
        version = store.publish(weights, {"sam2": {"config": config, "image_size": image_size}, "fetched": fetched})
        store.set_champion(version.number, f"fetched ({fetched.get('url') or fetched['carried_in']})", actor)
        return version
    finally:
        if staging is not None:
            staging.unlink(missing_ok=True)


def _read_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    """The weights of a SAM2 checkpoint (``{"model": state_dict}``, as Meta publishes it, or the state dict)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise InputError(
            f"{path.name}: not a whole PyTorch checkpoint (a broken download?): {str(error)[:200]}"
        ) from None
    weights = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path.name}: not a SAM2 checkpoint (no weights under 'model')")
    return weights


def serving(models_dir: Path) -> ModelVersion:
    """SAM2's serving version, or Conflict (409) saying how to fetch it."""
    version = ModelStore(models_dir, SAM2_MODEL).champion()
    if version is None:
        raise Conflict(
            "the sam2 engine has no weights on this server: an admin fetches them with "
            "`python -m amoslabel models fetch sam2 --studies DIR` (or --from FILE.pt without internet)"
        )
    return version
