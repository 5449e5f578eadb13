"""The access gate's rules and decisions on a real store (no server): who may call what, and what a client id is."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event
from starlette.requests import Request

from amoslabel.config import ConfigError
from amoslabel.server.access import DELEGATED, EVERYONE, PUBLIC, RULES, AccessGate, bearer_token, rule_for
from amoslabel.server.identity import acting_for, bind_host, check_auth_off, monai_user
from review.auth import TOKEN_CHECK_SECONDS, Accounts, Forbidden
from review.store import ReviewStore


@pytest.fixture()
def team(tmp_path):
    accounts = Accounts(ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "versions"))
    tokens = {}
    for name, role in (("ann", "junior"), ("sue", "senior"), ("ada", "admin")):
        accounts.add_user(name, role)
        tokens[name] = accounts.issue_token(name)
    return accounts, tokens


def test_the_rules_say_public_delegated_or_roles_and_the_first_match_wins():
    assert rule_for("GET", "/auth/").allowed == PUBLIC and rule_for("POST", "/auth/token").allowed == PUBLIC
    assert rule_for("GET", "/ohif/index.html").allowed == PUBLIC
    assert rule_for("GET", "/review/cases/x").allowed == DELEGATED
    assert rule_for("PUT", "/datastore/label").allowed == EVERYONE
    assert rule_for("PUT", "/datastore/label/info").allowed == {"senior", "admin"}
    assert rule_for("PUT", "/datastore/image").allowed == {"admin"} == rule_for("PUT", "/datastore/").allowed
    assert rule_for("GET", "/train/").allowed == EVERYONE and rule_for("POST", "/train/unet").allowed == {"admin"}
    assert rule_for("GET", "/proxy/dicom/wado/studies/1").allowed == EVERYONE
    assert rule_for("POST", "/proxy/dicom/stow/studies").allowed == {"admin"}
    assert rule_for("GET", "/dicom-web/studies/1/series").allowed == EVERYONE
    assert rule_for("POST", "/dicom-web/studies").allowed == {"junior", "senior"}
    assert rule_for("GET", "/anything/new").allowed == EVERYONE  # an unlisted route still needs a login
    assert len({r.operation for r in RULES}) >= 25


def test_the_gate_lets_each_role_through_only_where_a_rule_allows(team):
    accounts, tokens = team
    gate = AccessGate(accounts)

    def status(method, path, who=None, headers=None):
        headers = headers or ({"authorization": f"Bearer {tokens[who]}"} if who else {})
        return gate.decide(method, path, headers).status

    assert status("GET", "/auth/") == 0 and status("OPTIONS", "/datastore/") == 0
    assert status("GET", "/info/") == 401 and status("GET", "/info/", "ann") == 0
    assert status("PUT", "/datastore/image", "ann") == 403 and status("PUT", "/datastore/image", "ada") == 0
    assert status("PUT", "/datastore/label/info", "ann") == 403 and status("PUT", "/datastore/label/info", "sue") == 0
    assert status("GET", "/info/", headers={"authorization": "Basic YWRhOmFkYQ=="}) == 401
    assert status("GET", "/info/", headers={"x-api-token": tokens["ada"]}) == 0
    assert gate.decide("GET", "/info/", {"authorization": f"bearer {tokens['sue']}"}).principal.name == "sue"
    refused = gate.decide("POST", "/train/unet", {"authorization": f"Bearer {tokens['sue']}"})
    assert refused.status == 403 and "start or stop training" in refused.detail and "admin" in refused.detail
    prefixed = AccessGate(accounts, api_prefix="/api")
    assert prefixed.decide("GET", "/api/info/", {}).status == 401
    assert prefixed.decide("GET", "/api/auth/", {}).status == 0


def test_a_token_checked_within_the_bound_is_decided_from_memory_and_nothing_else_is(team):
    """The middleware decides on the event loop what needs no store read; the rest goes to its thread pool."""
    accounts, tokens = team
    seen = []
    gate = AccessGate(accounts, on_dicomweb_read=lambda who, uid: seen.append((who, uid)), session_user=lambda c: None)
    ann = {"authorization": f"Bearer {tokens['ann']}"}
    assert gate.decide_from_memory("GET", "/auth/", {}).status == 0  # public: nothing to check
    assert gate.decide_from_memory("GET", "/info/", ann) is None  # not checked yet: the store must be read
    assert gate.decide_from_memory("GET", "/info/", {}) is None  # no token: refused by the full check, with its hint
    assert gate.decide("GET", "/info/", ann).status == 0
    statements = []
    for engine in {accounts.store.engine, accounts.store._read_engine}:
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    allowed = gate.decide_from_memory("POST", "/activelearning/review_queue", ann)
    assert allowed.status == 0 and allowed.principal.name == "ann"
    refused = gate.decide_from_memory("PUT", "/datastore/image", ann)
    assert refused.status == 403 and "admin" in refused.detail  # the same rules, from memory
    assert statements == []
    # a DICOMweb read is recorded, and a session cookie is read from the store: both off the event loop
    assert gate.decide_from_memory("GET", "/proxy/dicom/wado/studies/1.2/series/1.2.3/metadata", ann) is None
    assert gate.decide_from_memory("GET", "/info/", {"cookie": "amos_review=x"}) is None
    assert seen == []
    Accounts(accounts.store).revoke_tokens("ann", actor="ada")  # another process revokes: within the bound
    time.sleep(TOKEN_CHECK_SECONDS + 0.05)
    assert gate.decide_from_memory("GET", "/info/", ann) is None
    assert gate.decide("GET", "/info/", ann).status == 401


def test_reads_through_the_dicomweb_proxy_are_recorded_once_per_user_and_series(team):
    accounts, tokens = team
    seen = []
    gate = AccessGate(accounts, on_dicomweb_read=lambda who, uid: seen.append((who, uid)))
    headers = {"authorization": f"Bearer {tokens['ann']}"}
    for frame in range(5):
        gate.decide("GET", f"/proxy/dicom/wado/studies/1.2/series/1.2.3/instances/9/frames/{frame}", headers)
    gate.decide("GET", "/proxy/dicom/qido/studies/1.2/series/1.2.4/metadata", headers)
    assert seen == [("ann", "1.2.3"), ("ann", "1.2.4")]


def test_the_review_session_cookie_signs_in_and_writes_only_from_the_same_origin(team):
    """The OHIF viewers of a browser logged in at /review send its session cookie; a write with it alone must come
    from a page of the same origin (another site's page could otherwise write with the user's session)."""
    accounts, tokens = team
    sessions = {"amos_review=ann-session": accounts.by_name("ann"), "amos_review=sue-session": accounts.by_name("sue")}
    gate = AccessGate(accounts, session_user=sessions.get)
    store = "/dicom-web/studies"

    def decide(method, path, cookie, **more):
        return gate.decide(method, path, {"cookie": cookie, "host": "127.0.0.1:3000", **more})

    assert decide("GET", "/dicom-web/studies", "amos_review=ann-session").principal.name == "ann"
    assert decide("GET", "/dicom-web/studies", "amos_review=forged").status == 401
    assert decide("POST", store, "amos_review=ann-session", **{"sec-fetch-site": "same-origin"}).status == 0
    cross = decide("POST", store, "amos_review=ann-session", **{"sec-fetch-site": "cross-site"})
    assert cross.status == 403 and "page of this server" in cross.detail
    assert decide("POST", store, "amos_review=ann-session", origin="http://127.0.0.1:3000").status == 0
    assert decide("POST", store, "amos_review=ann-session", origin="http://evil.example").status == 403
    assert decide("POST", store, "amos_review=ann-session").status == 403  # no Origin, no Sec-Fetch-Site
    admin_cookie = AccessGate(accounts, session_user=lambda _: accounts.by_name("ada"))
    assert admin_cookie.decide("POST", store, {"cookie": "x", "sec-fetch-site": "same-origin"}).status == 403
    # a bearer token wins over a cookie, and the gate without a session reader ignores cookies
    both = decide("GET", "/info/", "amos_review=ann-session", authorization=f"Bearer {tokens['sue']}")
    assert both.principal.name == "sue"
    assert AccessGate(accounts).decide("GET", "/info/", {"cookie": "amos_review=ann-session"}).status == 401


def test_bearer_tokens_are_read_from_either_header():
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer abc "}) == "abc"  # what the Slicer client sends
    assert bearer_token({"authorization": "Basic abc"}) is None and bearer_token({}) is None
    assert bearer_token({"x-api-token": "abc"}) == "abc"


def _request(principal=None) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {"principal": principal}})


def test_a_client_id_never_names_another_user(team):
    accounts, _ = team
    ann = accounts.by_name("ann")
    assert acting_for({}, _request(ann), accounts) == {"client_id": "ann"}
    assert acting_for({"client_id": "user-xyz", "x": 1}, _request(ann), accounts) == {"client_id": "ann", "x": 1}
    assert acting_for({"client_id": "ann"}, _request(ann), accounts)["client_id"] == "ann"
    with pytest.raises(Forbidden, match="names another user"):
        acting_for({"client_id": "sue"}, _request(ann), accounts)
    # auth off (loopback only): the client id names the user, as MONAI Label's plugins send it
    assert acting_for({"client_id": "sue"}, _request(None), accounts) == {"client_id": "sue"}
    assert monai_user(_request(ann)).username == "ann" and monai_user(_request(None)).username == "admin"


def test_auth_may_be_off_only_on_loopback(caplog):
    assert bind_host(["monailabel", "start_server", "--host", "127.0.0.1"]) == "127.0.0.1"
    assert bind_host(["monailabel", "start_server", "-i", "::1"]) == "::1"
    assert bind_host(["monailabel", "start_server"]) == "0.0.0.0"  # MONAI Label's default
    for host in ("127.0.0.1", "::1", "localhost"):
        check_auth_off(host)
    assert "AUTH IS OFF" in caplog.text
    for host in ("0.0.0.0", "10.1.2.3", "example.org"):
        with pytest.raises(ConfigError, match="loopback"):
            check_auth_off(host)
