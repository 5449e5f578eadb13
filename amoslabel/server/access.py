"""Who may call what: every request to the server acts for an authenticated user, with a role the route allows.

The rules are data (:data:`RULES`, first match wins), read by one gate in front of every route of the server
(:class:`AccessControl`, an ASGI middleware around MONAI Label's own stack). A request that is not public needs
``Authorization: Bearer <token>`` (an access token from ``POST /auth/token``, or an API token), or the review pages'
session cookie (a browser logged in at ``/review/login``: the OHIF viewers send it): none, or an unknown, revoked or
expired token, or a deactivated user's, is answered 401; a role the rule does not allow, 403. A write that carries
only the cookie must come from a same-origin page (``Sec-Fetch-Site``, else ``Origin``): another site's page cannot
make the browser write with the user's session (403). The review pages and API under ``/review`` check their own
session cookie or token (Flask, :mod:`review.api`; its two hot writes in :mod:`amoslabel.server.review_hot_routes`).
A token this process checked within the last second is decided on the event loop, without the thread pool's hop.

The README's role table is this table; ``tests/reliability/test_roles.py`` walks every rule with every role.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from amoslabel.errors import Unavailable
from amoslabel.server.own_threads import OwnThreads
from review.auth import Accounts, Principal, Unauthorized

log = logging.getLogger(__name__)

PUBLIC = "public"  # no token needed: discovery, the login itself, static viewer files
DELEGATED = "delegated"  # the review pages and API check their own session or token
JUNIOR, SENIOR, ADMIN = "junior", "senior", "admin"
EVERYONE = frozenset({JUNIOR, SENIOR, ADMIN})
READ = frozenset({"GET", "HEAD"})
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
GATE_HEADER = "x-amoslabel-gate"


@dataclass(frozen=True)
class Rule:
    """Requests with one of ``methods`` on a path matching ``pattern`` may be made by ``allowed``."""

    methods: FrozenSet[str]
    pattern: str
    allowed: FrozenSet[str] | str
    operation: str

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and re.fullmatch(self.pattern, path) is not None


def _rule(methods, pattern: str, allowed, operation: str) -> Rule:
    methods = frozenset({methods} if isinstance(methods, str) else methods)
    return Rule(methods, pattern, allowed if isinstance(allowed, str) else frozenset(allowed), operation)


RULES: Tuple[Rule, ...] = (
    # discovery, the login, and static files of the viewers
    _rule(READ, r"/(docs|openapi\.json|favicon\.ico)?", PUBLIC, "API description"),
    _rule(READ, r"/static/.*", PUBLIC, "static files"),
    _rule(READ, r"/ohif(/.*)?", PUBLIC, "MONAI Label's OHIF viewer (static files)"),
    _rule("GET", r"/auth/?", PUBLIC, "is auth enabled"),
    _rule("POST", r"/auth/token", PUBLIC, "log in"),
    _rule(READ, r"/health(/leader)?", PUBLIC, "health checks (the load balancer)"),
    _rule(ALL_METHODS, r"/review(/.*)?", DELEGATED, "review pages and API"),
    _rule("GET", r"/auth/token/valid", EVERYONE, "check a token"),
    # what every member of the team reads and does
    _rule("GET", r"/info/?", EVERYONE, "server info"),
    _rule(READ, r"/datastore/?", EVERYONE, "datastore listing"),
    _rule(READ, r"/datastore/(image|label)", EVERYONE, "download a scan or a label (audited)"),
    _rule(READ, r"/datastore/(image|label)/info", EVERYONE, "image or label info"),
    _rule("PUT", r"/datastore/label", EVERYONE, "save a label (the workflow checks the case)"),
    _rule("POST", r"/infer/.+", EVERYONE, "pre-label (infer)"),
    _rule("POST", r"/activelearning/.+", EVERYONE, "Next Sample"),
    _rule(READ, r"/train/?", EVERYONE, "training status"),
    _rule(frozenset({"GET", "PUT", "DELETE"}), r"/session(/.*)?", EVERYONE, "inference session"),
    _rule(READ, r"/proxy/dicom/.*", EVERYONE, "DICOMweb read through the proxy (audited)"),
    _rule(READ, r"/dicom-web/.*", EVERYONE, "DICOMweb read for the OHIF viewer (audited)"),
    _rule("POST", r"/dicom-web/studies(/[0-9.]+)?", {JUNIOR, SENIOR}, "store a SEG from OHIF (a label version)"),
    # reviewers' label notes
    _rule("PUT", r"/datastore/(label/info|updatelabelinfo)", {SENIOR, ADMIN}, "update label info"),
    # administration
    _rule("PUT", r"/datastore/(image)?/?", {ADMIN}, "upload a scan"),
    _rule("PUT", r"/datastore/image/info", {ADMIN}, "update image info"),
    _rule("DELETE", r"/datastore/(image|label)?/?", {ADMIN}, "remove a scan or a label"),
    _rule(READ, r"/datastore/dataset", {ADMIN}, "export the whole dataset"),
    _rule(frozenset({"POST", "DELETE"}), r"/train(/.*)?", {ADMIN}, "start or stop training"),
    _rule(ALL_METHODS, r"/batch(/.*)?", {ADMIN}, "batch inference"),
    _rule(ALL_METHODS, r"/scoring(/.*)?", {ADMIN}, "scoring"),
    _rule(ALL_METHODS, r"/model(/.*)?", {ADMIN}, "model files"),
    _rule(ALL_METHODS, r"/logs(/.*)?", {ADMIN}, "server logs"),
    _rule("POST", r"/reload", {ADMIN}, "reload the app"),
    _rule("POST", r"/proxy/dicom/.*", {ADMIN}, "DICOMweb write through the proxy"),
)
ANY_USER = _rule(ALL_METHODS, r".*", EVERYONE, "anything else")


def rule_for(method: str, path: str) -> Rule:
    """The first rule for ``method path``; an unlisted route needs any logged-in user (then 404 or 405)."""
    return next((rule for rule in RULES if rule.matches(method, path)), ANY_USER)


@dataclass(frozen=True)
class Decision:
    """What the gate decided: ``status`` 0 to let the request through (with its principal, if any)."""

    status: int
    principal: Optional[Principal] = None
    detail: str = ""


def bearer_token(headers: Dict[str, str]) -> Optional[str]:
    """The token of ``Authorization: Bearer <token>`` (any case of "bearer"), or of ``X-Api-Token``."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-token") or None


