"""The quality estimator through the real server: a case whose pre-label misses an organ is predicted to fail on that
organ, the API and the case page say so and why, and the case comes first in the junior's and the seniors' queues.

The serving estimator is a cold start fitted here on made units with a known answer (a missing organ fails), as
``python -m bench.quality --publish`` publishes one; the scorer runs with the atlas prior alone (no network is
trained) and judges the pre-labels the import recorded.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
import yaml

from amoslabel.workspace import Workspace
from models.versions import ModelStore
from strategies.quality import FEATURES, QualityEstimator
from strategies.quality_history import QUALITY_MODEL, publish
from tests.conftest import ROOT, ServerProcess, page_session, running
from tests.review.conftest import add_users
from tests.strategies.test_quality import made_units

SPLEEN = 1
CT = "ct/ts_abdomen_ct_small.nii.gz"
CT_LABEL = "ct/ts_abdomen_ct_small_label.nii.gz"


@pytest.fixture(scope="module")
def served(shared, tmp_path_factory):
    """Two pre-labelled copies of the small CT: one pre-label complete, one without the spleen."""
    from amoslabel.data.importer import import_source

    root = tmp_path_factory.mktemp("quality")
    staging = root / "staging"
    staging.mkdir()
    label = sitk.ReadImage(str(shared / CT_LABEL))
    missing = sitk.GetArrayFromImage(label)
    missing[missing == SPLEEN] = 0
    without_spleen = sitk.GetImageFromArray(missing)
    without_spleen.CopyInformation(label)
    for case in ("complete", "no_spleen"):
        (staging / f"{case}.nii.gz").symlink_to(shared / CT)
    (staging / "complete_label.nii.gz").symlink_to(shared / CT_LABEL)
    sitk.WriteImage(without_spleen, str(staging / "no_spleen_label.nii.gz"))
    studies = root / "studies"
    report = import_source(staging, studies, labels_as="prelabel", link_images=True, progress=False)
    assert not report.skipped, report.summary()
    publish(
        ModelStore(Workspace(studies).models(), QUALITY_MODEL),
        QualityEstimator.fit(*made_units(600)),
        {"source": "cold start made in the test"},
        True,
        "cold start",
    )
    people = add_users(
        studies, [("jun", "junior"), ("sen1", "senior"), ("sen2", "senior"), ("sen3", "senior"), ("boss", "admin")]
    )
    config = yaml.safe_load((ROOT / "apps.yaml").read_text())
    config["review"]["pass_policy"] = {"threshold": 0.3, "audit_fraction": 0.2}
    config["active_learning"]["interval_s"] = 3  # the scorer looks again every 3 s (the broken version below)
    config["prior"]["label_maps"] = [str((ROOT / p).resolve()) for p in config["prior"]["label_maps"]]
    (root / "apps.yaml").write_text(yaml.safe_dump(config))
    conf = {"preset": "cpu-fast", "config": str(root / "apps.yaml")}
    (root / "server").mkdir()
    with running(ServerProcess(studies, root / "server", conf)) as server:
        yield server, people, studies


def api(server, token, method, path, **kwargs):
    return requests.request(
        method, f"{server.url}/review/api{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
    )


def predicted(server, token, case) -> dict:
    """The case's per-organ prediction, once the background scorer has made it."""
    deadline = time.time() + 240
    while time.time() < deadline:
        quality = api(server, token, "GET", f"/cases/{case}").json()["quality"]
        if quality:
            return {q["organ"]: q for q in quality}
        time.sleep(2)
    raise AssertionError(f"no quality estimate for {case}:\n{server.tail()}")


