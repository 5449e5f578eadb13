"""The team: ``users`` (accounts, passwords and API tokens)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from amoslabel.config import load_config
from amoslabel.errors import InputError


def register(sub) -> None:
    users = sub.add_parser("users", help="users, their passwords and API tokens")
    users.add_argument("action", choices=["add", "token", "password", "revoke", "list", "deactivate", "activate"])
    users.add_argument("name", nargs="?", help="user name (not for list)")
    users.add_argument("--role", choices=["junior", "senior", "admin"], help="for add")
    users.add_argument(
        "--password-stdin",
        action="store_true",
        help="for add and password: read the password from standard input (else `password` asks for it)",
    )
    users.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    users.add_argument("--database", default=None, help="review store URL (default: SQLite in the studies folder)")
    users.set_defaults(run=_users)


def review_service(studies: Path, database):
    from review.service import ReviewService

    overrides = {"review_database": database} if database else {}
    return ReviewService(load_config(overrides=overrides), str(studies))


def accounts_of(studies: Path, database):
    """The team's accounts alone (the review store's users and tokens), without the workflow and the models: an
    administrator's ``users`` command answers in a second, not after importing the server."""
    from review.auth import Accounts
    from review.logins import LoginThrottle
    from review.store import ReviewStore, database_url
    from amoslabel.workspace import Workspace

    config = load_config(overrides={"review_database": database} if database else {})
    store = ReviewStore(config.review.database or database_url(studies), Workspace(studies).label_versions)
    throttle = LoginThrottle(store, config.auth.login_free_failures, config.auth.login_max_delay_s)
    return Accounts(store, config.auth.access_token_hours, throttle)


def attach_datastore(service, studies: Path, storage):
    """Attach the studies folder's own datastore (opened here with ``storage``, apps.yaml's limits) to a review
    service and sync its cases, as at a server's start; returns the datastore."""
    from amoslabel.data.stores import open_datastore

    datastore = open_datastore(str(studies), storage)
    service.attach(datastore)
    service.sync_cases()
    return datastore


def _users(args) -> int:
    accounts = accounts_of(args.studies, args.database)
    actor = f"cli:{getpass.getuser()}"
    if args.action == "list":
        for user in accounts.list_users():
            state = "active" if user["active"] else "inactive"
            print(f"{user['name']:24s} {user['role']:8s} {state:8s} {'password' if user['password'] else ''}")
        return 0
    if not args.name:
        raise InputError(f"users {args.action} needs a user name")
    if args.action == "add":
        if not args.role:
            raise InputError("users add needs --role junior|senior|admin")
        accounts.add_user(args.name, args.role, actor)
        if args.password_stdin:
            accounts.set_password(args.name, _password(True), actor)
        print(accounts.issue_token(args.name, actor))
    elif args.action == "token":
        print(accounts.issue_token(args.name, actor))
    elif args.action == "password":
        accounts.set_password(args.name, _password(args.password_stdin), actor)
        print(f"password of {args.name} set")
    elif args.action == "revoke":
        print(f"revoked {accounts.revoke_tokens(args.name, actor)} token(s)")
    elif args.action in ("deactivate", "activate"):
        accounts.set_active(args.name, args.action == "activate", actor)
        print(f"{args.name} {args.action}d")
    return 0


def _password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or typed twice at a prompt (never an argument: it would show
    in the process list and the shell history)."""
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if first != getpass.getpass("again: "):
        raise InputError("the two passwords differ")
    return first
