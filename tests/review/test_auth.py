"""Users, passwords and tokens on a real SQLite store: logins, expiry, revocation, deactivation, and their audit."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from review.auth import TOKEN_CHECK_SECONDS, Accounts, Unauthorized, token_id_of
from review.schema import AuditEvent, Token
from review.store import ReviewStore, utcnow


@pytest.fixture()
def accounts(tmp_path) -> Accounts:
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "versions")
    accounts = Accounts(store, access_token_hours=12)
    accounts.add_user("ann", "junior", actor="boss")
    accounts.add_user("bob", "senior", actor="boss")
    return accounts


def test_a_login_with_the_password_or_an_api_token_gives_an_expiring_access_token(accounts):
    accounts.set_password("ann", "correct horse battery", actor="boss")
    issued = accounts.login("ann", "correct horse battery")
    assert accounts.authenticate(issued.token).name == "ann"
    assert timedelta(hours=11.9) < issued.expires - utcnow() <= timedelta(hours=12)
    api_token = accounts.issue_token("bob", actor="boss")
    by_token = accounts.login("bob", api_token)  # a team with only API tokens logs in Slicer with them
    assert accounts.authenticate(by_token.token).name == "bob" and by_token.token != api_token
    with accounts.store.read() as s:
        kinds = {t.id: t.kind for t in s.execute(select(Token)).scalars()}
    assert kinds[token_id_of(issued.token)] == "access" and kinds[token_id_of(api_token)] == "api"


def test_wrong_secrets_unknown_users_and_access_tokens_as_secrets_are_one_refusal(accounts):
    accounts.set_password("ann", "correct horse battery")
    bob_token = accounts.issue_token("bob")
    access = accounts.login("ann", "correct horse battery").token
    attempts = [
        ("ann", "wrong horse battery"),
        ("nobody", "correct horse battery"),
        ("ann", bob_token),  # another user's API token
        ("bob", "x" * 12),  # bob has no password at all
        ("ann", access),  # an access token does not log in again (it would never expire)
        ("", "correct horse battery"),
    ]
    messages = set()
    for name, secret in attempts:
        with pytest.raises(Unauthorized) as refused:
            accounts.login(name, secret)
        messages.add(refused.value.message)
    assert messages <= {
        "the user name or the secret is wrong",
        "a login needs a user name and a password (or an API token)",
    }


def test_expiry_revocation_and_deactivation_end_a_token_at_once(accounts):
    accounts.set_password("ann", "correct horse battery")
    issued = accounts.login("ann", "correct horse battery")
    with accounts.store.write() as s:
        s.get(Token, token_id_of(issued.token)).expires = utcnow() - timedelta(seconds=1)
    with pytest.raises(Unauthorized, match="expired"):
        accounts.authenticate(issued.token)
    with pytest.raises(Unauthorized):
        accounts.session_principal(token_id_of(issued.token))

    fresh = accounts.login("ann", "correct horse battery").token
    assert accounts.authenticate(fresh).name == "ann"  # verified once: the secret check is now cached
    accounts.revoke_tokens("ann", actor="boss")
    with pytest.raises(Unauthorized):
        accounts.authenticate(fresh)

    again = accounts.login("ann", "correct horse battery").token
    accounts.set_active("ann", False, actor="boss")
    with pytest.raises(Unauthorized):
        accounts.authenticate(again)
    with pytest.raises(Unauthorized, match="wrong"):
        accounts.login("ann", "correct horse battery")


def test_passwords_are_hashed_and_long_enough(accounts):
    with pytest.raises(Exception, match="at least 10"):
        accounts.set_password("ann", "short")
    accounts.set_password("ann", "correct horse battery")
    with accounts.store.read() as s:
        from review.schema import User

        stored = s.execute(select(User.password_hash).where(User.name == "ann")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


def test_user_management_is_in_the_audit_log(accounts):
    accounts.set_password("ann", "correct horse battery", actor="boss")
    token = accounts.issue_token("ann", actor="boss")
    accounts.login("ann", token)
    accounts.revoke_tokens("ann", actor="boss")
    accounts.set_active("ann", False, actor="boss")
    with accounts.store.read() as s:
        events = [
            (e.actor, e.action, e.case_id) for e in s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
        ]
    assert events == [
        ("boss", "user_added", None),
        ("boss", "user_added", None),
        ("boss", "password_set", None),
        ("boss", "token_issued", None),
        ("ann", "login", None),
        ("boss", "tokens_revoked", None),
        ("boss", "user_deactivated", None),
    ]


def test_an_older_store_gets_the_new_columns(tmp_path):
    """A store made before passwords and access tokens: the columns are added at start, its tokens keep working."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(64) UNIQUE, role VARCHAR(16), "
            "active BOOLEAN, created DATETIME)"
        )
        db.execute(
            "CREATE TABLE tokens (id VARCHAR(32) PRIMARY KEY, user_id INTEGER, secret_hash VARCHAR(200), "
            "created DATETIME, revoked DATETIME)"
        )
    accounts = Accounts(ReviewStore(f"sqlite:///{path}", tmp_path / "versions"))
    accounts.add_user("old", "admin")
    token = accounts.issue_token("old")
    assert accounts.authenticate(token).name == "old"
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
    assert {"kind", "expires"} <= columns


def test_a_token_check_is_trusted_for_at_most_a_second_in_each_process(accounts):
    """Decided: the gate may cache a token check for at most 1 s, so a revocation or a deactivation made by another
    process (the users command, another server of the team) takes effect within that; this process's own at once."""
    token = accounts.issue_token("ann")
    statements = []
    engines = {accounts.store.engine, accounts.store._read_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(50):
        assert accounts.authenticate(token).name == "ann"
    assert len(statements) <= 3  # one check (its row and user), not fifty
    other = Accounts(accounts.store)  # another process's view of the same store
    other.set_active("ann", False, actor="boss")
    time.sleep(TOKEN_CHECK_SECONDS + 0.05)
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)
    bob = accounts.issue_token("bob")
    assert accounts.authenticate(bob).name == "bob"
    other.revoke_tokens("bob", actor="boss")
    time.sleep(TOKEN_CHECK_SECONDS + 0.05)
    with pytest.raises(Unauthorized):
        accounts.authenticate(bob)


def test_a_user_a_viewer_names_is_looked_up_at_most_once_a_second(accounts):
    """Next Sample names its user (``client_id``) on every request: that lookup has the token check's bound."""
    statements = []
    for engine in {accounts.store.engine, accounts.store._read_engine}:
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(20):
        assert accounts.by_name("ann").name == "ann"
    assert len(statements) <= 2  # one lookup (BEGIN and its SELECT), not twenty
    assert accounts.by_name("nobody") is None and accounts.by_name("nobody") is None  # never a stale "no such user"
    other = Accounts(accounts.store)  # another process deactivates ann: this one follows within the bound
    other.set_active("ann", False, actor="boss")
    time.sleep(TOKEN_CHECK_SECONDS + 0.05)
    assert accounts.by_name("ann") is None
    other.set_active("ann", True, actor="boss")
    assert accounts.by_name("ann").name == "ann"
    accounts.set_active("ann", False, actor="boss")  # this process's own deactivation holds at once
    assert accounts.by_name("ann") is None