def test_a_missed_organ_is_predicted_to_fail_and_its_case_comes_first(served, tmp_path):
    server, people, _ = served
    no_spleen, complete = predicted(server, people["jun"], "no_spleen"), predicted(server, people["jun"], "complete")
    assert no_spleen[SPLEEN]["p_fail"] > 0.8 and complete[SPLEEN]["p_fail"] < 0.5
    assert no_spleen[SPLEEN]["reasons"][0] == FEATURES["missing"]
    chances = [q["p_fail"] for q in no_spleen.values()]
    assert chances == sorted(chances, reverse=True)  # most likely to fail first
    deadline = time.time() + 60  # the queue's priorities follow the scores at the end of the scorer's pass
    while time.time() < deadline:
        queue = api(server, people["jun"], "GET", "/queue").json()["cases"]
        if [c["case_id"] for c in queue] == ["no_spleen", "complete"] and "expected failures" in queue[0]["why"]:
            break
        time.sleep(1)
    assert [c["case_id"] for c in queue] == ["no_spleen", "complete"], queue
    assert "spleen" in queue[0]["why"] and FEATURES["missing"] in queue[0]["why"], queue[0]
    # the junior sends both as they are; the seniors' queue keeps the order
    for case in ("complete", "no_spleen"):
        assert api(server, people["jun"], "POST", f"/cases/{case}/submit").status_code == 200
    queue = api(server, people["sen1"], "GET", "/queue").json()["cases"]
    assert [c["case_id"] for c in queue] == ["no_spleen", "complete"], queue
    # the case page marks the organ, with the reason
    html = page_session(server.url, "sen1", people["sen1"]).get(f"{server.url}/review/cases/no_spleen", timeout=30).text
    row = re.search(r'<tr data-organ="spleen">.*?</tr>', html, re.S).group(0)
    assert "likely wrong" in row and FEATURES["missing"] in row
    assert "likely wrong" not in re.search(r'<tr data-organ="liver">.*?</tr>', html, re.S).group(0)
    assert np.isfinite(no_spleen[SPLEEN]["p_fail"])


def test_with_the_pass_policy_organs_predicted_correct_need_one_approval_and_the_history_says_which(served):
    server, people, _ = served
    detail = api(server, people["sen1"], "GET", "/cases/complete").json()
    assert detail["state"] == "in_review", detail  # submitted by the test above
    one, audited = detail["one_approval"], set(detail["audited"])
    quality = {q["name"]: q["p_fail"] for q in detail["quality"]}
    assert set(one) | audited == {name for name, p in quality.items() if p < 0.3} and one
    assert "spleen" not in api(server, people["sen1"], "GET", "/cases/no_spleen").json()["one_approval"]
    readers = {name for name in one.values()}
    assert readers <= {"sen1", "sen2", "sen3"} and len(readers) > 1  # spread over the readers
    for senior in ("sen1", "sen2", "sen3"):
        voted = api(server, people[senior], "POST", "/cases/complete/reviews", json={"default": "approve"})
        assert voted.status_code == 200, voted.text
    final = api(server, people["sen1"], "GET", "/cases/complete").json()
    assert final["state"] in ("consensus", "final"), final
    votes = api(server, people["sen1"], "GET", "/cases/complete").json()["decisions"][-1]["organs"]
    assert set(votes.values()) == {"approved"}
    events = api(server, people["sen1"], "GET", "/cases/complete/history").json()["events"]
    plan = next(e for e in events if e["action"] == "pass_policy")
    assert "one approval for" in plan["reason"] and "audited" in plan["reason"]
    overview = page_session(server.url, "boss", people["boss"]).get(f"{server.url}/review/overview", timeout=30).text
    table = re.search(r'<table id="pass-policy">.*?</table>', overview, re.S).group(0)
    assert f"<td>{len(one)}</td>" in table and "Audited miss rate" in table and "0.30 (configured)" in table


def test_an_estimator_version_that_does_not_load_leaves_the_usual_order_with_a_warning(served):
    server, people, studies = served
    store = ModelStore(Workspace(studies).models(), QUALITY_MODEL)
    broken = store.publish({"coef": torch.zeros(3)}, {"source": "a broken version"})
    store.set_champion(broken.number, "the test", "tests")
    admin = page_session(server.url, "boss", people["boss"])
    deadline = time.time() + 120
    while time.time() < deadline:
        overview = admin.get(f"{server.url}/review/overview", timeout=30).text
        if "does not load" in overview:
            break
        time.sleep(2)
    assert f"quality estimator quality:v{broken.number} does not load" in overview, server.tail()
    assert "keeps its order" in overview and "does not load" in server.tail(200)
    deadline = time.time() + 60  # reviewing goes on, in the weighted order once the scorer has rescored
    while time.time() < deadline:
        queue = api(server, people["sen1"], "GET", "/queue").json()["cases"]
        if queue and "uncertainty" in queue[0]["why"]:
            break
        time.sleep(2)
    assert [c["case_id"] for c in queue] == ["no_spleen"] and "expected failures" not in queue[0]["why"], queue
