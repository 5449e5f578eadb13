"""Why a kept-alive connection got no answer: uvicorn's idle timeout racing a client's next request.

Starts uvicorn (the server MONAI Label runs) with a given keep-alive timeout, and has many clients each send a POST,
pause for about that timeout (a few ms either side), and send another POST on the same kept-alive connection. It
prints how many of the second POSTs got no answer (connection reset), for uvicorn's default (5 s) and for the
timeout our servers run with (:data:`amoslabel.server.start_server.KEEP_ALIVE_S`) at the same 5 s pause.

    python -m bench.keepalive [--clients 40 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from amoslabel.server.start_server import KEEP_ALIVE_S  # noqa: E402

PAUSE_S = 5.0  # uvicorn's default keep-alive


async def _echo(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve(port: int, keep_alive: float) -> None:
    uvicorn.run(_echo, host="127.0.0.1", port=port, timeout_keep_alive=keep_alive, log_level="error")


def _client(url: str, rounds: int, seed: int) -> int:
    rng, resets = random.Random(seed), 0
    for _ in range(rounds):
        session = requests.Session()
        session.post(url, json={}).raise_for_status()
        time.sleep(PAUSE_S - 0.004 + rng.random() * 0.008)
        try:
            session.post(url, json={}, timeout=10).raise_for_status()
        except requests.ConnectionError:
            resets += 1
        session.close()
    return resets


def trial(keep_alive: float, clients: int, rounds: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, keep_alive), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            requests.post(url, json={}, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    try:
        with ThreadPoolExecutor(clients) as pool:
            resets = sum(pool.map(lambda n: _client(url, rounds, n), range(clients)))
    finally:
        server.terminate()
        server.join()
    return {"keep_alive_s": keep_alive, "pause_s": PAUSE_S, "posts": clients * rounds, "no_answer": resets}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for keep_alive in (PAUSE_S, KEEP_ALIVE_S):
        print(json.dumps(trial(keep_alive, args.clients, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
