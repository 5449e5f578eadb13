"""The 15 AMOS organs: fixed ids, names, short codes and display colours.

The ids are part of the data format (every label map, every stored review uses them), so they are code, not
configuration: ``apps.yaml`` must repeat exactly this table, and start-up stops if it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Organ:
    """One AMOS organ.

    Attributes:
        id: the voxel value in a label map (1-15; 0 is background).
        name: the name in the AMOS table, used in configuration and in MONAI Label's label table (3D Slicer
            colours segments by these names).
        code: the AMOS paper's three-letter column header.
        nsd_tolerance_mm: surface tolerance of the normalised surface Dice. FLARE22's values where FLARE22 has the
            organ; bladder 3 mm (a fluid-filled organ with a sharp wall, like the kidneys) and prostate/uterus 5 mm
            (a low-contrast boundary on CT with large reader variability, like the pancreas) are our choice.
        rgb: the display colour (sRGB 0-255) everywhere we colour the organ: the DICOM SEG's
            RecommendedDisplayCIELabValue, the slice viewer, the previews and their legend.
    """

    id: int
    name: str
    code: str
    nsd_tolerance_mm: float
    rgb: Tuple[int, int, int]


# Colours: 3D Slicer's GenericAnatomyColors where they are distinct enough (spleen, gallbladder, liver, pancreas,
# duodenum, and "vein" for the inferior vena cava), changed elsewhere because Slicer's table was made for naming
# structures, not for telling 15 neighbours apart at a glance: its liver and stomach are the same salmon (CIEDE2000
# 1.3), bladder and prostate nearly so (2.4), and it gives both sides of a paired organ one colour. The replacements
# keep conventions where there is one (aorta arterial red, bladder urine yellow) and are otherwise picked apart in
# CIELab; tests/amoslabel/test_organs.py holds every pair at least 15 apart (the table's minimum is 17.9, liver and
# pancreas, both Slicer's).
ORGANS: List[Organ] = [
    Organ(1, "spleen", "SPL", 3.0, (157, 108, 162)),
    Organ(2, "right kidney", "RKI", 3.0, (50, 205, 90)),
    Organ(3, "left kidney", "LKI", 3.0, (0, 205, 205)),
    Organ(4, "gallbladder", "GBL", 2.0, (139, 150, 98)),
    Organ(5, "esophagus", "ESO", 3.0, (20, 120, 110)),
    Organ(6, "liver", "LIV", 5.0, (221, 130, 101)),
    Organ(7, "stomach", "STO", 5.0, (190, 190, 255)),
    Organ(8, "aorta", "AOR", 2.0, (205, 25, 55)),
    Organ(9, "inferior vena cava", "IVC", 2.0, (0, 151, 206)),
    Organ(10, "pancreas", "PAN", 5.0, (249, 180, 111)),
    Organ(11, "right adrenal gland", "RAG", 2.0, (160, 110, 20)),
    Organ(12, "left adrenal gland", "LAG", 2.0, (255, 160, 200)),
    Organ(13, "duodenum", "DUO", 7.0, (255, 253, 229)),
    Organ(14, "bladder", "BLA", 3.0, (240, 220, 70)),
    Organ(15, "prostate/uterus", "PRO/UTE", 5.0, (70, 90, 230)),
]

#: Number of network output channels: background plus the 15 organs.
NUM_CLASSES = len(ORGANS) + 1
MAX_LABEL_ID = len(ORGANS)

ORGAN_BY_ID: Dict[int, Organ] = {o.id: o for o in ORGANS}


def label_table() -> Dict[str, int]:
    """The ``{name: id}`` table MONAI Label publishes in ``/info`` (background excluded, as its apps do)."""
    return {o.name: o.id for o in ORGANS}
