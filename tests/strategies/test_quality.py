"""The quality estimator on made cases with known answers: its features, its training and reasons, its versions, and
its retraining from the review store's finals (a worse challenger is not promoted)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from amoslabel.config import ActiveLearningSettings
from models.versions import ModelStore
from review import audit, pass_policy
from review.pass_policy import CALIBRATION_EVENT
from review.schema import AuditEvent, CaseScore
from review.store import utcnow
from strategies.anatomy import learn
from strategies.quality import FEATURES, QualityEstimator, feature_vector, organ_features
from strategies.quality_history import (
    QUALITY_MODEL,
    QualitySource,
    held_out,
    history_units,
    publish,
    retrain,
    unseen_by,
)
from strategies.queue_order import expected_failures_order
from tests.review.conftest import LABEL, make_team

LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY = 6, 1, 2, 3


def one_hot(label: np.ndarray, sharpness: float = 0.9) -> np.ndarray:
    """Class probabilities (16, z, y, x) that put ``sharpness`` on the label's class."""
    p = np.full((16,) + label.shape, (1 - sharpness) / 15, np.float32)
    for c in range(16):
        p[c][label == c] = sharpness
    return p


@pytest.fixture(scope="module")
def real_label():
    image = sitk.ReadImage(str(LABEL))
    return image, sitk.GetArrayFromImage(image)


def test_features_flag_a_missing_organ_a_swapped_side_and_disagreeing_networks(real_label):
    image, label = real_label
    anatomy = learn([(image, None)])
    prelabel = label.copy()
    prelabel[label == SPLEEN] = 0  # the spleen missed
    prelabel[label == RIGHT_KIDNEY], prelabel[label == LEFT_KIDNEY] = LEFT_KIDNEY, RIGHT_KIDNEY  # sides swapped
    other = label.copy()
    other[label == LIVER] = 0  # a second network that misses the liver
    features = organ_features(prelabel, [one_hot(label), one_hot(other)], image, anatomy, prior=one_hot(label))
    assert features[SPLEEN]["missing"] == 1 and features[SPLEEN]["volume_outside"] == 5.0
    assert features[SPLEEN]["prior_miss"] == 1.0
    assert features[LIVER]["missing"] == 0 and features[LIVER]["volume_outside"] == 0
    assert features[LIVER]["disagreement"] == 1.0 and features[SPLEEN]["disagreement"] == 0
    assert features[RIGHT_KIDNEY]["side_swapped"] == features[LEFT_KIDNEY]["side_swapped"] == 1
    assert features[LIVER]["side_swapped"] == 0 and features[LIVER]["prior_miss"] == 0
    assert set(features[LIVER]) == set(FEATURES)
    # an organ that neither the pre-label, the prior nor a network puts in the scan is not judged (outside its view)
    assert set(features) == {int(v) for v in np.unique(label) if v}


def test_outline_features_see_a_boundary_error_that_the_rest_miss(real_label):
    """A liver shifted by a few voxels is in its place, whole and of its size, but its outline is wrong: the soft Dice
    with the networks, the doubt band and the image's edges say so."""
    image, label = real_label
    scan = sitk.GetImageFromArray((label * 40.0).astype(np.float32))  # every organ its own intensity: edges at outlines
    scan.CopyInformation(image)
    networks = [one_hot(label), one_hot(np.roll(label, 1, axis=2))]  # two networks, a voxel apart
    shifted = label.copy()
    shifted[label == LIVER] = 0
    shifted[np.roll(label == LIVER, 4, axis=2)] = LIVER
    right = organ_features(label, networks, image, scan=scan)[LIVER]
    wrong = organ_features(shifted, networks, image, scan=scan)[LIVER]
    assert wrong["soft_miss"] > right["soft_miss"] + 0.05, (right, wrong)
    assert wrong["edge_miss"] > right["edge_miss"] + 0.1, (right, wrong)
    assert right["doubt_band"] == wrong["doubt_band"] > 0  # the networks' doubt does not depend on the pre-label
    missing = label.copy()
    missing[label == LIVER] = 0
    gone = organ_features(missing, networks, image, scan=scan)[LIVER]
    assert gone["soft_miss"] == 1.0 and gone["doubt_band"] == 5.0 and gone["edge_miss"] == 0.0


def made_units(n: int, seed: int = 0):
    """Organ units whose failure is known: a missing organ or disagreeing networks fail, the rest mostly pass."""
    rng = np.random.default_rng(seed)
    rows, failed = [], []
    for _ in range(n):
        organ = int(rng.integers(1, 16))
        missing = float(rng.random() < 0.15)
        disagreement = float(rng.random())
        features = {"missing": missing, "disagreement": disagreement, "entropy": float(rng.random())}
        rows.append(feature_vector(organ, features))
        failed.append(int(missing or disagreement > 0.8 or rng.random() < 0.03))
    return np.array(rows), np.array(failed)


