"""What authentication costs a request: ``GET /info/`` with auth on (a token checked by the gate) against auth off,
on two real servers in the same run, and what a login costs (``POST /auth/token``: one Argon2id check).

    make bench-auth          # = python -m bench.auth_cost [--requests 1000]

Each server runs on its own copy of the sample studies (images linked), without the background scorer (it would
share the cores unevenly); requests are sequential, over one keep-alive connection per server, after a warm-up, and
alternate between the two servers in blocks of 50 so that both see the same machine. Results:
``.bench/auth_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import requests  # noqa: E402

from amoslabel.config import load_config  # noqa: E402
from amoslabel.data.importer import import_source  # noqa: E402
from amoslabel.workspace import BENCH_OUTPUT, PROJECT_ROOT  # noqa: E402
from bench.server import start_bench_server  # noqa: E402
from review.service import ReviewService  # noqa: E402

PASSWORD = "bench-password-1"


def _percentiles(ms: List[float]) -> Dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def _time(session: requests.Session, method: str, url: str, n: int, **kwargs) -> List[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        session.request(method, url, timeout=60, **kwargs).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _server(studies: Path, work: Path, auth: bool):
    conf = {"preset": "cpu-fast", "auth": "true" if auth else "false"}
    return start_bench_server(studies, work, conf, f"server-{'auth' if auth else 'open'}.log", {"OMP_NUM_THREADS": "1"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed GET /info/ requests per server")
    parser.add_argument("--logins", type=int, default=50, help="timed logins (POST /auth/token)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    results: Dict[str, Dict] = {}
    processes = []
    sessions: Dict[bool, requests.Session] = {}
    urls: Dict[bool, str] = {}
    try:
        for auth in (True, False):
            studies = work / ("auth" if auth else "open") / "studies"
            import_source(PROJECT_ROOT / "samples" / "shared-data.yaml", studies, link_images=True, progress=False)
            service = ReviewService(load_config(), str(studies))
            service.accounts.add_user("bench", "admin")
            service.accounts.set_password("bench", PASSWORD)
            service.store.dispose()
            process, urls[auth] = _server(studies, work, auth)
            processes.append(process)
            sessions[auth] = requests.Session()
        login = sessions[True].post(
            f"{urls[True]}/auth/token", data={"username": "bench", "password": PASSWORD}, timeout=60
        )
        sessions[True].headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        form = {"username": "bench", "password": PASSWORD}
        logins = _time(requests.Session(), "POST", f"{urls[True]}/auth/token", args.logins, data=form)
        results["login (POST /auth/token)"] = _percentiles(logins)
        times: Dict[bool, List[float]] = {True: [], False: []}
        for auth in (True, False):
            _time(sessions[auth], "GET", f"{urls[auth]}/info/", 50)  # warm-up
        for _ in range(max(1, args.requests // 50)):
            for auth in (True, False):
                times[auth] += _time(sessions[auth], "GET", f"{urls[auth]}/info/", 50)
        results["GET /info/ auth on (token)"] = _percentiles(times[True])
        results["GET /info/ auth off"] = _percentiles(times[False])
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
    on, off = results["GET /info/ auth on (token)"], results["GET /info/ auth off"]
    report = {
        "requests": args.requests,
        "results": results,
        "auth_overhead_ms": {k: round(on[k] - off[k], 2) for k in ("p50_ms", "p99_ms", "mean_ms")},
    }
    BENCH_OUTPUT.mkdir(exist_ok=True)
    (BENCH_OUTPUT / "auth_cost.json").write_text(json.dumps(report, indent=2))
    print("| request | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
    for name, figures in results.items():
        print(f"| {name} | {figures['p50_ms']} | {figures['p99_ms']} | {figures['mean_ms']} |")
    print(f"auth costs GET /info/ {report['auth_overhead_ms']} (on minus off); {BENCH_OUTPUT / 'auth_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
