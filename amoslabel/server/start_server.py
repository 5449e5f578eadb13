"""MONAI Label's ``start_server``, with HTTP keep-alive connections held open longer than uvicorn's 5 s default.

``python -m amoslabel.server.start_server start_server --app ... --studies ...`` takes exactly
``monailabel.main``'s arguments. MONAI Label calls ``uvicorn.run`` without ``timeout_keep_alive``, so uvicorn closes a
connection idle for 5 s. A client that sends its next request on that connection as the server closes it gets no
answer at all (connection reset): a POST is not retried, so an acknowledged-or-not write is left to guess.
``make bench-review`` hit it once in its paced phase, where users pause a random time between requests;
``make bench-keepalive`` (``bench/keepalive.py``): 2 of 120 POSTs sent about 5 s after the last answer on a
kept-alive connection got no answer at uvicorn's default, none with the timeout below. HAProxy in front purges its
idle connections to a server (half of them every 5 s) long before this (``amoslabel/cluster/haproxy.cfg.template``).
"""

from __future__ import annotations

import functools

import uvicorn

KEEP_ALIVE_S = 75  # nginx's default keepalive_timeout; longer than any pause of a person between two requests


def main() -> None:
    uvicorn.run = functools.partial(uvicorn.run, timeout_keep_alive=KEEP_ALIVE_S)
    from monailabel.main import Main

    Main().run()


if __name__ == "__main__":
    main()