def test_the_estimator_learns_the_known_answer_gives_reasons_and_round_trips_as_a_version(tmp_path):
    rows, failed = made_units(600)
    estimator = QualityEstimator.fit(rows, failed)
    test_rows, test_failed = made_units(300, seed=1)
    p = estimator.probabilities(test_rows)
    assert p[test_failed == 1].mean() > p[test_failed == 0].mean() + 0.4
    assert {name for name, _ in estimator.largest(2)} == {"missing", "disagreement"}
    predicted = estimator.predict({SPLEEN: {"missing": 1.0}, LIVER: {"disagreement": 0.05}})
    assert predicted[SPLEEN].p_fail > 0.8 and predicted[LIVER].p_fail < 0.2
    assert predicted[SPLEEN].reasons[0] == FEATURES["missing"] and predicted[LIVER].reasons == []
    # versions: plain tensors in model.pt (weights-only loading), and the same numbers back
    store = ModelStore(tmp_path, QUALITY_MODEL)
    version = publish(store, estimator, {"source": "test"}, True, "cold start")
    number, loaded = QualitySource(tmp_path).current()
    assert number == version.number == 1 and np.allclose(loaded.probabilities(test_rows), p)
    with pytest.raises(ValueError, match="both failing and passing"):
        QualityEstimator.fit(rows, np.zeros(len(rows), int))


def test_a_version_that_does_not_load_serves_nothing_and_says_why(tmp_path):
    store = ModelStore(tmp_path, QUALITY_MODEL)
    version = store.publish({"coef": torch.zeros(3)}, {"source": "broken"})
    store.set_champion(version.number, "test", "tests")
    source = QualitySource(tmp_path)
    assert source.current() is None and source.version() is None
    assert "does not load" in source.problem and "keeps its order" in source.problem
    # a version fitted before the features grew (10 of them then, and the 15 organs) says what replaces it
    older = {k: torch.zeros(25, dtype=torch.float64) for k in ("mean", "coef")} | {"scale": torch.ones(25)}
    version = store.publish(older | {"intercept": torch.tensor(0.0)}, {"source": "cold start, older"})
    store.set_champion(version.number, "test", "tests")
    assert source.current() is None
    assert "fitted on 25 terms" in source.problem and "the next retraining from the finals" in source.problem


CASES = [f"case{n:02d}" for n in range(16)]
REMOVED = {case: [1 + n % 15, 1 + (n * 7) % 15] for n, case in enumerate(CASES)}  # the organs each pre-label misses


def finals_with_history(team, removed=REMOVED):
    """Cases whose pre-labels miss known organs, corrected to the real label and approved to final, each with the
    features the scorer stored while it was open (``missing`` set for the organs its pre-label missed)."""
    wf, u = team.workflow, team.users
    present = [int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(LABEL)))) if v]
    for case, organs in removed.items():
        edited = sitk.GetArrayFromImage(sitk.ReadImage(str(LABEL)))
        edited[np.isin(edited, organs)] = 0
        image = sitk.GetImageFromArray(edited.astype(np.uint8))
        image.CopyInformation(sitk.ReadImage(str(LABEL)))
        prelabel = team.tmp / f"{case}-pre.nii.gz"
        sitk.WriteImage(image, str(prelabel))
        wf.record_prelabel(case, prelabel, "unet:v1", {})
        wf.save_version(u["j1"], case, LABEL, submit=True)
        for senior in ("s1", "s2", "s3"):
            wf.review(u[senior], case, [], default="approve")
        wf.finalise(case)
        features = {str(o): {"missing": float(o in organs), "entropy": 0.1} for o in present}
        with team.store.write() as s:
            s.add(CaseScore(case_id=case, computed=utcnow(), members={}, components={"organ_features": features}))
    return present


def test_the_estimator_retrains_from_the_finals_and_a_worse_challenger_is_not_promoted(tmp_path):
    team = make_team(tmp_path)
    present = finals_with_history(team)
    units = history_units(team.store)
    assert len(units) == len(CASES) * len(present)
    assert {(c, o) for c, o, _, failed in units if failed} == {
        (c, o) for c, organs in REMOVED.items() for o in organs if o in present
    }
    assert any(held_out(c) for c in CASES) and not all(held_out(c) for c in CASES)
    first = retrain(team.store, tmp_path / "models")
    assert first["published"] == 1 and first["promoted"], first
    # the serving version measured on the held-out history, for threshold: auto (review.pass_policy)
    with team.store.read() as s:
        calibration = [e for e in s.query(AuditEvent).filter(AuditEvent.action == CALIBRATION_EVENT)]
    held = [c for c in CASES if held_out(c)]
    assert len(calibration) == 1 and calibration[0].details["version"] == 1
    assert calibration[0].details["cases"] == len(held) and calibration[0].case_id is None
    assert sum(calibration[0].details["organs"]) == len(held) * len(present)
    assert sum(calibration[0].details["failing"]) == sum(o in present for c in held for o in set(REMOVED[c]))
    good = QualitySource(tmp_path / "models").current()[1]
    assert good.predict({SPLEEN: {"missing": 1.0}})[SPLEEN].p_fail > 0.5
    # the stored features of the training share lose their information: the challenger learns nothing from them
    with team.store.write() as s:
        for case in CASES:
            if not held_out(case):
                row = s.get(CaseScore, case)
                row.components = {"organ_features": {str(o): {"entropy": 0.1} for o in present}}
    second = retrain(team.store, tmp_path / "models")
    assert second["published"] == 2 and not second["promoted"], second
    assert "the champion stays" in second["why"]
    with team.store.read() as s:  # the champion that stays is the one measured
        newest = s.query(AuditEvent).filter(AuditEvent.action == CALIBRATION_EVENT).order_by(AuditEvent.id.desc())
        assert newest.first().details["version"] == 1
    store = ModelStore(tmp_path / "models", QUALITY_MODEL)
    assert store.champion().number == 1 and store.get(2).meta["source"] == "history"