def same_origin(headers: Dict[str, str]) -> bool:
    """Whether a browser sent the request from a page of the same origin: ``Sec-Fetch-Site`` (every current
    browser sends it), else an ``Origin`` whose host is the request's ``Host``."""
    site = headers.get("sec-fetch-site")
    if site:
        return site == "same-origin"
    origin = headers.get("origin")
    return bool(origin) and urlsplit(origin).netloc == headers.get("host")


DICOMWEB_PATHS = ("/proxy/dicom/", "/dicom-web/")  # the reads through them are audited


class DicomWebReads:
    """Records who read which series through a DICOMweb proxy: once per user and series every ``every_s`` seconds
    (a viewer fetches hundreds of frames of one series)."""

    def __init__(self, record: Callable[[str, str], None], every_s: float = 600.0):
        self.record = record
        self.every_s = every_s
        self._seen: Dict[Tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str, path: str) -> None:
        series = re.search(r"/series/([0-9.]+)", path) or re.search(r"/studies/([0-9.]+)", path)
        key = (user, series.group(1) if series else path[:200])
        now = time.monotonic()
        with self._lock:
            if now - self._seen.get(key, -1e9) < self.every_s:
                return
            self._seen[key] = now
        try:
            self.record(user, key[1])
        except Exception:  # the audit must not break the read; it is logged
            log.exception("recording a DICOMweb read failed")


class AccessGate:
    """Decides each request by :data:`RULES`, the caller's token and role. Reads through the DICOMweb proxy are
    recorded (``on_dicomweb_read(user, uid)``, see :class:`DicomWebReads`)."""

    def __init__(
        self,
        accounts: Accounts,
        api_prefix: str = "",
        on_dicomweb_read: Optional[Callable[[str, str], None]] = None,
        rules: Sequence[Rule] = RULES,
        session_user: Optional[Callable[[Optional[str]], Optional[Principal]]] = None,
    ):
        """
        Args:
            session_user: the user of a ``Cookie`` header's review session (None: none, or not valid); without it
                only bearer tokens are taken.
        """
        self.accounts = accounts
        self.session_user = session_user
        self.api_prefix = api_prefix.rstrip("/")
        self.reads = DicomWebReads(on_dicomweb_read) if on_dicomweb_read is not None else None
        self.rules = rules

    def decide(self, method: str, path: str, headers: Dict[str, str]) -> Decision:
        """The decision on a request (a token check may read the store: call it off the event loop)."""
        return self._decide(method, path, headers, from_memory=False)

    def decide_from_memory(self, method: str, path: str, headers: Dict[str, str]) -> Optional[Decision]:
        """The decision when it needs nothing from the store: a public route, or a bearer token this process checked
        within ``TOKEN_CHECK_SECONDS`` (:meth:`review.auth.Accounts.recently_checked`). None when it does: a token to
        check, a session cookie, or a DICOMweb read to record."""
        return self._decide(method, path, headers, from_memory=True)

    def _decide(self, method: str, path: str, headers: Dict[str, str], from_memory: bool) -> Optional[Decision]:
        if method == "OPTIONS":
            return Decision(0)  # CORS preflight: answered by MONAI Label's CORS middleware, never with data
        if self.api_prefix and path.startswith(self.api_prefix):
            path = path[len(self.api_prefix) :] or "/"
        rule = next((r for r in self.rules if r.matches(method, path)), ANY_USER)
        if rule.allowed in (PUBLIC, DELEGATED):
            return Decision(0)
        token = bearer_token(headers)
        who = None
        if token is None and self.session_user is not None and headers.get("cookie"):
            if from_memory:
                return None
            who = self.session_user(headers["cookie"])
            if who is not None and method not in READ and not same_origin(headers):
                return Decision(403, who, "a write with the review session must come from a page of this server")
        if who is None and from_memory:
            who = self.accounts.recently_checked(token)
            if who is None:
                return None
        if who is None:
            try:
                who = self.accounts.authenticate(token)
            except Unauthorized as refused:
                hint = " - or, in a browser, log in at /review/login" if token is None and self.session_user else ""
                return Decision(401, detail=refused.message + hint)
        if who.role not in rule.allowed:
            roles = " or ".join(sorted(rule.allowed))
            return Decision(403, who, f"{rule.operation}: {who.name} is {_article(who.role)} {who.role}; needs {roles}")
        if path.startswith(DICOMWEB_PATHS) and method in READ and self.reads is not None:
            if from_memory:
                return None
            self.reads(who.name, path)
        return Decision(0, who)


