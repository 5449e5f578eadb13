"""R4: the role-by-operation matrix, through the review JSON API and every MONAI Label endpoint, on the real server.

Each operation gets a case in the state it needs (made through the workflow in this process, on the server's own
SQLite file). Every principal that must be refused tries first; then the allowed one must succeed. A refusal is a
401 (no, unknown, revoked token or deactivated user), 403 (role or ownership) or 409 (a state the role cannot act
on); nothing refused may change the case.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import requests
from sqlalchemy import select

from amoslabel.config import load_config
from review.service import ReviewService
from tests.conftest import amoslabel_command
from amoslabel.server.access import GATE_HEADER
from review.auth import TOKEN_CHECK_SECONDS, token_id_of
from review.schema import LabelVersion, Token
from review.store import utcnow
from tests.reliability.conftest import TeamServer, report
from tests.review.conftest import LABEL

REFUSED = (401, 403, 409)
MR_LABEL = "mr/ts_abdomen_mr_small_label.nii.gz"
CELLS: List[dict] = []


@pytest.fixture(scope="module")
def world(team_server: TeamServer):
    """The server, an in-process workflow on its store, and tokens that must no longer work."""
    service = ReviewService(load_config(team_server.extra["config"]), str(team_server.studies))
    tokens = dict(team_server.tokens)
    for name in ("gone", "ex"):
        service.accounts.add_user(name, "junior")
        tokens[name] = service.accounts.issue_token(name)
        assert team_server.api(name, "GET", "/me", token=tokens[name]).status_code == 200  # the server now knows it
    for command in (("deactivate", "gone"), ("revoke", "ex")):
        done = amoslabel_command("users", *command, "--studies", team_server.studies)
        assert done.returncode == 0, done.stderr
    tokens["bad"] = "amos_AAAAAAAAAAAA_" + "x" * 40
    # a login's access token, expired: made through the server's own login, then aged in the store
    login = requests.post(
        f"{team_server.url}/auth/token", data={"username": "j2", "password": team_server.tokens["j2"]}, timeout=30
    )
    assert login.status_code == 200 and login.json()["token_type"] == "bearer", login.text
    tokens["late"] = login.json()["access_token"]
    assert team_server.api(None, "GET", "/me", token=tokens["late"]).status_code == 200
    with service.store.write() as s:
        s.get(Token, token_id_of(tokens["late"])).expires = utcnow() - timedelta(seconds=1)
    # a change made in the store by another process holds within the token check's bound (README, Identity)
    time.sleep(TOKEN_CHECK_SECONDS)
    yield team_server, service, tokens
    service.store.dispose()
    rows = Counter((c["interface"], c["expected"], c["ok"]) for c in CELLS)
    report(
        "r4_roles",
        {
            "cells": len(CELLS),
            "operations": len({(c["interface"], c["operation"]) for c in CELLS}),
            "refused_as_expected": sum(1 for c in CELLS if c["expected"].startswith("refused") and c["ok"]),
            "allowed_as_expected": sum(1 for c in CELLS if not c["expected"].startswith("refused") and c["ok"]),
            "wrong": [c for c in CELLS if not c["ok"]],
            "by_interface": {f"{k[0]} {k[1]} {'ok' if k[2] else 'WRONG'}": v for k, v in rows.items()},
            "matrix": CELLS,
        },
    )


ANONYMOUS = ["", "bad", "ex", "gone", "late"]  # no token; a forged, revoked, deactivated user's, expired one


def check(world, operation: str, call: Callable[[Optional[str]], requests.Response], refused: List[str], allowed):
    """Try every refused principal, then the allowed one(s); record each cell."""
    server, service, tokens = world
    for who in refused:
        reply = call(who)
        ok = reply.status_code in REFUSED
        CELLS.append(_cell("review API", operation, who, reply, "refused", ok))
        assert ok, f"{operation} by {who or 'nobody'}: {reply.status_code} {reply.text[:200]}"
    for who in [allowed] if isinstance(allowed, str) else allowed:
        reply = call(who)
        ok = reply.status_code in (200, 201)
        CELLS.append(_cell("review API", operation, who, reply, "allowed", ok))
        assert ok, f"{operation} by {who}: {reply.status_code} {reply.text[:200]}"


def _cell(interface, operation, who, reply, expected, ok) -> dict:
    detail = reply.text[:120] if reply.status_code >= 400 else ""
    return {
        "interface": interface,
        "operation": operation,
        "principal": who or "(no token)",
        "status": reply.status_code,
        "expected": expected,
        "ok": ok,
        "detail": detail,
    }


def as_user(world, method: str, path: str, **kwargs) -> Callable[[Optional[str]], requests.Response]:
    server, _, tokens = world

    def call(who: Optional[str]) -> requests.Response:
        token = tokens.get(who, "") if who else ""
        return server.api(None, method, path, token=token, **{k: v() if callable(v) else v for k, v in kwargs.items()})

    return call


def principal(world, name: str):
    return world[1].accounts.by_name(name)


def prelabelled(world, case_id: str, label: Path = LABEL) -> str:
    world[1].workflow.record_prelabel(case_id, label, "prior", {})
    return case_id


def with_junior(world, case_id: str, label: Path = LABEL, saved: bool = False) -> str:
    wf = world[1].workflow
    prelabelled(world, case_id, label)
    wf.claim(principal(world, "j1"), case_id)
    if saved:
        wf.save_version(principal(world, "j1"), case_id, label)
    return case_id


def in_review(world, case_id: str, reader: Optional[str] = None) -> str:
    wf = world[1].workflow
    with_junior(world, case_id, saved=True)
    wf.submit(principal(world, "j1"), case_id)
    if reader:
        wf.claim(principal(world, reader), case_id)
    return case_id


def escalated(world, case_id: str) -> str:
    """Changes requested on the pancreas in every round, up to the last one."""
    wf = world[1].workflow
    with_junior(world, case_id, saved=True)
    for round_ in range(wf.settings.max_rounds):
        if round_:
            wf.save_version(principal(world, "j1"), case_id, LABEL)  # returned to j1 with the comments
        wf.submit(principal(world, "j1"), case_id)
        for reader in _readers(world, case_id):
            vote = {"organ": 10, "decision": "changes_requested", "comment": "pancreas tail"}
            wf.review(principal(world, reader), case_id, [vote], default="approve")
    assert _state(world[1], case_id) == "escalated"
    return case_id


def test_everyone_is_who_their_token_says(world):
    check(world, "GET /me", as_user(world, "GET", "/me"), ANONYMOUS, ["j1", "s1", "boss"])
    check(world, "GET /queue", as_user(world, "GET", "/queue"), ANONYMOUS, ["j1", "s1", "boss"])


def test_claiming_a_prelabelled_case_is_a_juniors_job(world):
    case = prelabelled(world, "role_claim")
    check(
        world,
        "POST claim (pre-labelled)",
        as_user(world, "POST", f"/cases/{case}/claim"),
        ANONYMOUS + ["s1", "boss"],
        "j1",
    )
    check(world, "POST claim (another junior's)", as_user(world, "POST", f"/cases/{case}/claim"), ["j2"], [])


def test_only_the_holding_junior_saves_and_submits(world):
    case = with_junior(world, "role_save")
    label = lambda: {"label": ("label.nii.gz", LABEL.read_bytes())}  # noqa: E731
    save = as_user(world, "POST", f"/cases/{case}/label", files=label)
    check(world, "POST label", save, ANONYMOUS + ["j2", "s1", "boss"], "j1")
    check(world, "POST submit", as_user(world, "POST", f"/cases/{case}/submit"), ANONYMOUS + ["j2", "s1", "boss"], "j1")


def test_reviews_need_a_senior_holding_the_case_and_never_the_author(world):
    case = in_review(world, "role_review_claim")
    detail = world[0].api("boss", "GET", f"/cases/{case}").json()
    readers = sorted(a["user"] for a in detail["assignees"] if a["duty"] == "review")
    outsider = next(s for s in ("s1", "s2", "s3", "s4") if s not in readers)  # 4 seniors, 3 readers per case
    claim = as_user(world, "POST", f"/cases/{case}/claim")
    check(world, "POST claim (in review, full)", claim, ANONYMOUS + ["j1", "j2", "boss", outsider], readers[0])
    vote = as_user(world, "POST", f"/cases/{case}/reviews", json={"votes": [], "default": "approve"})
    # j1 wrote the label: a junior never approves their own work, nor does a senior the case was not given to
    check(world, "POST reviews", vote, ANONYMOUS + ["j1", "j2", outsider, "boss"], readers[0])
    check(world, "POST reviews (twice)", vote, [readers[0]], [])


def test_only_an_admin_resolves_an_escalated_case(world):
    case = escalated(world, "role_resolve")
    resolve = as_user(world, "POST", f"/cases/{case}/resolve", json={"action": "accept"})
    check(world, "POST resolve", resolve, ANONYMOUS + ["j1", "s1", "s4"], "boss")


def test_case_pages_are_for_the_people_on_the_case(world):
    case = with_junior(world, "role_view")
    for path in (f"/cases/{case}", f"/cases/{case}/history"):
        check(
            world,
            f"GET {path.replace(case, '{case}')}",
            as_user(world, "GET", path),
            ANONYMOUS + ["j2", "s4"],
            ["j1", "boss"],
        )
    check(world, "GET /stats/agreement", as_user(world, "GET", "/stats/agreement"), ANONYMOUS + ["j1"], ["s1", "boss"])


def test_only_an_admin_withdraws_and_purges_a_case(world):
    server = world[0]
    case = with_junior(world, "role_withdraw")
    withdraw = as_user(world, "POST", f"/cases/{case}/withdraw", json={"reason": "wrong patient"})
    check(world, "POST withdraw", withdraw, ANONYMOUS + ["j1", "s1"], "boss")
    assert _state(world[1], case) == "withdrawn"
    assert case not in [c["case_id"] for c in server.api("j1", "GET", "/queue").json()["cases"]]
    purge = as_user(world, "POST", f"/cases/{case}/purge")
    check(world, "POST purge", purge, ANONYMOUS + ["j1", "s1"], "boss")
    history = server.api("boss", "GET", f"/cases/{case}/history").json()["events"]
    assert [e["action"] for e in history][-2:] == ["withdraw", "purge"]  # the case had no scan here to archive

    # a scan of the datastore: it leaves the listing at once, its bytes are no longer served
    scan = Path(str(server.sources / "ts_abdomen_mr_small.nii.gz"))
    with open(scan, "rb") as f:
        uploaded = server.http("boss").put(
            f"{server.url}/datastore/image", params={"image": "role_gone"}, files={"file": ("m.nii.gz", f)}, timeout=60
        )
    assert uploaded.status_code == 200, uploaded.text
    assert server.api("boss", "POST", "/cases/role_gone/withdraw", json={"reason": "consent withdrawn"}).ok
    listing = server.http("j1").get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    assert "role_gone" not in listing["objects"]
    assert server.http("j1").get(f"{server.url}/datastore/image", params={"image": "role_gone"}).status_code == 404


def test_only_an_admin_manages_users_and_tokens(world):
    check(world, "GET /users", as_user(world, "GET", "/users"), ANONYMOUS + ["j1", "s1"], "boss")
    add = as_user(world, "POST", "/users", json={"name": "newbie", "role": "senior"})
    check(world, "POST /users", add, ANONYMOUS + ["j1", "s1"], "boss")
    check(
        world, "POST /users/{name}/tokens", as_user(world, "POST", "/users/j2/tokens"), ANONYMOUS + ["j1", "s1"], "boss"
    )
    check(
        world,
        "DELETE /users/{name}/tokens",
        as_user(world, "DELETE", "/users/newbie/tokens"),
        ANONYMOUS + ["j1", "s1"],
        "boss",
    )


def monai(
    world, operation: str, expected: str, method: str, path: str, who: Optional[str] = None, **kwargs
) -> requests.Response:
    """A MONAI Label endpoint called with ``who``'s token (None: no token); the cell is recorded.

    ``expected``: ``refused`` (401 or 403 from the gate; 403 or 409 from the endpoint), ``allowed`` (200), or
    ``passes the gate`` (anything the endpoint itself answers: 404 for an unknown name is fine).
    """
    server, _, tokens = world
    headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
    reply = requests.request(method, f"{server.url}{path}", headers=headers, timeout=120, **kwargs)
    by_gate = reply.headers.get(GATE_HEADER) == "refused"
    if expected == "refused":
        ok = reply.status_code in REFUSED and (by_gate or reply.status_code != 401)
    elif expected == "refused by the gate":
        ok = by_gate and reply.status_code in (401, 403)
    elif expected == "passes the gate":
        ok = not by_gate and reply.status_code < 500
    else:
        ok = reply.status_code == 200
    named = kwargs.get("data", {}).get("params") or kwargs.get("json") or ""
    principal = f"{who or '(no token)'}{' ' + str(named)[:40] if named else ''}"
    CELLS.append(_cell("MONAI Label", operation, principal, reply, expected, ok))
    assert ok, f"{operation} by {principal}: {reply.status_code} {reply.text[:200]}"
    return reply


def test_a_viewer_save_needs_the_user_holding_the_case(world, shared):
    server, service, _ = world
    case = "mr_small"  # a real scan of this server: its label must be on the scan's grid
    with_junior(world, case, label=shared / MR_LABEL)
    label = (shared / MR_LABEL).read_bytes()
    tries = [(who, None, "final") for who in ANONYMOUS + ["j2", "s1", "boss"]]
    tries += [("j1", "s1", "final"), ("j2", "j1", "final"), ("j1", None, "working")]  # another user's name; a tag
    for who, client_id, tag in tries:
        params = {"params": json.dumps({"client_id": client_id} if client_id else {})}
        monai(
            world,
            f"PUT /datastore/label tag={tag}",
            "refused",
            "PUT",
            "/datastore/label",
            who or None,
            params={"image": case, "tag": tag},
            data=params,
            files={"label": ("l.nii.gz", label)},
        )
    assert _state(service, case) == "with_junior"  # nothing refused changed the case
    for client_id in ("user-xyz", None):  # Slicer's default client id names nobody: the token's user saves
        params = {"params": json.dumps({"client_id": client_id} if client_id else {})}
        monai(
            world,
            "PUT /datastore/label tag=draft",
            "allowed",
            "PUT",
            "/datastore/label",
            "j1",
            params={"image": case, "tag": "draft"},
            data=params,
            files={"label": ("l.nii.gz", label)},
        )
    monai(
        world,
        "PUT /datastore/label tag=final",
        "allowed",
        "PUT",
        "/datastore/label",
        "j1",
        params={"image": case, "tag": "final"},
        data={"params": json.dumps({"client_id": "j1"})},
        files={"label": ("l.nii.gz", label)},
    )
    assert _state(service, case) == "in_review"
    history = world[0].api("boss", "GET", f"/cases/{case}/history").json()["events"]
    assert [e["actor"] for e in history if e["action"] == "version"][-3:] == ["j1", "j1", "j1"]


def test_next_sample_claims_for_the_token_user_only(world):
    prelabelled(world, "role_next")
    queue = "/activelearning/review_queue"
    for who in ANONYMOUS:
        monai(world, "POST /activelearning/review_queue", "refused by the gate", "POST", queue, who or None, json={})
    monai(world, "POST /activelearning/review_queue", "refused", "POST", queue, "j2", json={"client_id": "j1"})
    monai(world, "POST /activelearning/review_queue", "refused", "POST", queue, "j1", json={"client_id": "j2"})
    reply = monai(world, "POST /activelearning/review_queue", "allowed", "POST", queue, "j2", json={})
    assert reply.json().get("id") == "role_next"
    assert world[0].api("boss", "GET", "/cases/role_next").json()["assignees"][0]["user"] == "j2"


def test_infer_acts_for_the_token_user(world):
    for who in ANONYMOUS:
        monai(world, "POST /infer/{model}", "refused by the gate", "POST", "/infer/prior", who or None)
    infer = {"params": {"image": "ct_small"}}
    monai(
        world,
        "POST /infer/{model}",
        "refused",
        "POST",
        "/infer/prior",
        "j1",
        data={"params": '{"client_id": "s1"}'},
        **infer,
    )


# One probe per rule of amoslabel/server/access.py: every role and every refused principal tries it.
PROBES = [
    ("check a token", "GET", "/auth/token/valid", {}),
    ("server info", "GET", "/info/", {}),
    ("datastore listing", "GET", "/datastore/", {"params": {"output": "all"}}),
    ("download a scan or a label (audited)", "GET", "/datastore/image", {"params": {"image": "ct_small"}}),
    (
        "download a scan or a label (audited)",
        "GET",
        "/datastore/label",
        {"params": {"label": "ct_small", "tag": "final"}},
    ),
    ("download a scan or a label (audited)", "HEAD", "/datastore/image", {"params": {"image": "ct_small"}}),
    ("image or label info", "GET", "/datastore/image/info", {"params": {"image": "ct_small"}}),
    ("image or label info", "GET", "/datastore/label/info", {"params": {"label": "ct_small", "tag": "final"}}),
    (
        "save a label (the workflow checks the case)",
        "PUT",
        "/datastore/label",
        {"params": {"image": "ct_small", "tag": "draft"}, "files": {"label": ("l.nii.gz", b"x")}},
    ),
    ("pre-label (infer)", "POST", "/infer/unet", {"params": {"image": "no_such_case"}}),
    ("Next Sample", "POST", "/activelearning/first", {"json": {}}),
    ("training status", "GET", "/train/", {}),
    ("inference session", "GET", "/session/no_such_session", {}),
    ("DICOMweb read through the proxy (audited)", "GET", "/proxy/dicom/qido/studies", {}),
    # on this folder datastore there is no /dicom-web (404 past the gate); tests/dicomweb drives it on Orthanc
    ("DICOMweb read for the OHIF viewer (audited)", "GET", "/dicom-web/studies", {}),
    ("store a SEG from OHIF (a label version)", "POST", "/dicom-web/studies", {}),
    (
        "update label info",
        "PUT",
        "/datastore/label/info",
        {"params": {"label": "ct_small", "tag": "no_such_tag"}, "data": {"info": "{}"}},
    ),
    (
        "upload a scan",
        "PUT",
        "/datastore/image",
        {"params": {"image": "probe_upload"}, "files": {"file": ("x.nii.gz", b"not a scan")}},
    ),
    (
        "update image info",
        "PUT",
        "/datastore/image/info",
        {"params": {"image": "no_such_case"}, "data": {"info": "{}"}},
    ),
    ("remove a scan or a label", "DELETE", "/datastore/image", {"params": {"id": "ct_small"}}),
    ("remove a scan or a label", "DELETE", "/datastore/label", {"params": {"id": "ct_small", "tag": "final"}}),
    ("export the whole dataset", "GET", "/datastore/dataset", {"params": {"limit_cases": 1}}),
    ("start or stop training", "POST", "/train/no_such_model", {}),
    ("batch inference", "GET", "/batch/infer", {}),
    ("scoring", "GET", "/scoring/", {}),
    ("model files", "GET", "/model/unet", {}),
    ("server logs", "GET", "/logs/", {"params": {"lines": 5}}),
    ("reload the app", "POST", "/reload", {}),
    ("DICOMweb write through the proxy", "POST", "/proxy/dicom/stow/studies", {}),
    ("anything else", "GET", "/no/such/route", {}),
]


def test_every_monai_label_endpoint_needs_a_token_and_a_role(world):
    from amoslabel.server.access import DELEGATED, PUBLIC, RULES, rule_for

    server, service, _ = world
    covered = {operation for operation, *_ in PROBES}
    assert covered >= {r.operation for r in RULES if r.allowed not in (PUBLIC, DELEGATED)}  # every rule probed
    files_before = sorted(str(p.relative_to(server.studies)) for p in server.studies.rglob("*") if p.is_file())
    with service.store.read() as s:
        versions_before = len(s.execute(select(LabelVersion)).all())
    for operation, method, path, kwargs in PROBES:
        rule = rule_for(method, path)
        assert rule.operation == operation, (method, path, rule.operation)
        for who in ANONYMOUS:
            reply = monai(world, f"{method} {path}", "refused by the gate", method, path, who or None, **kwargs)
            assert b"\x1f\x8b" not in reply.content[:2]  # no scan bytes (NIfTI is gzip)
        for who, role in (("j1", "junior"), ("s1", "senior"), ("boss", "admin")):
            expected = "passes the gate" if role in rule.allowed else "refused by the gate"
            monai(world, f"{method} {path}", expected, method, path, who, **kwargs)
    files_after = sorted(str(p.relative_to(server.studies)) for p in server.studies.rglob("*") if p.is_file())
    with service.store.read() as s:
        versions_after = len(s.execute(select(LabelVersion)).all())
    assert [f for f in files_after if "label-versions" not in f and "review.db" not in f] == [
        f for f in files_before if "label-versions" not in f and "review.db" not in f
    ]
    assert versions_after == versions_before  # no probe made a label version


def test_nothing_removes_scans_final_labels_or_model_weights(world):
    server = world[0]
    final = server.studies / "labels" / "final" / "ct_small.nii.gz"
    before = final.read_bytes()
    for who in ("j1", "boss"):  # a junior is stopped by the gate, the admin by the datastore and the model store
        monai(world, "DELETE /datastore/image", "refused", "DELETE", "/datastore/image", who, params={"id": "ct_small"})
        monai(
            world,
            "DELETE /datastore/label final",
            "refused",
            "DELETE",
            "/datastore/label",
            who,
            params={"id": "ct_small", "tag": "final"},
        )
        files = {"file": ("w.pt", b"not weights")}
        monai(world, "PUT /model/{model}", "refused", "PUT", "/model/unet", who, files=files)
        monai(world, "DELETE /model/{model}", "refused", "DELETE", "/model/unet", who)
    assert final.read_bytes() == before
    assert (server.sources / "ts_abdomen_ct_small.nii.gz").is_file()  # the linked source of the scan
    head = requests.head(f"{server.url}/datastore/image", params={"image": "ct_small"}, timeout=30)
    assert head.status_code == 401
    assert server.http("j1").head(f"{server.url}/datastore/image", params={"image": "ct_small"}, timeout=30).ok


def _readers(world, case_id: str) -> List[str]:
    """The seniors the case was given to in this round (routing assigns them at submission)."""
    from review.schema import Assignment, User

    with world[1].store.read() as s:
        rows = s.execute(
            select(User.name)
            .join(Assignment, Assignment.user_id == User.id)
            .where(Assignment.case_id == case_id, Assignment.duty == "review", Assignment.status == "active")
        )
        return sorted(rows.scalars())


def _state(service: ReviewService, case_id: str) -> str:
    from review.schema import Case

    with service.store.read() as s:
        return s.get(Case, case_id).state


def test_the_matrix_has_no_wrong_cell(world):
    wrong = [c for c in CELLS if not c["ok"]]
    assert CELLS and not wrong, wrong
    refused = sum(1 for c in CELLS if c["expected"].startswith("refused"))
    assert refused > 200 and len({c["operation"] for c in CELLS if c["interface"] == "MONAI Label"}) >= 25
