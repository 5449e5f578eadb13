"""Users, roles and API tokens.

A token reads ``amos_<id>_<secret>``: the id finds the row, the secret is checked against its Argon2id hash
(argon2-cffi). The secret is shown once, when made, and never stored. Argon2 is deliberately slow (tens of ms), so a
verified secret is remembered in this process for a few minutes, keyed by a SHA-256 of the whole token; the token
row and its user are still read on every call, so a revocation or deactivation by any process holds at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select

from amoslabel.errors import Conflict, InputError, NotFound
from review.schema import Token, User
from review.store import ReviewStore, utcnow

ROLES = ("junior", "senior", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN = re.compile(r"^amos_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,100})$")
_CACHE_SECONDS = 300.0
_TOKEN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


class Unauthorized(InputError):
    """401: no token, or one that is unknown or revoked."""

    def __init__(self, detail: str):
        super().__init__(detail, status=401)


class Forbidden(InputError):
    """403: a known user whose role or ownership does not allow the operation."""

    def __init__(self, detail: str):
        super().__init__(detail, status=403)


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


def token_id_of(token: str) -> str:
    """The public id part of a well-formed token."""
    match = _TOKEN.match(token or "")
    if not match:
        raise Unauthorized("the token is not valid")
    return match.group(1)


class Accounts:
    """User and token management on the review store."""

    def __init__(self, store: ReviewStore):
        self.store = store
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)  # OWASP's Argon2id minimum
        self._verified: Dict[str, Tuple[Principal, str, float]] = {}
        self._lock = threading.Lock()

    def add_user(self, name: str, role: str) -> Principal:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError("user name: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}, got {str(role)[:20]!r}")
        with self.store.write() as session:
            if session.execute(select(User).where(User.name == name)).scalar_one_or_none():
                raise Conflict(f"user {name!r} exists")
            user = User(name=name, role=role, active=True, created=utcnow())
            session.add(user)
            session.flush()
            return Principal(user.id, user.name, user.role)

    def issue_token(self, name: str) -> str:
        """A new token for ``name``; the only time its secret exists outside the holder's hands."""
        token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self.store.write() as session:
            user = self._user(session, name)
            session.add(Token(id=token_id, user_id=user.id, secret_hash=self._hasher.hash(secret), created=utcnow()))
        return f"amos_{token_id}_{secret}"

    def revoke_tokens(self, name: str) -> int:
        with self.store.write() as session:
            user = self._user(session, name)
            tokens = session.execute(select(Token).where(Token.user_id == user.id, Token.revoked.is_(None))).scalars()
            count = 0
            for token in tokens:
                token.revoked = utcnow()
                count += 1
        self._forget(user_id=user.id)
        return count

    def set_active(self, name: str, active: bool) -> None:
        with self.store.write() as session:
            user = self._user(session, name)
            user.active = active
        self._forget(user_id=user.id)

    def list_users(self):
        with self.store.read() as session:
            return [
                {"name": u.name, "role": u.role, "active": u.active, "created": u.created.isoformat() + "Z"}
                for u in session.execute(select(User).order_by(User.id)).scalars()
            ]

    def by_name(self, name: str) -> Optional[Principal]:
        with self.store.read() as session:
            user = session.execute(select(User).where(User.name == name, User.active.is_(True))).scalar_one_or_none()
            return Principal(user.id, user.name, user.role) if user else None

    def authenticate(self, token: Optional[str]) -> Principal:
        """The principal a token belongs to.

        Raises:
            Unauthorized: no token, a malformed or unknown one, a revoked one, or an inactive user.
        """
        if not token:
            raise Unauthorized("an API token is required (header 'Authorization: Bearer amos_...')")
        match = _TOKEN.match(token)
        if not match:
            raise Unauthorized("the token is not valid")
        key = hashlib.sha256(token.encode()).hexdigest()
        # The token row and the user are read on every call, so a revocation or deactivation made by another
        # process (the users command) holds at once; only the slow Argon2 check of the secret is remembered.
        with self.store.read() as session:
            row = session.get(Token, match.group(1))
            user = session.get(User, row.user_id) if row else None
            if row is None or row.revoked is not None or user is None or not user.active:
                raise Unauthorized("the token is not valid")
            principal = Principal(user.id, user.name, user.role)
            secret_hash = row.secret_hash
        with self._lock:
            hit = self._verified.get(key)
        if not (hit and hit[1] == row.id and time.monotonic() - hit[2] < _CACHE_SECONDS):
            try:
                self._hasher.verify(secret_hash, match.group(2))
            except (VerificationError, InvalidHashError):
                raise Unauthorized("the token is not valid") from None
            with self._lock:
                self._verified[key] = (principal, row.id, time.monotonic())
        return principal

    def session_principal(self, token_id: str) -> Principal:
        """The user of a web session opened with token ``token_id``, while that token and user are still valid."""
        with self.store.read() as session:
            row = session.get(Token, str(token_id))
            user = session.get(User, row.user_id) if row else None
            if row is None or row.revoked is not None or user is None or not user.active:
                raise Unauthorized("the session's token was revoked or its user deactivated: log in again")
            return Principal(user.id, user.name, user.role)

    def _forget(self, user_id: int) -> None:
        with self._lock:
            for key in [k for k, v in self._verified.items() if v[0].id == user_id]:
                del self._verified[key]

    @staticmethod
    def _user(session, name: str) -> User:
        user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {str(name)[:64]!r}")
        return user
