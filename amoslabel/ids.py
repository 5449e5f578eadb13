"""Case ids and label tags: checked before they become file names, folder names or database keys."""

from __future__ import annotations

import re
from typing import Any

from amoslabel.errors import InputError

# Ids become file names: letters, digits, '.', '_' and '-', no leading dot, no '..'. Always fullmatch: `$` would
# also match before a final newline (an id "x\n" would pass, and forge a line in a log).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_id(image_id: Any, what: str = "image id") -> str:
    """Return ``image_id`` if it is a safe id, else raise :class:`InputError` (no paths, no control characters)."""
    if not isinstance(image_id, str) or not _ID.fullmatch(image_id) or ".." in image_id:
        raise InputError(
            f"{what} {str(image_id)[:80]!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return image_id


def check_tag(tag: Any) -> str:
    """Return ``tag`` if it is a safe label tag, else raise :class:`InputError`."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InputError(f"label tag {str(tag)[:80]!r} is not valid: use 1-64 letters, digits, '_' or '-'")
    return tag
