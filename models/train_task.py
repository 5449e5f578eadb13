"""MONAI Label train task: train one served model on the datastore's final labels and publish a new version.

Built on MONAI Label's ``BasicTrainTask`` (so ``POST /train/{model}``, its subprocess and its multi-GPU option work
as in any MONAI Label app), with the AMOS recipe: Dice + cross-entropy, SGD (momentum 0.99, Nesterov), poly
learning-rate decay, nnU-Net patch sampling and the AMOS augmentations. Every run publishes a new numbered version
(see :mod:`models.versions`) with its parent, training and validation cases, epochs and per-organ validation Dice.

Data-parallel training (DDP) runs this same task on every rank, by two routes:

* ``python -m amoslabel train --nproc-per-node N`` launches torchrun on :mod:`models.distributed_training`, which
  calls :meth:`BasicTrainTask.train` with the global rank; on CPU (gloo) and CUDA (NCCL), one machine or several.
* ``POST /train/{model}`` with ``multi_gpu`` keeps MONAI Label's own path (``torch.multiprocessing.spawn``, one
  process per visible GPU, one machine): the server's training subprocess and its queue stay MONAI Label's, and
  there the rank given is also the local rank. Without two GPUs MONAI Label trains in one process. The overrides
  below make both routes pick the device from the true local rank and give DDP ``device_ids`` only on CUDA.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.engines import SupervisedTrainer
from ignite.engine import Events
from monai.handlers import LrScheduleHandler
from monai.inferers import SimpleInferer
from monai.transforms import Compose, SelectItemsd
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from amoslabel.data.records import CaseRecords
from amoslabel.config import AppConfig, NetworkSettings
from amoslabel.modality import ModalityEvidence, resolve_modality
from amoslabel.organs import ORGANS
from amoslabel.volume import strip_volume_suffix
from models.augmentation import RandClassBalancedCropd, SampleClassIndicesd, amos_augmentations
from models.infer_task import as_bool, resolve_device
from models.inference import SlidingWindowPredictor
from models.losses import build_loss
from models.networks import build_network, count_parameters
from models.optimizers import build_optimizer
from models.preprocessing import LoadVolumed, NormaliseIntensityd, ResampleToPland, ResolveModalityd, zyx
from models.training_handlers import ProgressLogger, PublishVersion, ValidateOrgans
from models.inference_gate import InferenceGate, PauseForInference, should_pause
from models.distributed import LOCAL_RANK_KEY, RankConsistencyCheck, end_together, rank_device, wrap_ddp
from models.versions import ModelStore

logger = logging.getLogger(__name__)


class ToTensorsd:
    """Keep what training needs, as tensors (the disk cache loads with ``weights_only=True``)."""

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        out = {
            "image": torch.as_tensor(data["image"], dtype=torch.float32),
            "label": torch.as_tensor(data["label"], dtype=torch.uint8),
            "case_id": data["case_id"],
            "modality": data["modality"],
        }
        if "class_indices" in data:
            out["class_indices"] = {int(k): torch.as_tensor(v) for k, v in data["class_indices"].items()}
        return out


class SegmentationTrainTask(BasicTrainTask):
    """Train ``model`` (a key of the preset's ``networks``) and publish the result as its next version.

    Request parameters (``POST /train/{model}`` body) may override: max_epochs, iterations_per_epoch, batch_size,
    learning_rate, val_fraction, val_interval, seed, pretrained (start from the newest version; default true),
    modality (force one), cache (disk|memory|none), augment, device, multi_gpu, gpus, and for DDP
    distributed_backend, distributed_url, consistency_every (iterations between rank-consistency checks) and
    ``_local_rank`` (see :data:`models.distributed.LOCAL_RANK_KEY`).
    """

    def __init__(
        self,
        name: str,
        config: AppConfig,
        store: ModelStore,
        studies: str,
        final_labels: Optional[Callable[[], List[Dict[str, Any]]]] = None,
        network: Optional[NetworkSettings] = None,
    ):
        preset = config.active
        self.final_labels = final_labels
        self.model_name = name
        self.app_config = config
        self.store = store
        self.studies = studies
        # a network of the preset, or one given by its model (an imported bundle's, which this fine-tunes)
        self.network_settings = network or preset.networks[name]
        t = preset.train
        super().__init__(
            model_dir=str(store.root),
            description=f"Train {name} ({self.network_settings.network}) on final labels, {config.preset} preset",
            config={
                "max_epochs": t.max_epochs,
                "iterations_per_epoch": t.iterations_per_epoch,
                "batch_size": t.batch_size,
                "learning_rate": t.learning_rate,
                "val_fraction": t.val_fraction,
                "val_interval": t.val_interval,
                "seed": t.seed,
                "cache": t.cache,
                "pretrained": True,
                "device": resolve_device(config.device),
                "multi_gpu": True,
                "gpus": "all",
            },
            amp=False,  # decided per device in _create_trainer
            labels={o.name: o.id for o in ORGANS},
            disable_meta_tracking=True,
            tracking=None,
        )
        for key in (
            "dataset",
            "dataloader",
            "tracking",
            "tracking_uri",
            "tracking_experiment_name",
            "val_split",
            "train_batch_size",
            "val_batch_size",
            "early_stop_patience",
            "name",
        ):
            self._config.pop(key, None)

    # -- data ------------------------------------------------------------------------------------------------
    def pre_process(self, request: Dict[str, Any], datastore) -> List[Dict[str, Any]]:
        """The datastore's final labels, each with its case id and import record."""
        records = CaseRecords(self.studies) if os.path.isdir(self.studies) else None
        items = []
        for item in self._labelled(datastore):
            # the datastore's id: a linked image's file may be named otherwise, and retraining counts new finals by id
            case_id = item.get("case_id") or strip_volume_suffix(Path(item["image"]).name)
            entry = {
                "image": item["image"],
                "label": item["label"],
                "case_id": case_id,
                "case_record": records.get(case_id) if records else {},
            }
            if request.get("modality"):
                entry["modality"] = request["modality"]
            else:
                hint, source = resolve_modality(
                    ModalityEvidence(case_id=case_id, path=item["image"], case_record=entry["case_record"])
                )
                entry["modality_hint"] = hint if source != "default" else None
            items.append(entry)
        items.sort(key=lambda d: d["case_id"])
        logger.info(f"{self.model_name}: {len(items)} case(s) with a final label")
        return items

    def _labelled(self, datastore) -> List[Dict[str, str]]:
        """(image, label) pairs to train on: the workflow's consensus-final labels when it runs, else the
        datastore's ``final`` labels."""
        if self.final_labels is None:
            return list(datastore.datalist())
        pairs = []
        for entry in self.final_labels():
            image = datastore.get_image_uri(entry["case_id"])
            if image:
                pairs.append({"image": image, "label": entry["label"], "case_id": entry["case_id"]})
        return pairs

    def partition_datalist(self, context: Context, shuffle: bool = False):
        """A fixed split by hashed case id, so a case stays on its side across runs and machines."""
        items = list(context.datalist)
        fraction = float(context.request["val_fraction"])
        seed = int(context.request["seed"])
        if not items:
            raise ValueError(f"{self.model_name}: no final labels to train on")
        ranked = sorted(items, key=lambda d: hashlib.sha1(f"{seed}:{d['case_id']}".encode()).hexdigest())
        n_val = min(len(items) - 1, max(1, math.floor(fraction * len(items) + 0.5))) if fraction > 0 else 0
        val, train = ranked[:n_val], ranked[n_val:]
        context.request["_val_is_train"] = not val
        if not val:
            val = list(train)  # one case only: validate on it, and say so in the version's metadata
        logger.info(
            f"{self.model_name}: {len(train)} training case(s), {len(val)} validation case(s)"
            + (" (the training case itself: too few cases to hold one out)" if not n_val else "")
        )
        return train, val

    def _preprocessing(self, with_label: bool = True) -> List[Any]:
        return [
            LoadVolumed(self.app_config.storage.max_image_voxels, with_label=with_label),
            ResolveModalityd(),
            NormaliseIntensityd({m: s.normalisation for m, s in self.app_config.modalities.items()}),
            ResampleToPland(self.app_config.active.plans),
        ]

    def train_pre_transforms(self, context: Context):
        request = context.request
        seed = int(request["seed"])
        # Random crops and augmentations draw from seed + rank: with one seed every rank would cut the same patches
        # of its data (and of all of it when there are fewer cases than ranks), wasting the extra ranks.
        # Class-index sampling stays on the base seed: it is deterministic preprocessing, cached on disk by case.
        data_seed = seed + self._rank(context)
        plans = self.app_config.active.plans
        modalities = {d.get("modality") or d.get("modality_hint") or "ct" for d in context.train_datalist}
        # One patch size per run so that batches stack: the CT plan's, unless every case is MRI.
        patch_xyz = plans["mri" if modalities == {"mri"} else "ct"].patch_size
        request["_train_patch_xyz"] = list(patch_xyz)
        patch = zyx(patch_xyz)
        transforms = self._preprocessing() + [
            SampleClassIndicesd(seed=seed),
            ToTensorsd(),
            RandClassBalancedCropd(patch, self.app_config.active.train.foreground_fraction),
        ]
        transforms[-1].set_random_state(seed=data_seed)
        if self._augment(request):
            transforms.append(amos_augmentations(data_seed))
        transforms.append(SelectItemsd(keys=["image", "label"]))
        return Compose(transforms)

    def _augment(self, request: Dict[str, Any]) -> bool:
        return as_bool(request.get("augment", self.app_config.active.train.augment))

    @staticmethod
    def _rank(context: Context) -> int:
        """The global rank (MONAI Label's ``train`` stores the rank it is given as ``context.local_rank``)."""
        return int(context.local_rank) if context.multi_gpu else 0

    def train_post_transforms(self, context: Context):
        return None

    def val_pre_transforms(self, context: Context):
        return Compose(self._preprocessing() + [ToTensorsd()])

    def val_inferer(self, context: Context):
        return None  # validation runs in models.training_handlers.ValidateOrgans

    def _dataset(self, context: Context, datalist, is_train: bool, replace_rate: float = 0.25):
        if context.multi_gpu:
            world_size = torch.distributed.get_world_size()
            if len(datalist) // world_size:
                from monai.data import partition_dataset

                datalist = partition_dataset(data=datalist, num_partitions=world_size, even_divisible=True)[
                    context.local_rank
                ]
        transforms = self.train_pre_transforms(context) if is_train else self.val_pre_transforms(context)
        cache = context.request["cache"]
        if cache == "memory":
            return CacheDataset(datalist, transforms, num_workers=1), datalist
        if cache == "disk":
            return PersistentDataset(datalist, transforms, cache_dir=os.path.join(context.cache_dir, "pds")), datalist
        return Dataset(datalist, transforms), datalist

    # -- devices and DDP ---------------------------------------------------------------------------------------
    def _device(self, context: Context) -> torch.device:
        """Under DDP: ``cuda:{local rank}`` with CUDA, else the CPU (MONAI Label's is CUDA-only and indexes GPUs by
        the global rank). Alone: the requested device, the CPU without CUDA."""
        if not context.multi_gpu:
            return torch.device(resolve_device(str(context.request["device"])))
        local_rank = int(context.request.get(LOCAL_RANK_KEY, context.local_rank))
        # MONAI Label's train() set LOCAL_RANK to the global rank; put the truth back for whatever reads it later
        os.environ["LOCAL_RANK"] = str(local_rank)
        device = rank_device(context.request, local_rank)
        logger.info(f"rank {context.local_rank}/{context.world_size} (local {local_rank}): {device}")
        return device

    def _create_network_and_optimizer(self, context: Context):
        """The network on its device and its optimiser; under DDP the network wrapped, ``device_ids`` on CUDA only."""
        network = self.network(context).to(context.device)
        context.network = network  # optimizer() reads the parameters from here
        optimizer = self.optimizer(context)
        if context.multi_gpu:
            network = wrap_ddp(network, context.device, self._find_unused_parameters)
        return network, optimizer

    # -- model and optimisation --------------------------------------------------------------------------------
    def network(self, context: Context) -> torch.nn.Module:
        network = self.build(self.network_settings)
        parent = self.store.champion() if as_bool(context.request.get("pretrained", True)) else None
        same_spec = parent is not None and parent.meta.get("network") == self._network_spec()
        if same_spec:
            network.load_state_dict(self.store.load_weights(parent))
            logger.info(f"{self.model_name}: starting from version {parent.number}")
        else:
            if parent is not None:
                logger.info(f"{self.model_name}: version {parent.number} has another architecture; from scratch")
            parent = None
        context.request["_parent_version"] = parent.number if parent else None
        context.request["_parent_imported"] = (parent.meta.get("imported") if parent else None) or None
        return network

    def _network_spec(self) -> Dict[str, Any]:
        return {"name": self.network_settings.network, "params": dict(self.network_settings.params)}

    def optimizer(self, context: Context):
        return build_optimizer(
            context.network.parameters(), self.app_config.active.train, context.request["learning_rate"]
        )

    def loss_function(self, context: Context):
        return build_loss(self.app_config.active.train.loss)

    def lr_scheduler_handler(self, context: Context):
        total = int(context.request["max_epochs"]) * int(context.request["iterations_per_epoch"])
        scheduler = torch.optim.lr_scheduler.PolynomialLR(
            context.optimizer, total_iters=total, power=self.app_config.active.train.poly_power
        )
        return LrScheduleHandler(scheduler, print_lr=False, epoch_level=False)

    # -- engines ---------------------------------------------------------------------------------------------
    def _create_evaluator(self, context: Context):
        return None

    def _create_trainer(self, context: Context) -> SupervisedTrainer:
        request = context.request
        loader = self._dataloader(
            context,
            self._dataset(context, context.train_datalist, True)[0],
            int(request["batch_size"]),
            num_workers=0,
            shuffle=True,
        )
        torch.manual_seed(int(request["seed"]))
        handlers = [self.lr_scheduler_handler(context)]
        trainer = SupervisedTrainer(
            device=context.device,
            max_epochs=int(request["max_epochs"]),
            epoch_length=int(request["iterations_per_epoch"]),
            train_data_loader=loader,
            network=context.network,
            optimizer=context.optimizer,
            loss_function=self.loss_function(context),
            inferer=SimpleInferer(),
            amp=context.device.type == "cuda",
            train_handlers=handlers,
            iteration_update=self.iteration_update(context),
        )
        retraining = self.app_config.retraining
        if should_pause(retraining.pause_for_inference, context.device.type):
            PauseForInference(InferenceGate(self.store.root.parent), retraining.max_pause_s).attach(trainer)
        return trainer

    def iteration_update(self, context: Context):
        """What runs each training iteration in place of the trainer's own step (None: its own step)."""
        return None

    def validation_network(self, network: torch.nn.Module) -> torch.nn.Module:
        """The module validation runs on a scan alone (the network itself; a click model adds empty guidance)."""
        return network

    def finalize(self, context: Context) -> None:
        request = context.request
        consistency = None
        if context.multi_gpu:
            # attached first, on every rank: a collective call, so it must run before rank 0's validation at the end
            every = int(request.get("consistency_every", self.app_config.active.train.log_every))
            consistency = RankConsistencyCheck(context.network, every, context.device)
            consistency.attach(context.trainer)
        if self._rank(context) != 0:
            if context.multi_gpu:
                context.trainer.add_event_handler(Events.COMPLETED, end_together)
            return  # validation, progress and publishing are rank 0's; the other ranks only train
        plan_settings = self.app_config.active
        validate = ValidateOrgans(
            loader=self._dataloader(context, self._dataset(context, context.val_datalist, False)[0], 1, 0),
            predictor_for=lambda modality: SlidingWindowPredictor(
                zyx(request["_train_patch_xyz"]),
                plan_settings.inference.sw_overlap,
                plan_settings.inference.sw_batch_size,
                tta_flip=False,
            ),
            network=self.validation_network(context.network),
            device=context.device,
            interval=int(request["val_interval"]),
            spacing_for=lambda modality: plan_settings.plans[modality].spacing,
            reference=self._champion_network(context),
        )
        validate.attach(context.trainer)
        ProgressLogger(self.model_name, every=self.app_config.active.train.log_every).attach(context.trainer)
        epsilon = self.app_config.retraining.promotion_epsilon
        late_meta = (lambda: {"rank_consistency_checks": consistency.summary()}) if consistency else None
        PublishVersion(self.store, self._version_meta(context), validate, epsilon, late_meta).attach(context.trainer)
        if context.multi_gpu:
            context.trainer.add_event_handler(Events.COMPLETED, end_together)  # after publishing: the ranks end as one

    def _champion_network(self, context: Context) -> Optional[torch.nn.Module]:
        """The serving version, to measure on the same validation cases (None if none, or another architecture)."""
        champion = self.store.champion()
        if champion is None or champion.meta.get("network") != self._network_spec():
            return None
        network = self.build(self.network_settings)
        network.load_state_dict(self.store.load_weights(champion))
        return self.validation_network(network.to(context.device).eval())

    def build(self, settings: NetworkSettings) -> torch.nn.Module:
        """A fresh network of this model's architecture."""
        return build_network(settings.network, settings.params)

    def _version_meta(self, context: Context) -> Dict[str, Any]:
        request = context.request
        return {
            "network": self._network_spec(),
            "parameters": count_parameters(context.network),
            "parent_version": request.get("_parent_version"),
            # a fine-tuned imported model names where its first weights came from
            "parent_imported": request.get("_parent_imported"),
            "preset": self.app_config.preset,
            "plans": {m: p.model_dump(mode="json") for m, p in self.app_config.active.plans.items()},
            "normalisation": {
                m: s.normalisation.model_dump(mode="json") for m, s in self.app_config.modalities.items()
            },
            "config_fingerprint": self.app_config.fingerprint(),
            "training_cases": [d["case_id"] for d in context.train_datalist],
            "validation_cases": [d["case_id"] for d in context.val_datalist],
            "validation_is_training_data": bool(request.get("_val_is_train")),
            "max_epochs": int(request["max_epochs"]),
            "iterations_per_epoch": int(request["iterations_per_epoch"]),
            "batch_size": int(request["batch_size"]),
            "train_patch_size": request.get("_train_patch_xyz"),
            "optimizer": self.app_config.active.train.optimizer,
            "loss": self.app_config.active.train.loss,
            "learning_rate": float(request["learning_rate"]),
            "augment": self._augment(request),
            "seed": int(request["seed"]),
            "data_seed": "seed + rank" if context.multi_gpu else "seed",
            "world_size": int(context.world_size) if context.multi_gpu else 1,
            "distributed_backend": request.get("distributed_backend", "nccl") if context.multi_gpu else None,
            "device": str(context.device),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(context.start_ts)),
            "software": {"torch": torch.__version__, "monai": _version("monai"), "monailabel": _version("monailabel")},
        }

    def _load_checkpoint(self, context, train_handlers):
        return None  # the parent version is loaded in network(); MONAI Label's own checkpoints are not used

    def stats(self) -> Dict[str, Any]:
        latest = self.store.latest()
        if latest is None:
            return {}
        meta = latest.meta
        champion = self.store.champion()
        return {
            "version": latest.number,
            "serving_version": champion.number if champion else None,
            "promotion": meta.get("promotion"),
            "published_at": meta.get("published_at"),
            "epochs": meta.get("epochs_completed"),
            "val_mean_dice": meta.get("val_mean_dice"),
            "val_dice": meta.get("val_dice"),
            "training_cases": len(meta.get("training_cases", [])),
        }

    def cleanup(self, request: Dict[str, Any]) -> None:
        shutil.rmtree(os.path.join(self._model_dir, request.get("name", "")), ignore_errors=True)

    def run_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """``request`` with the keys MONAI Label's ``BasicTrainTask.train`` reads (ours are batch_size and cache)
        and a fresh run folder name."""
        request = dict(request)
        request["name"] = f".runs/run_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
        batch = request.get("batch_size", self._config["batch_size"])
        request.update(
            {"train_batch_size": batch, "val_batch_size": 1, "dataset": "ours", "dataloader": "ThreadDataLoader"}
        )
        return request

    def __call__(self, request: Dict[str, Any], datastore):
        return super().__call__(self.run_request(request), datastore)


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:
        return "unknown"
