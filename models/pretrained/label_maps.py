"""Which class of a pretrained model is which AMOS organ, and applying that to its output.

A label map is a small YAML file (see ``models/pretrained/label_maps/``) keyed by the AMOS organ names of
:mod:`amoslabel.organs`; each value is the model's own class name, as its ``dataset.json`` (nnU-Net) or its
``metadata.json`` channel table (MONAI bundle) writes it. Label 15 is sex-specific (prostate or uterus), so its value
may be ``{male: <class>, female: <class or null>}``: a model without a uterus class leaves label 15 empty for a
female patient, and the pre-label's metadata says so. With the sex unknown, the male class is used when the map has
no ``any`` entry (a prostate is only found where there is one).

    organs:
      spleen: spleen
      right kidney: kidney_right
      prostate/uterus: {male: prostate, female: null}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import yaml

from amoslabel.errors import InputError
from amoslabel.organs import NUM_CLASSES, ORGANS

SHIPPED = Path(__file__).resolve().parent / "label_maps"
SEXES = ("male", "female", "any")
#: the name the built-in map of a model trained on AMOS ids goes by (``--label-map amos``)
AMOS_MAP = "amos"


def amos_class_name(organ_name: str) -> str:
    """An AMOS organ name as a model class name (nnU-Net's ``dataset.json`` has no spaces): ``right_kidney``."""
    return organ_name.replace(" ", "_").replace("/", "_")


@dataclass(frozen=True)
class LabelMap:
    """AMOS id -> the model class name per patient sex (``any`` applies whatever the sex)."""

    name: str
    organs: Dict[int, Dict[str, Optional[str]]]
    description: str = ""
    notes: Dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: str | Path) -> "LabelMap":
        """A shipped map by name (``totalsegmentator_total``, ``amos``, ...) or a YAML file.

        Raises:
            InputError: no such map, not a mapping, an unknown organ name, or a bad value.
        """
        if str(spec) == AMOS_MAP:
            return cls.amos()
        path = Path(spec)
        if not path.is_file() and (SHIPPED / f"{spec}.yaml").is_file():
            path = SHIPPED / f"{spec}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in SHIPPED.glob("*.yaml")) + [AMOS_MAP]
            raise InputError(f"label map {str(spec)[:200]!r} is neither a file nor a shipped map ({shipped})")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"label map {path.name}: not valid YAML ({exc})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("organs"), dict):
            raise InputError(f"label map {path.name}: needs an 'organs' mapping of AMOS organ name -> model class")
        by_name = {o.name: o.id for o in ORGANS}
        organs: Dict[int, Dict[str, Optional[str]]] = {}
        for organ, value in raw["organs"].items():
            if organ not in by_name:
                raise InputError(f"label map {path.name}: {organ!r} is not an AMOS organ; organs: {list(by_name)}")
            if isinstance(value, str):
                value = {"any": value}
            if not isinstance(value, dict) or set(value) - set(SEXES):
                raise InputError(f"label map {path.name}: {organ!r} must map to a class name or {{male:, female:}}")
            organs[by_name[organ]] = {sex: (str(v) if v is not None else None) for sex, v in value.items()}
        notes = {by_name[k]: str(v) for k, v in (raw.get("notes") or {}).items() if k in by_name}
        return cls(str(raw.get("name") or path.stem), organs, str(raw.get("description") or ""), notes)

    @classmethod
    def amos(cls) -> "LabelMap":
        """The map of a model trained on AMOS ids, its classes named as :func:`amos_class_name` writes them."""
        return cls(AMOS_MAP, {o.id: {"any": amos_class_name(o.name)} for o in ORGANS}, "a model trained on AMOS ids")

    def class_names(self) -> List[str]:
        """Every model class the map names."""
        return sorted({v for by_sex in self.organs.values() for v in by_sex.values() if v is not None})

    def check(self, model_classes: Mapping[str, int]) -> None:
        """Refuse a map that names a class the model does not have.

        Raises:
            InputError: naming the unknown classes and a few of the model's.
        """
        unknown = [name for name in self.class_names() if name not in model_classes]
        if unknown:
            known = sorted(model_classes, key=lambda n: model_classes[n])
            raise InputError(
                f"label map {self.name!r} names class(es) {unknown} that the model does not have; its classes: "
                f"{known[:40]}{' ...' if len(known) > 40 else ''}"
            )

    def resolve(self, model_classes: Mapping[str, int], sex: Optional[str]) -> Tuple[Dict[int, int], Dict[int, str]]:
        """``({AMOS id: model class index}, {AMOS id: why it stays empty})`` for a patient of ``sex``."""
        sex = (sex or "").strip().lower()
        sex = {"m": "male", "f": "female"}.get(sex, sex)
        chosen: Dict[int, int] = {}
        empty: Dict[int, str] = {}
        for amos_id, by_sex in sorted(self.organs.items()):
            if "any" in by_sex:
                name = by_sex["any"]
            elif sex in ("male", "female"):
                name = by_sex.get(sex)
            else:
                name = by_sex.get("male")
            if name is None:
                empty[amos_id] = self.notes.get(amos_id) or f"the model has no class for label {amos_id} ({sex})"
            else:
                chosen[amos_id] = int(model_classes[name])
        for organ in ORGANS:
            if organ.id not in self.organs:
                empty[organ.id] = self.notes.get(organ.id) or f"the model has no class for {organ.name}"
        return chosen, empty

    def apply(self, classes: np.ndarray, chosen: Mapping[int, int]) -> np.ndarray:
        """The model's class map as an AMOS label map (uint8); classes the map does not name become background."""
        lookup = np.zeros(max(int(classes.max(initial=0)), max(chosen.values(), default=0)) + 1, np.uint8)
        for amos_id, index in chosen.items():
            lookup[index] = amos_id
        return lookup[classes.astype(np.int64, copy=False)]

    def apply_probabilities(self, probabilities: np.ndarray, chosen: Mapping[int, int]) -> np.ndarray:
        """(K, ...) model class probabilities -> (16, ...) AMOS probabilities; unmapped classes count as background."""
        out = np.zeros((NUM_CLASSES,) + probabilities.shape[1:], np.float32)
        for amos_id, index in chosen.items():
            out[amos_id] = probabilities[index]
        out[0] = np.clip(1.0 - out[1:].sum(axis=0), 0.0, 1.0)
        return out

    def as_record(self, chosen: Mapping[int, int], empty: Mapping[int, str]) -> Dict[str, object]:
        """What a pre-label's metadata says about the map."""
        return {
            "name": self.name,
            "classes": {str(k): v for k, v in sorted(chosen.items())},
            "empty": {str(k): v for k, v in sorted(empty.items())},
        }

    def as_json(self) -> Dict[str, object]:
        """The whole map, as a version's metadata keeps it (so the version is self-contained)."""
        names = {o.id: o.name for o in ORGANS}
        return {
            "name": self.name,
            "description": self.description,
            "organs": {names[k]: v for k, v in sorted(self.organs.items())},
            "notes": {names[k]: v for k, v in sorted(self.notes.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "LabelMap":
        by_name = {o.name: o.id for o in ORGANS}
        organs = {by_name[k]: dict(v) for k, v in dict(data["organs"]).items()}
        notes = {by_name[k]: str(v) for k, v in dict(data.get("notes") or {}).items()}
        return cls(str(data["name"]), organs, str(data.get("description") or ""), notes)
