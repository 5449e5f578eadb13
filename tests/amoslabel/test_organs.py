"""The organ table's display colours: one per organ, every pair clearly apart."""

from __future__ import annotations

import itertools

import numpy as np
from monailabel.datastore.utils.colors import GENERIC_ANATOMY_COLORS
from skimage.color import deltaE_cie76, deltaE_ciede2000, rgb2lab

from amoslabel.dicom.seg import rgb_to_dicom_lab
from amoslabel.organs import ORGAN_BY_ID, ORGANS

# The table's closest pair (liver and pancreas, both 3D Slicer's) is 17.9 apart in CIEDE2000 and 25.0 in CIE76;
# Slicer's own table had liver and stomach at 1.3 (3.7). CIEDE2000 10 is "clearly different" on a monitor.
MIN_CIEDE2000 = 15.0
MIN_CIE76 = 20.0
# What stays 3D Slicer's (GenericAnatomyColors, as monailabel transcribes it); amoslabel/organs.py says why the rest
# does not.
FROM_SLICER = {1: "spleen", 4: "gallbladder", 6: "liver", 9: "vein", 10: "pancreas", 13: "duodenum"}


def _lab(rgb) -> np.ndarray:
    return rgb2lab(np.asarray(rgb, dtype=float)[None, None] / 255.0)[0, 0]


def test_every_pair_of_organ_colours_is_clearly_apart():
    labs = {o.id: _lab(o.rgb) for o in ORGANS}
    closest = min(
        (float(deltaE_ciede2000(labs[a], labs[b])), ORGAN_BY_ID[a].name, ORGAN_BY_ID[b].name)
        for a, b in itertools.combinations(labs, 2)
    )
    assert closest[0] >= MIN_CIEDE2000, closest
    # and in CIE76, with the Lab conversion the SEG writer uses (undoing DICOM's 0..65535 scaling)
    dicom = {o.id: np.asarray(rgb_to_dicom_lab(o.rgb), dtype=float) for o in ORGANS}
    own = {
        k: np.array([v[0] * 100, v[1] * 255 - 128 * 65535, v[2] * 255 - 128 * 65535]) / 65535 for k, v in dicom.items()
    }
    assert all(np.abs(own[k] - labs[k]).max() < 0.05 for k in labs)  # the two conversions agree
    assert min(float(deltaE_cie76(own[a], own[b])) for a, b in itertools.combinations(own, 2)) >= MIN_CIE76


def test_organ_colours_are_valid_and_start_from_slicer():
    assert [o.id for o in ORGANS] == list(range(1, 16))
    for o in ORGANS:
        assert len(o.rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in o.rgb), o
        assert _lab(o.rgb)[0] >= 40, o  # dark colours vanish over a CT's dark soft tissue
    for organ_id, slicer_name in FROM_SLICER.items():
        assert ORGAN_BY_ID[organ_id].rgb == GENERIC_ANATOMY_COLORS[slicer_name]
    # Slicer's table has liver and stomach (and bladder and prostate) nearly alike: they are not here
    assert GENERIC_ANATOMY_COLORS["stomach"] != ORGAN_BY_ID[7].rgb
