"""The 15 AMOS organs: fixed ids, names and short codes.

The ids are part of the data format (every label map, every stored review uses them), so they are code, not
configuration: ``apps.yaml`` must repeat exactly this table, and start-up stops if it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List


@dataclass(frozen=True)
class Organ:
    """One AMOS organ.

    Attributes:
        id: the voxel value in a label map (1-15; 0 is background).
        name: the name in the AMOS table, used in configuration and in MONAI Label's label table (3D Slicer
            colours segments by these names).
        code: the AMOS paper's three-letter column header.
    """

    id: int
    name: str
    code: str


ORGANS: List[Organ] = [
    Organ(1, "spleen", "SPL"),
    Organ(2, "right kidney", "RKI"),
    Organ(3, "left kidney", "LKI"),
    Organ(4, "gallbladder", "GBL"),
    Organ(5, "esophagus", "ESO"),
    Organ(6, "liver", "LIV"),
    Organ(7, "stomach", "STO"),
    Organ(8, "aorta", "AOR"),
    Organ(9, "inferior vena cava", "IVC"),
    Organ(10, "pancreas", "PAN"),
    Organ(11, "right adrenal gland", "RAG"),
    Organ(12, "left adrenal gland", "LAG"),
    Organ(13, "duodenum", "DUO"),
    Organ(14, "bladder", "BLA"),
    Organ(15, "prostate/uterus", "PRO/UTE"),
]

#: Number of network output channels: background plus the 15 organs.
NUM_CLASSES = len(ORGANS) + 1
MAX_LABEL_ID = len(ORGANS)

ORGAN_BY_ID: Dict[int, Organ] = {o.id: o for o in ORGANS}


def label_table() -> Dict[str, int]:
    """The ``{name: id}`` table MONAI Label publishes in ``/info`` (background excluded, as its apps do)."""
    return {o.name: o.id for o in ORGANS}
