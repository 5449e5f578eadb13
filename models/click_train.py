"""MONAI Label train task of the click model: the segmentation recipe, plus MONAI DeepEdit's simulated clicks.

The same data (consensus finals only), split, patches, augmentations, loss, versions and champion/challenger
promotion as :class:`models.train_task.SegmentationTrainTask`; what differs is DeepEdit's:

* each patch gets initial clicks, one per label present, where that label is deepest
  (``FindAllValidSlicesMissingLabelsd`` + ``AddInitialSeedPointMissingLabelsd``), encoded as guidance channels
  (``AddGuidanceSignalDeepEditd``), one per label with background first (:data:`models.click_network.GUIDANCE_LABELS`);
* each iteration, with ``clicks.deepgrow_probability``, MONAI's :class:`~monai.apps.deepedit.interaction.Interaction`
  runs the network, finds where it is wrong (``FindDiscrepancyRegionsDeepEditd``), adds clicks there
  (``AddRandomGuidanceDeepEditd``) for up to ``clicks.max_interactions`` rounds, then trains on the result; otherwise
  the guidance is zeroed and the step trains the automatic mode;
* the network starts from the click model's serving version, else from the base segmentor's
  (:func:`models.click_network.warm_start`);
* validation measures the automatic mode (no clicks): the challenger must not segment worse than the champion.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from monai.apps.deepedit.interaction import Interaction
from monai.apps.deepedit.transforms import (
    AddGuidanceSignalDeepEditd,
    AddInitialSeedPointMissingLabelsd,
    AddRandomGuidanceDeepEditd,
    FindAllValidSlicesMissingLabelsd,
    FindDiscrepancyRegionsDeepEditd,
)
from monai.transforms import Activationsd, AsDiscreted, Compose, SelectItemsd, ToNumpyd, ToTensord
from monailabel.tasks.train.basic_train import Context

from amoslabel.config import AppConfig, ClickSettings, NetworkSettings
from models.click_network import CLICK_INPUT_CHANNELS, GUIDANCE_LABELS, build_click_network, warm_start
from models.infer_task import as_bool
from models.train_task import SegmentationTrainTask
from models.versions import ModelStore

logger = logging.getLogger(__name__)
# AddRandomGuidanceDeepEditd logs every simulated click at INFO: thousands of lines in a training log
logging.getLogger("monai.apps.deepedit.transforms").setLevel(logging.WARNING)


class WithoutClicks(torch.nn.Module):
    """A click network that sees the scan alone: the guidance channels are zero (its automatic mode)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.inner = getattr(network, "module", network)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        guidance = image.new_zeros((image.shape[0], CLICK_INPUT_CHANNELS - image.shape[1], *image.shape[2:]))
        return self.inner(torch.cat([image, guidance], dim=1))


class InitialClicks:
    """DeepEdit's first clicks on a training patch, as guidance channels; numpy in, tensors out."""

    def __init__(self, seed: int):
        self.seeds = AddInitialSeedPointMissingLabelsd(keys="label", guidance="guidance", sids="sids")
        self.seeds.set_random_state(seed=seed)
        self.slices = FindAllValidSlicesMissingLabelsd(keys="label", sids="sids")
        self.signal = AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", number_intensity_ch=1)

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        d["image"] = np.asarray(d["image"], dtype=np.float32)
        d["label"] = np.asarray(d["label"], dtype=np.float32)
        d["label_names"] = dict(GUIDANCE_LABELS)
        d = self.signal(self.seeds(self.slices(d)))
        d["image"] = torch.as_tensor(d["image"], dtype=torch.float32)
        d["label"] = torch.as_tensor(d["label"], dtype=torch.uint8)
        return d


class GuidanceAsText:
    """Keep each label's clicks as JSON text between interactions: text collates into a batch and back unchanged,
    lists of clicks of different lengths do not."""

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        d["guidance"] = {
            k: v if isinstance(v, str) else json.dumps([[int(c) for c in p] for p in v])
            for k, v in d["guidance"].items()
        }
        return d


def simulated_clicks(clicks: ClickSettings) -> Interaction:
    """MONAI DeepEdit's click simulation for a trainer's ``iteration_update``: predict, find where the prediction is
    wrong, click there, for up to ``max_interactions`` rounds in a share ``deepgrow_probability`` of the steps."""
    return Interaction(
        deepgrow_probability=clicks.deepgrow_probability,
        transforms=[
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            ToNumpyd(keys=("image", "label", "pred")),
            FindDiscrepancyRegionsDeepEditd(keys="label", pred="pred", discrepancy="discrepancy"),
            AddRandomGuidanceDeepEditd(
                keys="NA", guidance="guidance", discrepancy="discrepancy", probability="probability"
            ),
            AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", number_intensity_ch=1),
            GuidanceAsText(),
            ToTensord(keys=("image", "label")),
        ],
        train=True,
        label_names=dict(GUIDANCE_LABELS),
        max_interactions=clicks.max_interactions,
    )


def with_initial_clicks(seed: int) -> list:
    """The transforms that end a click model's training pipeline (after patches and augmentation)."""
    return [InitialClicks(seed), GuidanceAsText(), SelectItemsd(keys=["image", "label", "label_names", "guidance"])]


class ClickTrainTask(SegmentationTrainTask):
    """Train the click model on the final labels with simulated clicks; publish its next version."""

    def __init__(
        self,
        name: str,
        config: AppConfig,
        store: ModelStore,
        base_store: ModelStore,
        network: NetworkSettings,
        studies: str,
        final_labels: Optional[Callable[[], List[Dict[str, Any]]]] = None,
    ):
        super().__init__(name, config, store, studies, final_labels, network)
        self.base_store = base_store
        self.description = (
            f"Train the click model ({network.network}, from {base_store.model}'s version) on final labels with "
            "simulated clicks"
        )

    def build(self, settings: NetworkSettings) -> torch.nn.Module:
        return build_click_network(settings.network, settings.params)

    def network(self, context: Context) -> torch.nn.Module:
        """Its own serving version when it has one; else the base segmentor's, warm-started; else fresh."""
        network = super().network(context)
        context.request["_warm_start"] = None
        if context.request.get("_parent_version") is None and as_bool(context.request.get("pretrained", True)):
            base = self.base_store.champion()
            if base is not None and base.meta.get("network") == self._network_spec():
                warm_start(network, self.base_store.load_weights(base))
                context.request["_warm_start"] = base.tag
                logger.info(f"{self.model_name}: starting from {base.tag} (warm start: guidance weights at zero)")
        return network

    def train_pre_transforms(self, context: Context):
        segmentation = super().train_pre_transforms(context).transforms
        seed = int(context.request["seed"]) + self._rank(context)
        return Compose(list(segmentation[:-1]) + with_initial_clicks(seed))

    def iteration_update(self, context: Context) -> Interaction:
        return simulated_clicks(self.app_config.clicks)

    def validation_network(self, network: torch.nn.Module) -> torch.nn.Module:
        return WithoutClicks(network)

    def _version_meta(self, context: Context) -> Dict[str, Any]:
        clicks = self.app_config.clicks
        return {
            **super()._version_meta(context),
            "kind": "click",
            "warm_start": context.request.get("_warm_start"),
            "guidance_labels": dict(GUIDANCE_LABELS),
            "deepgrow_probability": clicks.deepgrow_probability,
            "max_interactions": clicks.max_interactions,
            "validation": "automatic mode (no clicks)",
        }