class InferenceShares:
    """At most ``per_user`` inference requests of one user running at once in this process; the next is refused
    (429) rather than queued, so that one user cannot fill the server's threads and make everyone else wait."""

    def __init__(self, per_user: int):
        self.per_user = int(per_user)
        self._running: Dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, user: str) -> bool:
        with self._lock:
            if self._running.get(user, 0) >= self.per_user:
                return False
            self._running[user] = self._running.get(user, 0) + 1
            return True

    def give_back(self, user: str) -> None:
        with self._lock:
            left = self._running.get(user, 1) - 1
            if left > 0:
                self._running[user] = left
            else:
                self._running.pop(user, None)


INFER_PATH = re.compile(r"/infer/[^/]+/?")


class AccessControl:
    """ASGI middleware: every HTTP request through :class:`AccessGate`; the principal goes to ``request.state``.

    The gate's token checks run on a thread pool of their own: the endpoints' pool (where inference runs) may be
    full, and a review page or a login must not wait for it. A user's inference requests beyond their share
    (:class:`InferenceShares`) are answered 429.
    """

    def __init__(self, app, gate: AccessGate, infer_per_user: int = 2):
        self.app = app
        self.gate = gate
        self.shares = InferenceShares(infer_per_user)
        self.threads = OwnThreads(GATE_THREADS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        decision = self.gate.decide_from_memory(scope["method"], scope["path"], headers)
        if decision is None:
            # in the thread pool: the token's row is read from the store (and its secret checked with Argon2, 50 ms,
            # the first time), which must not stall the event loop; the hop costs about 0.5 ms (make bench-auth),
            # so a token checked within the last second is decided here, from memory
            try:
                decision = await self.threads.run(self.gate.decide, scope["method"], scope["path"], headers)
            except Unavailable as down:  # the token cannot be checked while the database is down
                decision = Decision(503, detail=down.message)
        user = decision.principal.name if decision.principal is not None else None
        limited = not decision.status and user and scope["method"] == "POST" and _is_infer(self.gate, scope["path"])
        if limited and not self.shares.take(user):
            decision = Decision(
                429, decision.principal, f"you have {self.shares.per_user} inference requests running: wait for one"
            )
            limited = False
        if decision.status:
            body = json.dumps({"detail": decision.detail}).encode()
            response_headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (GATE_HEADER.encode(), b"refused"),  # tells a refusal of the gate from one of the endpoint
            ]
            if decision.status == 401:
                response_headers.append((b"www-authenticate", b"Bearer"))
            elif decision.status == 503:
                response_headers.append((b"retry-after", b"5"))
            elif decision.status == 429:
                response_headers.append((b"retry-after", b"1"))
            await send({"type": "http.response.start", "status": decision.status, "headers": response_headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["principal"] = decision.principal
        try:
            await self.app(scope, receive, send)
        finally:
            if limited:
                self.shares.give_back(user)


GATE_THREADS = 16  # the gate's own threads (a token check is a database read, an Argon2 check the first time)


def _is_infer(gate: AccessGate, path: str) -> bool:
    if gate.api_prefix and path.startswith(gate.api_prefix):
        path = path[len(gate.api_prefix) :] or "/"
    return INFER_PATH.fullmatch(path) is not None


def _article(role: str) -> str:
    return "an" if role[:1] in "aeiou" else "a"
