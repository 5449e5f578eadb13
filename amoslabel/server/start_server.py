"""MONAI Label's ``start_server``, with HTTP keep-alive connections held open longer than uvicorn's 5 s default.

``python -m amoslabel.server.start_server start_server --app ... --studies ...`` takes exactly
``monailabel.main``'s arguments. MONAI Label calls ``uvicorn.run`` without ``timeout_keep_alive``, so uvicorn closes a
connection idle for 5 s. A client that sends its next request on that connection as the server closes it gets no
answer at all (connection reset): a POST is not retried, so an acknowledged-or-not write is left to guess.
``make bench-review`` hit it once in its paced phase, where users pause a random time between requests; a loop of
60 POSTs sent about 5 s after the last answer on a kept-alive connection saw 2 resets at uvicorn's default
(``bench/keepalive.py``), and none with the timeout below. A load balancer in front (HAProxy) keeps its idle
connections to a server for less than this, so it always closes first (``amoslabel/cluster/haproxy.cfg.template``).
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
