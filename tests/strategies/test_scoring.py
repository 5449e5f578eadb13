"""Background scoring on the real small CT and MRI: a (random-weight) UNet version and the atlas prior as members,
scores kept in the review store, stale after a new model version, queue priorities with their reasons, and the
score-reading Next Sample strategies."""

from __future__ import annotations

import threading

import pytest
import SimpleITK as sitk

from amoslabel.config import load_config
from models.infer_task import SegmentationInferTask
from models.networks import build_network
from models.prior_task import AtlasCache
from models.versions import ModelStore
from review.queries import queue
from review.schema import CaseScore
from strategies.members import case_members
from strategies.queue_order import apply_priorities
from strategies.scoring import CaseScorer, ScoringWorker, scores
from strategies.clasp import ClaspSelector, NoiseSchedule
from strategies.selection import ClaspStrategy, score_strategies
from tests.review.conftest import LABEL, make_team

CASES = {"ct_small": ("ct/ts_abdomen_ct_small.nii.gz", "CT"), "mr_small": ("mr/ts_abdomen_mr_small.nii.gz", "MR")}


class FakeDatastore:
    """Only what the strategies ask of a datastore: which images have no final label (a stand-in, not a mock of
    behaviour under test: the strategies' choice among these ids is what is tested)."""

    def __init__(self, ids):
        self.ids = list(ids)

    def get_unlabeled_images(self):
        return list(self.ids)


