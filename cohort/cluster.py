"""Join a Ray cluster the way the cluster runs: with Ray's token when there is one, and one clear message when the
cluster cannot be reached or refuses this driver.

Ray's token authentication (https://docs.ray.io/en/latest/ray-security/token-auth.html): the head is started with
``RAY_AUTH_MODE=token`` after ``ray get-auth-token --generate`` wrote the token (``~/.ray/auth_token``), and every node
and driver holds the same token (that file, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``). Ray turns token mode on
by itself only for ``auto``; here a driver given a token uses it for any address, and one given none joins a cluster
that runs without authentication. A driver without the cluster's token is not told why by Ray (it gives up after
20 s with "Failed to connect"), and an address where nothing listens makes Ray retry for minutes: both are checked
or explained here, so that the command exits with a message that says what to do.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from amoslabel.errors import InputError

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
HOW_TO_TOKEN = (
    "copy the head node's token (`ray get-auth-token` there prints it) into ~/.ray/auth_token on this machine, or set "
    f"{TOKEN} to it"
)


def token_source(environ=os.environ) -> Optional[str]:
    """Where Ray would read this driver's token from (Ray's order: the variable, the file it names, the default
    file), or None when there is none. A ``RAY_AUTH_TOKEN_PATH`` that cannot be read is refused here: Ray itself
    aborts the process on it."""
    if environ.get(TOKEN, "").strip():
        return TOKEN
    path = environ.get(TOKEN_PATH)
    if path:
        try:
            if not Path(path).read_text().strip():
                raise InputError(f"{TOKEN_PATH}={path} is empty: put the cluster's token in it ({HOW_TO_TOKEN})")
        except OSError as e:
            raise InputError(f"{TOKEN_PATH}={path} cannot be read ({e.strerror}): {HOW_TO_TOKEN}") from None
        return path
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.read_text().strip() else None


def choose_auth_mode(environ=os.environ) -> str:
    """Set ``RAY_AUTH_MODE`` for this driver, before Ray is imported, and return it: what the user set, else
    ``token`` when a token is at hand, else ``disabled``."""
    mode = environ.get(AUTH_MODE)
    if mode:
        if mode.lower() == "token" and token_source(environ) is None:
            raise InputError(f"{AUTH_MODE}=token but this machine has no Ray token: {HOW_TO_TOKEN}")
        return mode.lower()
    mode = "token" if token_source(environ) else "disabled"
    environ[AUTH_MODE] = mode
    return mode


def host_port(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r}: expected local, auto or HOST:PORT (the head's `ray start --port`)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address where nothing listens (Ray would retry it for minutes)."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(
            f"no Ray cluster answers at {address} ({reason}): start one there with `ray start --head --port {port}` "
            "(README: A cohort on several machines), or pass the head's address"
        ) from None


def join(address: str, num_cpus: Optional[float] = None) -> Dict[str, float]:
    """``ray.init`` for ``address`` (``local``: a cluster in this process with ``num_cpus``; ``auto``: the one
    ``ray start`` made on this machine; ``HOST:PORT``). Returns the cluster's resources; :class:`InputError` with
    what to do when Ray cannot be joined."""
    # a cluster of this process keeps Ray's default for new clusters (token mode, a token generated if none)
    mode = os.environ.get(AUTH_MODE, "token") if address == "local" else choose_auth_mode()
    import ray  # after choose_auth_mode: Ray reads RAY_AUTH_MODE when it is imported and at init
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return ray.cluster_resources()
    options: Dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        options["num_cpus"] = num_cpus
    else:
        if address != "auto":
            check_reachable(address)
        options["address"] = address
    try:
        ray.init(**options)
    except AuthenticationError as e:
        raise InputError(f"the Ray cluster at {address} refused this driver's token ({e}): {HOW_TO_TOKEN}") from None
    except ConnectionError as e:
        if address == "auto":
            raise InputError(
                f"no Ray cluster runs on this machine ({e}): start one with `ray start --head`, or pass HOST:PORT"
            ) from None
        if mode == "token":
            why = "this driver's token is not the cluster's"
        else:
            why = "the cluster runs with token authentication and this machine has no token"
        raise InputError(f"the Ray cluster at {address} refused this driver: {why}; {HOW_TO_TOKEN}") from None
    return ray.cluster_resources()
