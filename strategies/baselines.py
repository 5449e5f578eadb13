"""Baseline selection strategies (MONAI Label strategies, so Slicer's Next Sample can use them).

MONAI Label ships ``random`` and ``first``; this adds **foreground-aware random**: random among unlabelled cases,
weighted by the size of the body in the scan, the baseline nnActive (2025) found no method reliably beats.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk
from monailabel.interfaces.tasks.strategy import Strategy

from strategies.anatomy import air_threshold

log = logging.getLogger(__name__)


def foreground_ml(path: str) -> float:
    """Body volume of a scan in mL, from a subsampled read (air below -500 HU for CT; a relative cut for MRI)."""
    scan = sitk.ReadImage(path)
    array = sitk.GetArrayViewFromImage(scan)[::2, ::2, ::2]
    return float((array > air_threshold(array)).sum()) * float(np.prod(scan.GetSpacing())) * 8 / 1000.0


class ForegroundRandom(Strategy):
    """Random among unlabelled images, each weighted by its body volume (remembered per image)."""

    def __init__(self, seed: Optional[int] = None):
        super().__init__("Random, weighted by body volume (foreground-aware random)")
        self._volumes: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def __call__(self, request: Dict[str, Any], datastore) -> Optional[Dict[str, Any]]:
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        weights = [self._volume(datastore, image_id) for image_id in images]
        if sum(weights) <= 0:
            weights = [1.0] * len(images)
        with self._lock:
            image_id = self._random.choices(images, weights=weights, k=1)[0]
        return {"id": image_id, "weight": weights[images.index(image_id)]}

    def _volume(self, datastore, image_id: str) -> float:
        with self._lock:
            if image_id in self._volumes:
                return self._volumes[image_id]
        try:
            volume = foreground_ml(datastore.get_image_uri(image_id))
        except Exception as error:  # an unreadable scan is simply not preferred
            log.warning("foreground of %s unreadable: %s", image_id, error)
            volume = 0.0
        with self._lock:
            self._volumes[image_id] = volume
        return volume
