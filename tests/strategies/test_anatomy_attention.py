"""Anatomical priors and attention maps on the real AMOS label maps (and the real CT with its label)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from strategies.anatomy import AnatomyPrior, learn, measure, violations
from strategies.attention import attention, heat_image
from strategies.diversity import diversity_scores, k_center_greedy

KIDNEYS = (2, 3)


@pytest.fixture(scope="module")
def amos_labels(shared):
    return [sitk.ReadImage(str(shared / "labels" / f"amos_{n}_label.nii.gz")) for n in ("0013", "0024")]


@pytest.fixture(scope="module")
def prior(amos_labels) -> AnatomyPrior:
    return learn([(label, None) for label in amos_labels])


def _relabel(label: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(label)
    return out


def test_a_final_label_breaks_none_of_its_own_priors(amos_labels, prior):
    for label in amos_labels:
        found, flagged = violations(prior, label)
        assert found == [] and not flagged.any()
    assert prior.organs[6].volume_ml[0] > 500  # livers are large: the volumes are in mL on the real spacing


def test_swapped_kidneys_a_stray_piece_and_a_shrunken_liver_are_flagged(amos_labels, prior, tmp_path):
    label = amos_labels[0]
    array = sitk.GetArrayFromImage(label)
    swapped = array.copy()
    swapped[array == 2], swapped[array == 3] = 3, 2
    found, flagged = violations(prior, _relabel(label, swapped))
    assert {(v.organ, v.check) for v in found} >= {(2, "side"), (3, "side")}
    assert flagged[np.isin(swapped, KIDNEYS)].all() and not flagged[swapped == 6].any()

    stray = array.copy()
    z, y, x = (n // 10 for n in array.shape)  # a cube of "spleen" in a far corner: an extra piece, far away
    stray[z : z + 6, y : y + 12, x : x + 12] = 1
    checks = {v.check for v in violations(prior, _relabel(label, stray))[0] if v.organ == 1}
    assert "components" in checks

    shrunk = array.copy()
    liver = np.argwhere(array == 6)
    keep = liver[: len(liver) // 10]  # a tenth of the liver left
    shrunk[array == 6] = 0
    shrunk[tuple(keep.T)] = 6
    assert any(v.organ == 6 and v.check == "volume" for v in violations(prior, _relabel(label, shrunk))[0])

    prior.save(tmp_path / "prior.json")
    assert AnatomyPrior.load(tmp_path / "prior.json") == prior


def test_the_body_frame_comes_from_the_scan_when_there_is_one(shared):
    scan = sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct.nii.gz"))
    label = sitk.ReadImage(str(shared / "ct" / "ts_abdomen_ct_label.nii.gz"))
    with_scan, without = measure(label, scan), measure(label, None)
    assert with_scan[6].volume_ml == without[6].volume_ml
    assert with_scan[6].centroid_in_body != without[6].centroid_in_body
    assert all(0 <= c <= 1 for m in with_scan.values() for c in m.centroid_in_body)


def _soft(label: np.ndarray, sharpness: float = 0.999) -> np.ndarray:
    """A (16, z, y, x) softmax-like map, confident (``sharpness``) in the label's organ, as a trained net is."""
    probs = np.full((16,) + label.shape, (1 - sharpness) / 15, np.float32)
    np.put_along_axis(probs, label[None].astype(np.int64), sharpness, axis=0)
    return probs


def test_attention_marks_where_models_disagree_and_where_the_prior_breaks(amos_labels, prior):
    reference = sitk.Shrink(amos_labels[0], [4, 4, 2])  # attention runs on the models' coarse grid
    label = sitk.GetArrayFromImage(reference)
    agreeing = attention([_soft(label)] * 3, reference, prior)
    assert agreeing.per_criterion_ml["disagreement"] == 0 and agreeing.per_criterion_ml["overlap"] == 0

    moved = label.copy()
    moved[label == 10] = 0  # the third model misses the pancreas and calls part of it duodenum
    moved[(label == 10) & (np.arange(label.shape[2])[None, None, :] % 2 == 0)] = 13
    result = attention([_soft(label), _soft(label), _soft(moved)], reference, prior)
    assert result.per_organ_ml["pancreas"] > 0 and result.per_criterion_ml["overlap"] > 0
    assert result.score_ml > agreeing.score_ml
    assert result.heat[label == 10].mean() > result.heat[label == 6].mean()
    assert result.heat.max() <= 4  # criteria count of the most-flagged organ
    # graded: the count, and within it the networks' doubt; saved as levels 3 * count + doubt band (0-14)
    graded, levels = result.graded(), result.levels()
    assert np.array_equal(np.floor(graded), result.heat) and graded[label == 10].mean() > graded[label == 6].mean()
    assert levels.dtype == np.uint8 and levels.max() <= 14 and np.array_equal(levels // 3, result.heat)
    doubtful = result.doubt > 0.3
    assert doubtful.any() and (levels[doubtful] % 3 == 2).all() and (levels[result.doubt < 0.05] % 3 == 0).all()
    assert "pancreas" in result.reason() or "duodenum" in result.reason()

    swapped = label.copy()
    swapped[label == 2], swapped[label == 3] = 3, 2
    flagged = attention([_soft(swapped)] * 3, reference, prior)
    assert {v.check for v in flagged.violations} >= {"side"} and flagged.per_criterion_ml["prior"] > 0
    image = heat_image(flagged, reference)
    assert image.GetSize() == reference.GetSize() and image.GetSpacing() == reference.GetSpacing()
    assert np.array_equal(sitk.GetArrayFromImage(image), flagged.levels())


def test_k_center_greedy_reaches_for_the_unlike_cases():
    pool = {f"ct{i}": [0.0, 0.8 + 0.01 * i, 100 + i] for i in range(10)}
    pool["mri"] = [1.0, 1.5, 400]
    pool["thick"] = [0.0, 5.0, 110]
    picked = k_center_greedy(pool, labelled=["ct0"], k=2)
    assert set(picked) == {"mri", "thick"}
    scores = diversity_scores(pool, ["ct0"])
    assert "ct0" not in scores and scores["mri"] > scores["ct5"]
    assert len(k_center_greedy(pool, [], 3, first="ct3")) == 3
