"""ClaSP-style selection on hand-made probability maps, where the right ranking is known."""

from __future__ import annotations

import numpy as np
import pytest

from amoslabel.organs import NUM_CLASSES
from strategies.clasp import ClaspSelector, NoiseSchedule, class_entropies, organ_case_counts
from strategies.scoring import predictive_entropy
from strategies.members import MemberOutput

LIVER, LEFT_ADRENAL, SPLEEN = 6, 12, 1
SHAPE = (8, 16, 16)


def confident(label: np.ndarray, certainty: float = 0.99) -> np.ndarray:
    """(C, z, y, x) probabilities that put ``certainty`` on ``label`` and spread the rest."""
    p = np.full((NUM_CLASSES,) + label.shape, (1 - certainty) / (NUM_CLASSES - 1), np.float32)
    np.put_along_axis(p, label[None].astype(np.int64), certainty, axis=0)
    return p


def case(liver_doubt: bool = False, adrenal_doubt: bool = False) -> np.ndarray:
    """A liver block and a two-voxel left adrenal gland; doubt splits an organ's voxels 50/50 with background."""
    label = np.zeros(SHAPE, np.int64)
    label[1:7, 2:10, 2:10] = LIVER
    label[3, 12, 12:14] = LEFT_ADRENAL
    p = confident(label)
    for organ, doubt in ((LIVER, liver_doubt), (LEFT_ADRENAL, adrenal_doubt)):
        if doubt:
            region = label == organ
            p[:, region] = 0.0
            p[organ, region] = 0.55
            p[0, region] = 0.45
    return p


def test_each_organ_gets_its_own_entropy_where_it_is_in_play():
    entropies = class_entropies(case(adrenal_doubt=True))
    assert set(entropies) == {LIVER, LEFT_ADRENAL}  # no other organ is in play anywhere
    assert entropies[LEFT_ADRENAL] > 0.9 > 0.2 > entropies[LIVER]


def test_a_small_organ_in_doubt_is_found_where_plain_entropy_ranks_a_big_one_first():
    maps = {"liver_doubt": case(liver_doubt=True), "adrenal_doubt": case(adrenal_doubt=True), "sure": case()}
    plain = sorted(maps, key=lambda c: -predictive_entropy([MemberOutput("m", maps[c])]))
    assert plain == ["liver_doubt", "adrenal_doubt", "sure"]
    entropies = {c: class_entropies(p) for c, p in maps.items()}
    # every labelled case has a liver, none has a left adrenal gland yet: the adrenal's turn comes first
    labelled = {organ: 3 for organ in range(1, NUM_CLASSES)} | {LEFT_ADRENAL: 0}
    selector = ClaspSelector(NoiseSchedule(start=0.0, end=0.0))
    picks = selector.select(entropies, 2, labelled_fraction=0.3, labelled_cases=labelled).picks
    assert [(p.case, p.organ) for p in picks] == [("adrenal_doubt", LEFT_ADRENAL), ("liver_doubt", LIVER)]
    assert all(p.noise == 0 for p in picks)


def test_the_organs_take_turns_and_a_later_query_continues_the_turn():
    selector = ClaspSelector()
    assert selector.organ_order({})[:3] == [1, 2, 3]
    assert selector.organ_order({}, offset=4)[:3] == [5, 6, 7]
    assert selector.organ_order({o: 1 for o in range(1, 16)} | {14: 0}, offset=4)[:2] == [14, 5]
    # three cases, each uncertain about one organ only: three picks serve three organs, one case each
    entropies = {"a": {1: 0.5}, "b": {2: 0.5}, "c": {3: 0.5}}
    picks = ClaspSelector(NoiseSchedule(0.0, 0.0)).select(entropies, 3, 0.0, {}).picks
    assert sorted((p.case, p.organ) for p in picks) == [("a", 1), ("b", 2), ("c", 3)]


def test_the_noise_decays_with_the_labelled_share():
    schedule = NoiseSchedule(start=1.0, end=0.1, until=0.5)
    assert schedule.scale(0.0) == 1.0 and schedule.scale(0.5) == schedule.scale(0.9) == pytest.approx(0.1)
    assert schedule.scale(0.25) == pytest.approx(0.55)


def test_power_noise_draws_cases_in_proportion_to_their_entropy_and_replays_by_seed():
    entropies = {"high": {LIVER: 0.6}, "low": {LIVER: 0.2}}
    selector = ClaspSelector(NoiseSchedule(start=1.0, end=1.0))  # beta = 1: P(pick) = entropy / sum
    first = [selector.select(entropies, 1, 0.0, {}, seed=s).cases[0] for s in range(3000)]
    assert first.count("high") / len(first) == pytest.approx(0.75, abs=0.03)
    again = selector.select(entropies, 1, 0.0, {}, seed=17)
    assert again.as_json() == selector.select(entropies, 1, 0.0, {}, seed=17).as_json()
    assert again.as_json()["picks"][0]["noise"] != 0
    # with the noise scheduled away, the higher entropy always wins
    late = ClaspSelector(NoiseSchedule(start=1.0, end=0.0, until=0.5))
    assert {late.select(entropies, 1, 0.6, {}, seed=s).cases[0] for s in range(50)} == {"high"}


def test_organ_case_counts_count_cases_not_voxels():
    a = np.zeros(SHAPE, np.int64)
    a[0, 0, :5] = LIVER
    b = np.zeros(SHAPE, np.int64)
    b[0, 0, 0] = LIVER
    b[1, 1, 1] = SPLEEN
    counts = organ_case_counts([a, b])
    assert counts[LIVER] == 2 and counts[SPLEEN] == 1 and counts[LEFT_ADRENAL] == 0
