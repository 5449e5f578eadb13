"""What a password must be: long enough, printable, not all whitespace, and not one that guessing tries first.

Guessability is zxcvbn's (Dropbox's estimator, the ``zxcvbn`` package): it knows the common-password lists, names,
dictionary words, keyboard walks, repeats and dates, and scores a password from 0 (among the first thousand guesses)
to 4. A password must score at least :data:`MIN_SCORE`; the user's own name counts as a known word.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

from amoslabel.errors import InputError

MIN_LENGTH = 10
MAX_LENGTH = 256  # Argon2 takes anything; a bound keeps a login's work bounded
MIN_SCORE = 3  # zxcvbn: "safely unguessable: moderate protection from offline slow-hash scenario"


def check_password(password: object, known_words: Sequence[str] = ()) -> str:
    """``password`` if it may be a password, else :class:`InputError` saying why (never echoing it)."""
    if not isinstance(password, str):
        raise InputError("the password must be text")
    if len(password) < MIN_LENGTH:
        raise InputError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InputError(f"a password may have at most {MAX_LENGTH} characters")
    if not password.strip():
        raise InputError("a password cannot be whitespace alone")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in password):
        raise InputError("a password cannot hold control or invisible characters")
    from zxcvbn import zxcvbn

    verdict = zxcvbn(password, user_inputs=[w for w in known_words if w])
    if verdict["score"] < MIN_SCORE:
        advice = verdict["feedback"].get("warning") or "it is too easy to guess"
        suggestions = " ".join(verdict["feedback"].get("suggestions") or [])
        raise InputError(f"choose another password: {advice.rstrip('.')}. {suggestions}".strip())
    return password