def test_a_cold_start_that_keeps_serving_is_calibrated_on_the_whole_history(tmp_path):
    """The cold start learned from none of the team's cases: all of them are its calibration, not the held-out
    quarter a version of the history leaves itself (four times the failures for threshold: auto)."""
    team = make_team(tmp_path)
    present = finals_with_history(team)
    units = history_units(team.store)
    rows, failed = np.array([u[2] for u in units]), np.array([int(u[3]) for u in units])
    store = ModelStore(tmp_path / "models", QUALITY_MODEL)
    publish(store, QualityEstimator.fit(rows, failed), {"source": "cold start (simulated corrections)"}, True, "cold")
    with team.store.write() as s:  # the training share teaches a challenger nothing: the cold start stays
        for case in CASES:
            if not held_out(case):
                s.get(CaseScore, case).components = {"organ_features": {str(o): {"entropy": 0.1} for o in present}}
    result = retrain(team.store, tmp_path / "models")
    assert result["published"] == 2 and not result["promoted"], result
    assert result["calibrated_on"] == len(units) == len(CASES) * len(present)
    assert store.get(2).meta["training_cases"] == sorted(c for c in CASES if not held_out(c))
    with team.store.read() as s:
        calibration = pass_policy._newest_calibration(s)
    assert calibration["version"] == 1 and calibration["cases"] == len(CASES)
    assert sum(calibration["failing"]) == int(failed.sum()) and sum(calibration["organs"]) == len(units)
    # a version of the history, once it serves, is calibrated on the cases it did not learn from
    assert len(unseen_by(store.get(2).meta, units)) == len([u for u in units if held_out(u[0])])


def test_organs_the_pass_policy_let_through_alone_do_not_teach_the_estimator_and_audited_ones_count_more(tmp_path):
    """An organ one reader approved alone reached the final unseen by the others: left out of the history (its
    failure would be learnt as a success); an audited one counts for the organs it was drawn among."""
    team = make_team(tmp_path)
    present = finals_with_history(team)
    held = [c for c in CASES if held_out(c)]
    alone, audited = held[0], held[1]
    with team.store.write() as s:
        for case, details in (
            (alone, {"round": 1, "one_approval": {str(o): 1 for o in present}, "audited": [], "audit_fraction": 0.5}),
            (audited, {"round": 1, "one_approval": {}, "audited": sorted({*REMOVED[audited]}), "audit_fraction": 0.5}),
        ):
            audit.record(s, case, "system", pass_policy.POLICY_EVENT, "in_review", "in_review", "plan", details)
    assert retrain(team.store, tmp_path / "models")["published"] == 1
    with team.store.read() as s:
        calibration = pass_policy._newest_calibration(s)
    failing = {c: len(set(REMOVED[c]) & set(present)) for c in held}
    expected = sum(failing.values()) - failing[alone] + failing[audited]  # alone: 0; audited: counted twice (1 / 0.5)
    assert sum(calibration["failing"]) == expected
    assert sum(calibration["organs"]) == len(present) * (len(held) - 1) + failing[audited]


def test_the_queue_orders_by_expected_failures_and_falls_back_without_an_estimate(tmp_path):
    team = make_team(tmp_path)
    wf = team.workflow
    settings = ActiveLearningSettings()
    for case, expected, uncertainty in (("a", 0.2, 0.9), ("b", 2.5, 0.1)):
        wf.record_prelabel(case, LABEL, "unet:v1", {})
        quality = {"6": {"organ": 6, "name": "liver", "p_fail": 0.9, "reasons": [FEATURES["missing"]]}}
        with team.store.write() as s:
            s.add(
                CaseScore(
                    case_id=case,
                    computed=utcnow(),
                    members={},
                    uncertainty=uncertainty,
                    components={"expected_failures": expected, "quality": quality},
                )
            )
    ranked = expected_failures_order(team.store, settings, {})
    assert ranked["b"][0] > ranked["a"][0]
    assert ranked["b"][1] == f"expected failures 2.5: liver 90% ({FEATURES['missing']})"
    with team.store.write() as s:  # no estimate anywhere (no estimator serves): the weighted order, by uncertainty
        for case in ("a", "b"):
            s.get(CaseScore, case).components = {}
    ranked = expected_failures_order(team.store, settings, {})
    assert ranked["a"][0] > ranked["b"][0] and "uncertainty" in ranked["a"][1]
