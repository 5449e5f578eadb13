"""The review API's hot writes served by FastAPI itself answer exactly as the Flask app does.

Two review services on real SQLite files and real folder datastores, in lockstep: one behind the Flask app alone (as a
team's review workers serve it), one behind a FastAPI app with the review API mounted as the server mounts it
(``mount_review_api``). Every request of a junior's submit and a senior's vote, good and bad, gets the same status,
JSON and headers from both; and the FastAPI one never reached Flask for them. The real server's forms are in
tests/review/test_server_workflow.py and tests/reliability (roles, attacks, fuzzing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import flask
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from amoslabel.config import load_config
from amoslabel.data.datastore import AmosDatastore
from amoslabel.data.importer import import_source
from amoslabel.server.routes import mount_review_api
from review.api import create_review_api
from review.schema import Case
from review.service import ReviewService
from tests.review.conftest import LABEL

CASE = "ts_abdomen_ct_small"
HEADERS = ("content-type", "cache-control", "x-content-type-options", "x-frame-options", "content-security-policy")


def review_service(shared: Path, folder: Path) -> ReviewService:
    source = folder / "scan-only"
    source.mkdir(parents=True)
    (source / f"{CASE}.nii.gz").symlink_to(shared / "ct" / f"{CASE}.nii.gz")
    import_source(source, folder / "studies", link_images=True, progress=False)
    service = ReviewService(load_config(overrides={"reviewers_per_case": "1"}), str(folder / "studies"))
    service.attach(AmosDatastore(str(folder / "studies"), max_voxels=10**9, max_upload_bytes=50 * 2**20))
    service.sync_cases()
    service.workflow.record_prelabel(CASE, LABEL, "prior:test", {})
    return service


@pytest.fixture()
def both(shared, tmp_path):
    """(client, API path, tokens, service): for the Flask app alone, and for a FastAPI app with it mounted."""
    clients = []
    for name in ("flask", "fastapi"):
        service = review_service(shared, tmp_path / name)
        tokens = {}
        for user, role in (("j1", "junior"), ("s1", "senior")):
            service.accounts.add_user(user, role)
            tokens[user] = service.accounts.issue_token(user)
        if name == "flask":
            clients.append((create_review_api(service).test_client(), "/api", tokens, service))
        else:
            app = FastAPI()
            mount_review_api(app, service)
            clients.append((TestClient(app), "/review/api", tokens, service))
    yield clients


def test_submit_and_vote_answer_as_flask_does_without_reaching_flask(both):
    dispatched = []

    def count(sender, **extra):
        dispatched.append(flask.request.path)

    flask.request_started.connect(count)
    try:
        exchanges = _exchanges(both, dispatched)
    finally:
        flask.request_started.disconnect(count)
    assert [status for status, _ in exchanges] == [401, 403, 200, 409, 401, 400, 400, 400, 400, 413, 200, 409, 404]
    assert exchanges[2][1]["state"] == "in_review" and exchanges[10][1]["state"] == "consensus"
    assert exchanges[11][1]["state"] == "final"  # the repeated vote: the case is decided


def _exchanges(both, dispatched):
    (flask_client, flask_api, flask_tokens, _), (fast_client, fast_api, fast_tokens, _) = both
    for client, api, tokens, _ in both:  # the claim, not one of these routes
        claimed = client.post(f"{api}/cases/{CASE}/claim", headers={"Authorization": f"Bearer {tokens['j1']}"})
        assert claimed.status_code == 200
    deep = "[" * 100_000 + "]" * 100_000
    requests = [
        ("submit", None, None, {}),
        ("submit", "s1", None, {}),
        ("submit", "j1", None, {}),
        ("submit", "j1", None, {}),  # again: 409, the case has moved on
        ("reviews", None, json.dumps({"default": "approve"}), {"content-type": "application/json"}),
        ("reviews", "s1", json.dumps({"default": "approve"}), {"content-type": "text/plain"}),
        ("reviews", "s1", json.dumps([1, 2]), {"content-type": "application/json"}),
        ("reviews", "s1", deep, {"content-type": "application/json"}),
        ("reviews", "s1", json.dumps({"votes": "all fine"}), {"content-type": "application/json; charset=utf-8"}),
        ("reviews", "s1", json.dumps({"votes": [], "pad": "x" * (1 << 20)}), {"content-type": "application/json"}),
        (
            "reviews",
            "s1",
            json.dumps({"votes": [{"organ": "liver", "decision": "approve"}], "default": "approve"}),
            {"content-type": "application/vnd.api+json"},
        ),
        ("reviews", "s1", json.dumps({"default": "approve"}), {"content-type": "application/json"}),
        ("missing", "s1", json.dumps({"default": "approve"}), {"content-type": "application/json"}),
    ]
    exchanges = []
    for route, user, body, headers in requests:
        answers = []
        for client, api, tokens in ((flask_client, flask_api, flask_tokens), (fast_client, fast_api, fast_tokens)):
            sent = {**headers, **({"Authorization": f"Bearer {tokens[user]}"} if user else {})}
            path = f"{api}/cases/{CASE}/{route}" if route != "missing" else f"{api}/cases/nothing_here/reviews"
            dispatched.clear()
            payload = {"content": body} if isinstance(client, TestClient) else {"data": body}  # httpx, Werkzeug
            answer = client.post(path, headers=sent, **payload)
            answers.append((answer, list(dispatched)))
        (theirs, _), (ours, reached_flask) = answers
        what = (route, user, headers, ours.text[:300], theirs.text[:300])
        assert ours.status_code == theirs.status_code, what
        assert _comparable(json.loads(ours.text)) == _comparable(json.loads(theirs.text)), what
        if ours.status_code >= 400:  # nothing differs by time: the same bytes
            assert ours.text == theirs.text, what
        assert {h: ours.headers.get(h) for h in HEADERS} == {h: theirs.headers.get(h) for h in HEADERS}, what
        assert reached_flask == [], what
        exchanges.append((ours.status_code, json.loads(ours.text)))
        if ours.status_code == 200 and route == "reviews":  # consensus: both finalise (in the background) first
            for *_, service in both:
                _wait_until_final(service)
    dispatched.clear()
    assert fast_client.get(f"{fast_api}/me", headers={"Authorization": f"Bearer {fast_tokens['j1']}"}).is_success
    assert dispatched == ["/api/me"]  # the control: every other route is still Flask's

    # a body without Content-Length (chunked) is empty to Flask under a2wsgi, and so to the native route: never read
    # without a bound
    body = json.dumps({"default": "approve"}).encode()
    for route, user in (("me/password", "j1"), (f"cases/{CASE}/reviews", "s1")):
        chunked = fast_client.post(
            f"{fast_api}/{route}",
            content=iter([body]),
            headers={"content-type": "application/json", "Authorization": f"Bearer {fast_tokens[user]}"},
        )
        assert chunked.status_code == 400 and "must be a JSON object" in chunked.text, (route, chunked.text)
    return exchanges


def _comparable(answer):
    """An answer without what differs between two stores by time alone (a lease's expiry, an event's time, how long
    the case has waited: 0.0 s against 0.1 s on a slow machine)."""
    timed = ("expires", "at", "time", "created", "waiting_seconds")
    if isinstance(answer, dict):
        return {k: _comparable(v) for k, v in answer.items() if k not in timed}
    if isinstance(answer, list):
        return [_comparable(v) for v in answer]
    return answer


def _wait_until_final(service: ReviewService, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while case_state(service) != "final":
        assert time.monotonic() < deadline, case_state(service)
        time.sleep(0.1)


def case_state(service: ReviewService) -> str:
    with service.store.read() as session:
        return session.get(Case, CASE).state


def test_review_operations_run_while_inference_holds_every_shared_thread():
    """The endpoints' shared pool (anyio's default limiter) full of inference does not hold a review operation."""
    import anyio
    import anyio.to_thread
    import threading

    from amoslabel.server.own_threads import OwnThreads

    async def scenario():
        shared = anyio.to_thread.current_default_thread_limiter()
        shared.total_tokens = 2
        release = threading.Event()
        answered = []
        async with anyio.create_task_group() as group:
            for _ in range(2):  # two "inference requests" hold the whole shared pool
                group.start_soon(anyio.to_thread.run_sync, release.wait)
            try:
                await anyio.sleep(0.2)
                assert shared.borrowed_tokens == 2
                with anyio.fail_after(10):
                    answered.append(await OwnThreads(2).run(lambda: "claimed"))
            finally:
                release.set()  # the blocked threads end, whatever happened
        return answered

    assert anyio.run(scenario) == ["claimed"]
