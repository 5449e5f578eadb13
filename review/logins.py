"""Throttling of failed logins, per user name and client address.

After ``free_failures`` wrong secrets for one name from one address, each further try of that name from that address
must wait, and the wait doubles with every failure (1 s, 2 s, 4 s ... up to ``max_delay_s``); a try made before the
wait is over is answered 429 with ``Retry-After``, without checking the secret. A success clears the count.

The balance: a lockout keyed by the name alone would let anyone, anywhere, lock a user out by failing on purpose.
Keyed by (name, address), an attacker slows down only their own address: the user logs in from theirs at once. Nor is
there a rule over all names of one address: users behind one NAT would all wait for one attacker among them. The price:
an attacker with many addresses, or one trying one password on many names, gets ``free_failures`` guesses per name and
address before the waits start; the passwords' own strength (:mod:`review.passwords`) is the defence there.

The counts live in the review store (table ``login_failures``), so every server of a team shares them.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import delete

from amoslabel.errors import TooManyRequests
from review.schema import LoginFailure
from review.store import ReviewStore, utcnow

UNKNOWN_ADDRESS = "unknown"


class LoginThrottle:
    """The waits of :mod:`review.logins`, on ``store``."""

    def __init__(self, store: ReviewStore, free_failures: int = 5, max_delay_s: float = 300.0):
        self.store = store
        self.free_failures = int(free_failures)
        self.max_delay_s = float(max_delay_s)

    def check(self, name: str, address: Optional[str]) -> None:
        """Raise :class:`TooManyRequests` while ``name`` must wait at ``address``."""
        now = utcnow()
        with self.store.read() as session:
            row = session.get(LoginFailure, (name[:64], _address(address)))
        if row is not None and row.wait_until is not None and row.wait_until > now:
            wait = (row.wait_until - now).total_seconds()
            raise TooManyRequests(
                f"too many failed logins of {name[:64]!r} from your address: try again in {wait:.0f} s "
                "(logging in from another address is not affected)",
                retry_after_s=wait,
            )

    def failed(self, name: str, address: Optional[str]) -> None:
        """Count a wrong secret for ``name`` at ``address``, and set the wait the count calls for."""
        key = (name[:64], _address(address))
        now = utcnow()
        with self.store.write() as session:
            row = session.get(LoginFailure, key)
            if row is None:
                row = LoginFailure(name=key[0], address=key[1], failures=0, last=now)
                session.add(row)
            row.failures += 1
            row.last = now
            row.wait_until = self._wait_until(row.failures, now)

    def succeeded(self, name: str, address: Optional[str]) -> None:
        """Clear the count of ``name`` at ``address``."""
        with self.store.write() as session:
            session.execute(
                delete(LoginFailure).where(LoginFailure.name == name[:64], LoginFailure.address == _address(address))
            )

    def _wait_until(self, failures: int, now: datetime) -> Optional[datetime]:
        if failures < self.free_failures:
            return None
        seconds = min(self.max_delay_s, 2.0 ** (failures - self.free_failures))
        return now + timedelta(seconds=seconds)


def client_address(peer: Optional[str], forwarded_for: Optional[str]) -> str:
    """The address a login came from: the connection's peer, or, when the peer is this machine (a load balancer in
    front of the server: HAProxy adds ``X-Forwarded-For``), the address the balancer says it forwarded."""
    if forwarded_for and peer and _is_loopback(peer):
        return forwarded_for.split(",")[-1].strip()[:64] or UNKNOWN_ADDRESS
    return (peer or UNKNOWN_ADDRESS)[:64]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _address(address: Optional[str]) -> str:
    return (address or UNKNOWN_ADDRESS)[:64]
