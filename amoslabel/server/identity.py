"""MONAI Label's auth contract served from our own user store, and a request's user everywhere in the server.

3D Slicer's MONAI Label module and ``monailabel.client.MONAILabelClient`` ask ``GET /auth/`` whether auth is on; if
it is, they log in at ``POST /auth/token`` (form fields ``username``, ``password``), check the answer with
``GET /auth/token/valid`` and send ``Authorization: <token_type> <access_token>`` on every request. Here the password
is the user's password, or one of the user's API tokens; the access token expires after ``auth.access_token_hours``.
No Keycloak is needed.

A request's user is the gate's principal (:mod:`amoslabel.server.access`), never the ``client_id`` it sends: a
``client_id`` that names another user is refused (403); a missing one, or one that names nobody (Slicer's default
"user-xyz"), becomes the token's user. The MONAI Label endpoints that record a user (uploads, label saves, label
info, Next Sample) are answered by the app's overrides (:mod:`amoslabel.server.routes`), which pass the token's user;
MONAI Label's ``get_current_user`` dependency is left alone (overriding a dependency makes FastAPI analyse it again
on every request: 1.5 ms each, measured).
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any, Dict, List, Optional

from fastapi import Form, Request
from monailabel.config import settings
from monailabel.endpoints.user.auth import DEFAULT_USER, User

from amoslabel.server.access import AccessControl, AccessGate
from amoslabel.config import ConfigError
from review.auth import Accounts, Forbidden, Principal, Unauthorized
from review.logins import client_address

log = logging.getLogger(__name__)

AUTH_CLIENT = "amoslabel"
# MONAI Label's role names, for its own endpoints' view of our users
_MONAI_ROLES = {
    "junior": [settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR],
    "senior": [
        settings.MONAI_LABEL_AUTH_ROLE_USER,
        settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
        settings.MONAI_LABEL_AUTH_ROLE_REVIEWER,
    ],
    "admin": DEFAULT_USER.roles,
}


def principal_of(request: Request) -> Optional[Principal]:
    """The request's authenticated user (None when auth is off)."""
    return getattr(request.state, "principal", None)


def acting_for(params: Dict[str, Any], request: Request, accounts: Accounts) -> Dict[str, Any]:
    """``params`` with ``client_id`` set to the request's user; 403 when it names another user.

    With auth off (loopback only) the client id still names the user, as MONAI Label's plugins send it.
    """
    who = principal_of(request)
    if who is None:
        return params
    named = params.get("client_id")
    if isinstance(named, str) and named and named != who.name and accounts.by_name(named) is not None:
        raise Forbidden(f"client id {named[:64]!r} names another user; this request acts for {who.name}, its token's")
    return {**params, "client_id": who.name}


def username(request: Request) -> str:
    """The name a request acts for, as MONAI Label's endpoint functions take it (``admin`` when auth is off, as
    MONAI Label's own default user)."""
    who = principal_of(request)
    return who.name if who is not None else DEFAULT_USER.username


def monai_user(request: Request) -> User:
    """MONAI Label's ``User`` for the request (its endpoints record ``user.username``)."""
    who = principal_of(request)
    if who is None:
        return DEFAULT_USER
    return User(username=who.name, name=who.name, roles=list(_MONAI_ROLES[who.role]))


def install_auth_routes(fastapi_app, accounts: Accounts, enabled: bool, override_route) -> None:
    """``GET /auth/``, ``POST /auth/token`` and ``GET /auth/token/valid``, as MONAI Label answers them."""

    def auth_enabled():
        return {"enabled": enabled, "client_id": AUTH_CLIENT, "realm": None}

    def access_token(
        request: Request,
        username: str = Form(...),
        password: str = Form(...),
        grant_type: Optional[str] = Form(None),
    ) -> Dict[str, Any]:
        if grant_type not in (None, "", "password"):
            raise Unauthorized("only grant_type=password is supported")
        peer = request.client.host if request.client else None
        issued = accounts.login(username, password, client_address(peer, request.headers.get("x-forwarded-for")))
        lifetime = int(accounts.access_token_lifetime.total_seconds())
        return {"access_token": issued.token, "token_type": "bearer", "expires_in": lifetime}

    def valid_token(request: Request) -> Dict[str, Any]:
        return monai_user(request).model_dump()

    api = settings.MONAI_LABEL_API_STR
    override_route(fastapi_app, f"{api}/auth/", auth_enabled, ["GET"], tags=["Auth"], summary="Is auth enabled")
    override_route(fastapi_app, f"{api}/auth/token", access_token, ["POST"], tags=["Auth"], summary="Log in")
    override_route(fastapi_app, f"{api}/auth/token/valid", valid_token, ["GET"], tags=["Auth"], summary="Token check")


def protect(fastapi_app, gate: AccessGate, infer_per_user: int = 2) -> None:
    """Put the gate in front of the server's whole middleware stack (with each user's share of inference).

    The app has started when this runs (its stack is built), so the gate wraps the built stack rather than going
    through ``add_middleware``.
    """
    stack = fastapi_app.middleware_stack or fastapi_app.build_middleware_stack()
    fastapi_app.middleware_stack = AccessControl(stack, gate, infer_per_user)


def bind_host(argv: Optional[List[str]] = None) -> str:
    """The address this server process listens on: ``--host``/``-i`` of ``monailabel start_server`` (its default,
    0.0.0.0, when not given)."""
    args = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(args):
        if arg in ("--host", "-i") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return "0.0.0.0"


def check_auth_off(host: str) -> None:
    """Auth may be off only on a loopback address; then say so at every start.

    Raises:
        ConfigError: auth is off and the server would listen beyond this machine.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"auth.enabled is false but the server would listen on {host}: turning auth off is allowed only on a "
            "loopback address (--host 127.0.0.1). Every request would act for whatever user it names."
        )
    log.warning(
        "AUTH IS OFF (auth.enabled: false): requests are not authenticated; a viewer's client id names its user. "
        "Allowed only because the server listens on %s.",
        host,
    )
