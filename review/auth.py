"""Users, roles, passwords and tokens: who a request acts for.

A token reads ``amos_<id>_<secret>``: the id finds the row, the secret is checked against its Argon2id hash
(argon2-cffi). The secret is shown once, when made, and never stored. Two kinds:

* **API tokens**, made by an admin (``users add``, ``users token``), last until revoked;
* **access tokens**, what a login returns (:meth:`Accounts.login`, MONAI Label's ``POST /auth/token``): they expire
  after ``auth.access_token_hours``. A login takes the user's password, or one of the user's API tokens as the
  secret (so a team that has only tokens can log in 3D Slicer).

Argon2 is deliberately slow (tens of ms), so a verified secret is remembered in this process for a few minutes,
keyed by a SHA-256 of the whole token; the token row and its user are still read on every call, so a revocation,
an expiry or a deactivation by any process holds at once. Every change to users and tokens, and every login, is in
the audit log (case-less events).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Dict, Optional, Tuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select

from amoslabel.errors import Conflict, InputError, NotFound
from review import audit
from review.logins import LoginThrottle
from review.passwords import check_password
from review.schema import Token, User
from review.store import ReviewStore, utcnow

ROLES = ("junior", "senior", "admin")
API, ACCESS = "api", "access"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"amos_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,100})")
_CACHE_SECONDS = 300.0  # how long a verified secret (the slow Argon2 check) is remembered, while its row is valid
# How long a whole token check (its row and its user, read from the store) is trusted in this process: a revocation
# or a deactivation made by another process holds within this bound (decided: at most 1 s; README, Identity).
TOKEN_CHECK_SECONDS = 1.0
_TOKEN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
_WRONG_LOGIN = "the user name or the secret is wrong"  # one message: a login never says which names exist


class Unauthorized(InputError):
    """401: no token, or one that is unknown, revoked or expired."""

    def __init__(self, detail: str):
        super().__init__(detail, status=401)


class Forbidden(InputError):
    """403: a known user whose role or ownership does not allow the operation."""

    def __init__(self, detail: str, **fields):
        super().__init__(detail, status=403, **fields)


@dataclass(frozen=True)
class Principal:
    """The authenticated user of a request."""

    id: int
    name: str
    role: str

    def require(self, *roles: str) -> "Principal":
        if self.role not in roles:
            article = "an" if self.role[0] in "aeiou" else "a"
            raise Forbidden(f"{self.name} is {article} {self.role}; this needs the role {' or '.join(roles)}")
        return self

    @property
    def pseudonym(self) -> str:
        """How the user is named where a name must not appear (a DICOM SEG's description): role and number."""
        return pseudonym(self.id, self.role)


def pseudonym(user_id: int, role: str) -> str:
    """``junior #4``: a user's role and number, which only the user table maps back to a person."""
    return f"{role} #{user_id}"


@dataclass(frozen=True)
class AccessToken:
    """What a login returns: the token (shown once) and when it expires (naive UTC)."""

    token: str
    expires: datetime


def token_id_of(token: str) -> str:
    """The public id part of a well-formed token."""
    match = _TOKEN.fullmatch(token or "")
    if not match:
        raise Unauthorized("the token is not valid")
    return match.group(1)


class Accounts:
    """User, password and token management on the review store."""

    def __init__(self, store: ReviewStore, access_token_hours: float = 12.0, throttle: Optional[LoginThrottle] = None):
        self.store = store
        self.access_token_lifetime = timedelta(hours=access_token_hours)
        self.throttle = throttle or LoginThrottle(store)
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)  # OWASP's Argon2id minimum
        self._dummy_hash: Optional[str] = None  # made at the first login: an unknown user costs a login the same
        self._verified: Dict[str, Tuple[Principal, str, float]] = {}
        # token key -> (principal, kinds it may be used as, its expiry, when its row and user were last read)
        self._checked: Dict[str, Tuple[Principal, str, Optional[datetime], float]] = {}
        self._named: Dict[str, Tuple[Principal, float]] = {}  # by_name's answers, with when they were read
        self._lock = threading.Lock()

    # -- users ----------------------------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, actor: str = "cli") -> Principal:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError("user name: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}, got {str(role)[:20]!r}")
        with self.store.write() as session:
            if session.execute(select(User).where(User.name == name)).scalar_one_or_none():
                raise Conflict(f"user {name!r} exists")
            user = User(name=name, role=role, active=True, created=utcnow())
            session.add(user)
            session.flush()
            _record(session, actor, "user_added", f"{name} ({role})")
            return Principal(user.id, user.name, user.role)

    def set_password(self, name: str, password: str, actor: str = "cli", keep_token: Optional[str] = None) -> int:
        """Set (or replace) a user's password (:func:`review.passwords.check_password`), and end the user's other
        sessions: every access token but ``keep_token`` (the id of the one the change was made with) is revoked. API
        tokens stay (an admin issues and revokes those). Returns how many access tokens were revoked."""
        check_password(password, [name])
        with self.store.write() as session:
            user = self._user(session, name)
            user.password_hash = self._hasher.hash(password)
            live = session.execute(
                select(Token).where(Token.user_id == user.id, Token.kind == ACCESS, Token.revoked.is_(None))
            ).scalars()
            ended = 0
            for token in live:
                if token.id != keep_token:
                    token.revoked = utcnow()
                    ended += 1
            _record(session, actor, "password_set", f"password of {name} set; {ended} other session(s) ended")
        self._forget(user_id=user.id)
        return ended

    def change_own_password(self, who: "Principal", current: str, new: str, keep_token: Optional[str]) -> int:
        """A user's change of their own password: the current one is required (a stolen session alone cannot take
        the account over); the user's other sessions end (:meth:`set_password`)."""
        with self.store.read() as session:
            user = session.get(User, who.id)
            stored = user.password_hash if user is not None else None
        if not isinstance(current, str) or not current:
            raise InputError("give your current password ('current_password') to change it")
        if stored is None or not self._verify(stored, current):
            raise Forbidden("the current password is wrong")
        return self.set_password(who.name, new, actor=who.name, keep_token=keep_token)

    def set_active(self, name: str, active: bool, actor: str = "cli") -> None:
        with self.store.write() as session:
            user = self._user(session, name)
            user.active = active
            _record(session, actor, "user_activated" if active else "user_deactivated", name)
        self._forget(user_id=user.id)

    def list_users(self):
        with self.store.read() as session:
            return [
                {
                    "name": u.name,
                    "role": u.role,
                    "active": u.active,
                    "password": u.password_hash is not None,
                    "created": u.created.isoformat() + "Z",
                }
                for u in session.execute(select(User).order_by(User.id)).scalars()
            ]

    def by_name(self, name: str) -> Optional[Principal]:
        """The active user called ``name`` (None if none). Like a token check, a user found is trusted for
        TOKEN_CHECK_SECONDS (a viewer's every request names its user); a deactivation here holds at once."""
        with self._lock:
            known = self._named.get(name)
        if known is not None and time.monotonic() - known[1] < TOKEN_CHECK_SECONDS:
            return known[0]
        with self.store.read() as session:
            user = session.execute(select(User).where(User.name == name, User.active.is_(True))).scalar_one_or_none()
            principal = Principal(user.id, user.name, user.role) if user else None
        if principal is not None:
            with self._lock:
                if len(self._named) > 10_000:
                    self._named.clear()
                self._named[name] = (principal, time.monotonic())
        return principal

    # -- tokens ---------------------------------------------------------------------------------------------------
    def issue_token(self, name: str, actor: str = "cli") -> str:
        """A new API token for ``name``; the only time its secret exists outside the holder's hands."""
        return self._issue(name, API, None, actor)

    def revoke_tokens(self, name: str, actor: str = "cli") -> int:
        """Revoke every token of ``name`` (API and access tokens alike); how many were live."""
        with self.store.write() as session:
            user = self._user(session, name)
            tokens = session.execute(select(Token).where(Token.user_id == user.id, Token.revoked.is_(None))).scalars()
            count = 0
            for token in tokens:
                token.revoked = utcnow()
                count += 1
            _record(session, actor, "tokens_revoked", f"{count} token(s) of {name}")
        self._forget(user_id=user.id)
        return count

    def login(self, name: str, secret: str, address: Optional[str] = None) -> AccessToken:
        """An access token for ``name``, given the user's password or one of the user's API tokens.

        ``address`` is the client's: failed logins are throttled per name and address (:mod:`review.logins`).

        Raises:
            Unauthorized: an unknown or inactive user, or a wrong secret (one message for all three).
            TooManyRequests: too many failures of this name (or of any name) from this address just now (429).
        """
        if not isinstance(name, str) or not isinstance(secret, str) or not name or not secret:
            raise Unauthorized("a login needs a user name and a password (or an API token)")
        self.throttle.check(name, address)
        try:
            issued = self._login(name, secret)
        except Unauthorized:
            self.throttle.failed(name, address)
            raise
        self.throttle.succeeded(name, address)
        return issued

    def open_session(self, token: str) -> AccessToken:
        """A session of its own for a web login with a token alone: a new access token of the token's user, so that
        logging out (:meth:`revoke_token`) ends the session and never the API token it was opened with."""
        who = self.authenticate(token)
        expires = utcnow() + self.access_token_lifetime
        return AccessToken(self._issue(who.name, ACCESS, expires, who.name, "login with a token"), expires)

    def revoke_token(self, token_id: str, actor: str) -> bool:
        """Revoke one token by its id (a logout); whether it was live."""
        with self.store.write() as session:
            row = session.get(Token, str(token_id))
            if row is None or row.revoked is not None:
                return False
            row.revoked = utcnow()
            _record(session, actor, "logout" if row.kind == ACCESS else "token_revoked", f"token {row.id} revoked")
            user_id = row.user_id
        self._forget(user_id=user_id)
        return True

    def _login(self, name: str, secret: str) -> AccessToken:
        with self.store.read() as session:
            user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
            password_hash = user.password_hash if user is not None else None
            active = user is not None and user.active
        how = None
        if _TOKEN.fullmatch(secret):
            try:
                how = "api token" if self.authenticate(secret, kinds=(API,)).name == name else None
            except Unauthorized:
                how = None
        elif self._verify(password_hash or self._dummy(), secret) and password_hash is not None:
            how = "password"
        if how is None or not active:
            raise Unauthorized(_WRONG_LOGIN)
        expires = utcnow() + self.access_token_lifetime
        token = self._issue(name, ACCESS, expires, name, f"login with {how}")
        return AccessToken(token, expires)

    def recently_checked(self, token: Optional[str], kinds: Tuple[str, ...] = (API, ACCESS)) -> Optional[Principal]:
        """The principal of a token this process checked within TOKEN_CHECK_SECONDS, still unexpired; else None.

        It reads nothing from the store, so an event loop may call it. A check is trusted that long: a revocation or
        deactivation by another process (the users command, another server of the team) holds within the bound; one
        by this process holds at once (``_forget``).
        """
        return self._recent(hashlib.sha256(token.encode()).hexdigest(), kinds) if token else None

    def _recent(self, key: str, kinds: Tuple[str, ...]) -> Optional[Principal]:
        with self._lock:
            checked = self._checked.get(key)
        if checked is None or time.monotonic() - checked[3] >= TOKEN_CHECK_SECONDS or checked[1] not in kinds:
            return None
        return checked[0] if checked[2] is None or checked[2] > utcnow() else None

    def authenticate(self, token: Optional[str], kinds: Tuple[str, ...] = (API, ACCESS)) -> Principal:
        """The principal a token belongs to.

        Raises:
            Unauthorized: no token, a malformed or unknown one, a revoked or expired one, or an inactive user.
        """
        if not token:
            raise Unauthorized("a token is required (header 'Authorization: Bearer amos_...'; log in at /auth/token)")
        match = _TOKEN.fullmatch(token)
        if not match:
            raise Unauthorized("the token is not valid")
        key = hashlib.sha256(token.encode()).hexdigest()
        known = self._recent(key, kinds)
        if known is not None:
            return known
        with self.store.read() as session:
            row = session.get(Token, match.group(1))
            user = session.get(User, row.user_id) if row else None
            if row is None or row.kind not in kinds or row.revoked is not None or user is None or not user.active:
                raise Unauthorized("the token is not valid")
            if row.expires is not None and row.expires <= utcnow():
                raise Unauthorized("the token has expired: log in again")
            principal = Principal(user.id, user.name, user.role)
            secret_hash, kind, expires = row.secret_hash, row.kind, row.expires
        with self._lock:
            hit = self._verified.get(key)
        if not (hit and hit[1] == row.id and time.monotonic() - hit[2] < _CACHE_SECONDS):
            if not self._verify(secret_hash, match.group(2)):
                raise Unauthorized("the token is not valid")
            with self._lock:
                self._verified[key] = (principal, row.id, time.monotonic())
        with self._lock:
            now = time.monotonic()
            if len(self._checked) > 10_000:  # a check older than the bound is of no use: keep the map small
                self._checked = {k: v for k, v in self._checked.items() if now - v[3] < TOKEN_CHECK_SECONDS}
            self._checked[key] = (principal, kind, expires, now)
        return principal

    def session_principal(self, token_id: str) -> Principal:
        """The user of a web session opened with token ``token_id``, while that token and user are still valid."""
        with self.store.read() as session:
            row = session.get(Token, str(token_id))
            user = session.get(User, row.user_id) if row else None
            live = row is not None and row.revoked is None and (row.expires is None or row.expires > utcnow())
            if not live or user is None or not user.active:
                raise Unauthorized("the session's token was revoked or expired, or its user deactivated: log in again")
            return Principal(user.id, user.name, user.role)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _issue(self, name: str, kind: str, expires: Optional[datetime], actor: str, why: str = "") -> str:
        token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self.store.write() as session:
            user = self._user(session, name)
            if not user.active:
                raise Unauthorized(_WRONG_LOGIN) if kind == ACCESS else Conflict(f"user {name!r} is deactivated")
            hashed = self._hasher.hash(secret)
            session.add(
                Token(id=token_id, user_id=user.id, secret_hash=hashed, created=utcnow(), kind=kind, expires=expires)
            )
            action = "login" if kind == ACCESS else "token_issued"
            _record(session, actor, action, why or f"{kind} token {token_id} for {name}", {"token": token_id})
        return f"amos_{token_id}_{secret}"

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _verify(self, secret_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(secret_hash, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _forget(self, user_id: int) -> None:
        with self._lock:
            for key in [k for k, v in self._verified.items() if v[0].id == user_id]:
                del self._verified[key]
            for key in [k for k, v in self._checked.items() if v[0].id == user_id]:
                del self._checked[key]
            for key in [k for k, v in self._named.items() if v[0].id == user_id]:
                del self._named[key]

    @staticmethod
    def _user(session, name: str) -> User:
        user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {str(name)[:64]!r}")
        return user


def _record(session, actor: str, action: str, reason: str, details: Optional[dict] = None) -> None:
    """A user-management event in the audit log (no case)."""
    audit.record(session, None, actor, action, None, None, reason, details)