@pytest.fixture(scope="module")
def setup(shared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scoring")
    config = load_config(overrides={"preset": "cpu-fast"})
    task = SegmentationInferTask("unet", config, ModelStore(tmp / "models", "unet"))
    settings = config.active.networks["unet"]
    task.store.publish(build_network(settings.network, settings.params).state_dict(), {"parent_version": None})
    atlas = AtlasCache(config, lambda: None, tmp / "prior")
    team = make_team(tmp)
    for case_id in CASES:
        team.workflow.register_case(case_id)
    saved = {}
    scorer = CaseScorer(
        team.store,
        config.active_learning,
        lambda path, modality: case_members(path, modality.lower().replace("mr", "mri"), {"unet": task}, atlas.get()),
        lambda case_id: str(shared / CASES[case_id][0]),
        lambda case_id: CASES[case_id][1],
        lambda case_id, image: saved.__setitem__(case_id, image),
    )
    return config, task, team, scorer, saved


def test_scores_are_computed_stored_and_explained(setup):
    config, task, team, scorer, saved = setup
    row = scorer.score("ct_small")
    assert row["members"] == {"unet": 1, "prior": None}
    assert row["attention_ml"] > 0 and row["uncertainty"] > 0 and row["foreground_ml"] > 0
    assert set(row["components"]["per_criterion_ml"]) == {"disagreement", "entropy", "overlap", "prior"}
    assert row["components"]["per_criterion_ml"]["disagreement"] > 0  # a random UNet and the prior disagree
    assert "attention" in row["components"]["reason"]
    per_organ = row["components"]["class_entropy"]  # ClaSP's per-organ entropy, from the network members
    assert per_organ and all(1 <= int(organ) <= 15 and value >= 0 for organ, value in per_organ.items())
    heat = saved["ct_small"]
    assert heat.GetPixelID() == sitk.sitkUInt8 and sitk.GetArrayViewFromImage(heat).max() >= 1
    stored = scores(team.store)["ct_small"]
    assert isinstance(stored, CaseScore) and stored.attention_ml == pytest.approx(row["attention_ml"])


def test_a_new_model_version_makes_scores_stale_and_priorities_follow(setup):
    config, task, team, scorer, _ = setup
    orders = []
    worker = ScoringWorker(
        scorer,
        team.workflow,
        config.active_learning,
        lambda: {"unet": task.store.latest().number},
        prioritise=lambda: orders.append("set") or 0,
    )
    assert worker.run_once() == 1  # mr_small had no score yet; ct_small is fresh
    assert worker.stale() == [] and orders == ["set"]
    assert worker.run_once() == 0 and orders == ["set"]  # nothing new scored, no new final: the order stands
    settings = config.active.networks["unet"]
    task.store.publish(build_network(settings.network, settings.params).state_dict(), {"parent_version": 1})
    assert sorted(worker.stale()) == ["ct_small", "mr_small"]  # a training ended: every score is stale
    assert worker.run_once() == 2 and worker.stale() == [] and orders == ["set", "set"]

    by_attention = config.active_learning.model_copy(update={"queue_order": "weighted", "weights": {"attention": 1.0}})
    assert apply_priorities(team.workflow, by_attention) == 2
    table = scores(team.store)
    top = max(table, key=lambda c: table[c].attention_ml)
    picked = score_strategies(team.store)["attention"]({}, FakeDatastore(CASES))
    assert picked == {"id": top}
    weighted = score_strategies(team.store)["attention_diversity"]({}, FakeDatastore(CASES))
    assert weighted["id"] in CASES and "attention" in weighted["reason"]
    # ClaSP: the same state gives the same pick, with why; without noise, the case most uncertain about the first organ
    clasp = score_strategies(team.store)["clasp"]
    first = clasp({}, FakeDatastore(CASES))
    assert (
        first["id"] in CASES and first["reason"].startswith("clasp #1: ") and first == clasp({}, FakeDatastore(CASES))
    )
    in_play = {c: {int(o): v for o, v in table[c].components["class_entropy"].items()} for c in CASES}
    organ = min(set().union(*in_play.values()))  # an organ some case has in play; no final has it yet: first turn
    counts = {o: 1 for o in range(1, 16)} | {organ: 0}
    quiet = ClaspStrategy(team.store, lambda: counts, ClaspSelector(NoiseSchedule(0, 0)))
    expected = max((c for c in CASES if organ in in_play[c]), key=lambda c: in_play[c][organ])
    assert quiet({}, FakeDatastore(CASES))["id"] == expected
    # the review queue is ordered by these priorities, each with its reason
    for case_id in CASES:
        team.workflow.record_prelabel(case_id, LABEL, "prior", {})
    lines = queue(team.workflow, team.users["j1"]) + queue(team.workflow, team.users["j2"])
    assert sorted(line["case_id"] for line in lines) == sorted(CASES)
    assert all(line["priority"] > 0 and "attention" in line["priority_reason"] for line in lines)
    priority = {line["case_id"]: line["priority"] for line in lines}
    assert priority[top] == pytest.approx(1.0)  # the highest-attention case, normalised to 1
    # the other queue orders: ClaSP's pick order, and foreground-aware random as a stable weighted permutation
    al = config.active_learning
    assert apply_priorities(team.workflow, al.model_copy(update={"queue_order": "clasp"})) == 2
    lines = queue(team.workflow, team.users["j1"]) + queue(team.workflow, team.users["j2"])
    ranks = sorted((line["priority"], line["priority_reason"]) for line in lines)
    assert [p for p, _ in ranks] == [0.5, 1.0] and ranks[1][1].startswith("clasp #1: ")
    assert apply_priorities(team.workflow, al.model_copy(update={"queue_order": "foreground_random"})) == 2
    lines = queue(team.workflow, team.users["j1"]) + queue(team.workflow, team.users["j2"])
    assert all(0 < line["priority"] < 1 and "foreground-aware random" in line["priority_reason"] for line in lines)
    again = {line["case_id"]: line["priority"] for line in lines}
    apply_priorities(team.workflow, al.model_copy(update={"queue_order": "foreground_random"}))
    lines = queue(team.workflow, team.users["j1"]) + queue(team.workflow, team.users["j2"])
    assert {line["case_id"]: line["priority"] for line in lines} == again  # no reshuffle from pass to pass


def test_foreground_random_order_draws_big_bodies_first_in_proportion():
    """Efraimidis-Spirakis keys: the first of two cases is the heavier with probability w1 / (w1 + w2)."""
    from strategies.queue_order import stable_uniform

    first_is_big = 0
    for n in range(4000):
        big, small = stable_uniform(f"big{n}") ** (1 / 1.0), stable_uniform(f"small{n}") ** (1 / (1 / 3))
        first_is_big += big > small
    assert first_is_big / 4000 == pytest.approx(0.75, abs=0.03)


def test_the_idle_worker_looks_again_when_a_model_version_changes(setup, monkeypatch):
    """A training that ended (here or on another server of a team) shows in the version store: the worker scores
    again within a version check, not at the next interval (one minute by default)."""
    config, task, team, scorer, _ = setup
    monkeypatch.setattr("strategies.scoring.VERSION_CHECK_S", 0.05)
    versions = {"unet": 1}
    slow = config.active_learning.model_copy(update={"interval_s": 600.0})
    worker = ScoringWorker(scorer, team.workflow, slow, lambda: dict(versions))
    worker.stale()  # a pass saw version 1
    waiting = threading.Thread(target=worker._wait_for_work)
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive()  # nothing changed: it keeps waiting
    versions["unet"] = 2
    waiting.join(30)
    assert not waiting.is_alive()  # the new version ended the wait
