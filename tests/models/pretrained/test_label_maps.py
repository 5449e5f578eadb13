"""The shipped label maps against the installed ``totalsegmentator`` package's own class tables, and applying a map.

The package is only read for its tables (``totalsegmentator.map_to_binary``); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.errors import InputError
from amoslabel.organs import NUM_CLASSES, ORGANS
from models.pretrained.label_maps import LabelMap


def test_the_totalsegmentator_map_names_only_classes_of_its_total_task():
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    total = {name: index for index, name in class_map["total"].items()}
    labels = LabelMap.load("totalsegmentator_total")
    labels.check(total)  # raises on a name the package does not have
    assert set(labels.organs) == {o.id for o in ORGANS}  # all 15 mapped (15 by sex)
    chosen, empty = labels.resolve(total, "female")
    assert 15 not in chosen and "uterus" in empty[15] and len(chosen) == 14
    male, _ = labels.resolve(total, "male")
    assert class_map["total"][male[15]] == "prostate"
    # the weights are five nnU-Net parts: every mapped class lies in one of them (organs, and cardiac for the vessels)
    parts = {part: set(table.values()) for part, table in class_map_5_parts.items()}
    homes = {name: [p for p, names in parts.items() if name in names] for name in labels.class_names()}
    assert all(len(h) == 1 for h in homes.values()), homes
    assert {h[0] for h in homes.values()} == {"class_map_part_organs", "class_map_part_cardiac"}


def test_the_totalsegmentator_mr_map_names_only_classes_of_its_total_mr_task_all_in_its_organ_part():
    from totalsegmentator.map_to_binary import class_map, class_map_parts_mr

    total_mr = {name: index for index, name in class_map["total_mr"].items()}
    labels = LabelMap.load("totalsegmentator_total_mr")
    labels.check(total_mr)  # raises on a name the package does not have
    assert set(labels.organs) == {o.id for o in ORGANS}
    chosen, empty = labels.resolve(total_mr, "female")
    assert 15 not in chosen and "uterus" in empty[15] and len(chosen) == 14
    male, _ = labels.resolve(total_mr, "male")
    assert class_map["total_mr"][male[15]] == "prostate"
    # one part holds every mapped class: Dataset850 (organs) is the whole import
    organs_part = set(class_map_parts_mr["class_map_part_organs"].values())
    assert set(labels.class_names()) <= organs_part
    # the combined table numbers the organ part's classes as the part does: the part imports with this map as is
    assert {n: i for i, n in class_map_parts_mr["class_map_part_organs"].items()} == {
        n: i for n, i in total_mr.items() if n in organs_part
    }


def test_the_wholebody_bundle_map_names_totalsegmentator_v1_classes():
    from totalsegmentator.map_to_binary import class_map

    v1 = {name: index for index, name in class_map["total_v1"].items()}
    labels = LabelMap.load("monai_wholebody_ct")
    labels.check(v1)
    chosen, empty = labels.resolve(v1, "male")
    assert len(chosen) == 14 and 15 in empty and "neither" in empty[15]


def test_a_map_naming_an_unknown_class_or_organ_is_refused(tmp_path):
    labels = LabelMap.load("monai_wholebody_ct")
    with pytest.raises(InputError, match="does not have"):
        labels.check({"spleen": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("organs: {kidney: kidney_right}\n")
    with pytest.raises(InputError, match="not an AMOS organ"):
        LabelMap.load(bad)
    with pytest.raises(InputError, match="neither a file nor a shipped map"):
        LabelMap.load("no_such_map")


def test_applying_a_map_keeps_only_mapped_classes_and_probabilities_stay_normalised():
    labels = LabelMap.amos()
    classes = {f"c{i}": i for i in range(1, 20)}
    chosen = {1: 7, 6: 3}  # AMOS spleen is model class 7, liver class 3
    model_out = np.array([[0, 3, 7, 12]], np.int64)
    assert labels.apply(model_out, chosen).tolist() == [[0, 6, 1, 0]]
    probs = np.random.default_rng(0).dirichlet(np.ones(len(classes) + 1), size=(4,)).T.astype(np.float32)
    amos = labels.apply_probabilities(probs, chosen)
    assert amos.shape == (NUM_CLASSES, 4)
    assert np.allclose(amos.sum(0), 1.0, atol=1e-5) and np.allclose(amos[6], probs[3])
