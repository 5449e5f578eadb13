"""Review workflow under load: 10,000 cases, 20 concurrent clients on loopback, through the real server.

Two phases, 20 users each: *paced*, every user pausing a random (exponential, mean ``--think-s``) time between
operations, and *back to back*, every user firing the next request as soon as the last returns. Each user is its own
process with a keep-alive session. Then one junior and one senior back to back give the service time alone.

Operations timed (each a real HTTP call to the MONAI Label server running this app):
* next-case: ``POST /activelearning/review_queue`` with the client's ``client_id`` (3D Slicer's Next Sample), which
  finds the user's next case and claims it;
* submit: ``POST /review/api/cases/{id}/submit`` (a junior);
* vote: ``POST /review/api/cases/{id}/reviews`` with a decision for all 15 organs (a senior).
In the same run, MONAI Label's own ``GET /datastore/?output=all`` is timed on the same 10,000-image datastore.

The 10,000 images are one tiny synthetic volume linked 10,000 times (the listing cost does not depend on voxels);
half the cases start pre-labelled (for juniors), half submitted and waiting for review (for seniors).

    python -m bench.review_load [--cases 10000 --clients 20 --seconds 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT  # noqa: E402

from amoslabel.config import load_config  # noqa: E402
from amoslabel.server.launch import server_command, server_environment  # noqa: E402
from review.auth import Accounts  # noqa: E402
from review.schema import AuditEvent, Case, LabelVersion  # noqa: E402
from review.service import ReviewService  # noqa: E402
from review.store import utcnow  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(folder: Path, cases: int, juniors: int, seniors: int) -> dict:
    """Images, review cases (half pre-labelled, half in review) and users; returns {user: role}."""
    image = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16))
    source = folder.parent / "source.nii.gz"
    sitk.WriteImage(image, str(source))
    label = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.uint8))
    label_file = folder.parent / "label.nii.gz"
    sitk.WriteImage(label, str(label_file))
    ids = [f"case{i:05d}" for i in range(cases)]
    for case_id in ids:
        os.symlink(source, folder / f"{case_id}.nii.gz")
    service = ReviewService(load_config(overrides={"reviewers_per_case": "3"}), str(folder))
    accounts = Accounts(service.store)
    users = {f"junior{i}": "junior" for i in range(juniors)} | {f"senior{i}": "senior" for i in range(seniors)}
    for name, role in users.items():
        accounts.add_user(name, role)
    accounts.add_user("author", "junior")
    author = accounts.by_name("author")
    sha, path = service.store.versions.put(ids[0], label_file)
    now = utcnow()
    with service.store.write() as s:
        for n, case_id in enumerate(ids):
            reviewed = n % 2 == 1
            s.add(Case(id=case_id, state="in_review" if reviewed else "prelabelled", round=1, created=now, updated=now))
            s.add(
                AuditEvent(
                    case_id=case_id,
                    actor="bench",
                    action="register",
                    to_state="new",
                    reason="benchmark set-up",
                    at=now,
                    details={},
                )
            )
        s.flush()
        versions = []
        for n, case_id in enumerate(ids):
            reviewed = n % 2 == 1
            versions.append(
                LabelVersion(
                    case_id=case_id,
                    sha256=sha,
                    path=str(path),
                    kind="junior" if reviewed else "prelabel",
                    author_user_id=author.id if reviewed else None,
                    author_model=None if reviewed else "m",
                    round=1,
                    created=now,
                    info={},
                )
            )
        s.add_all(versions)
        s.flush()
        for version in versions:  # the pre-label (or the junior's label) is each case's current label
            s.get(Case, version.case_id).current_version = version.id
    service.store.dispose()
    return users


def _client(url: str, name: str, role: str, token: str, seconds: float, think_s: float, seed: int, out) -> None:
    """One user's loop in its own process (so that client-side work never queues behind another client's GIL)."""
    rng = random.Random(seed)
    session = requests.Session()  # keep-alive, as a viewer or a browser would
    session.headers["Authorization"] = f"Bearer {token}"  # every request, MONAI Label's Next Sample included
    timings, errors = defaultdict(list), defaultdict(int)
    deadline = time.time() + seconds

    def timed(kind: str, method: str, path: str, **kwargs):
        started = time.perf_counter()
        try:
            reply = session.request(method, url + path, timeout=30, **kwargs)
            ok = reply.status_code == 200
        except requests.RequestException:
            reply, ok = None, False
        timings[kind].append((time.perf_counter() - started) * 1000)
        if not ok:
            errors[kind] += 1
            answer = f"{reply.status_code} {reply.text[:200]}" if reply is not None else "no answer"
            print(f"{name}: {kind} {path} failed: {answer}", file=sys.stderr, flush=True)
        return reply if ok else None

    def think() -> None:
        if think_s > 0:  # exponential gaps: the users act independently of each other (Poisson arrivals)
            time.sleep(rng.expovariate(1 / think_s))

    while time.time() < deadline:
        think()
        reply = timed("next-case", "POST", "/activelearning/review_queue", json={"client_id": name})
        case_id = reply.json().get("id") if reply is not None else None
        if not case_id:
            time.sleep(0.05)
            continue
        think()
        if role == "junior":
            timed("submit", "POST", f"/review/api/cases/{case_id}/submit")
        else:
            timed("vote", "POST", f"/review/api/cases/{case_id}/reviews", json={"default": "approve"})
    out.put((dict(timings), dict(errors)))


def run_clients(url: str, users: dict, tokens: dict, seconds: float, think_s: float = 0.0) -> dict:
    """Every user a process; ``think_s`` is each user's mean pause between operations (0: back to back)."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [
        context.Process(target=_client, args=(url, name, role, tokens[name], seconds, think_s, n, out))
        for n, (name, role) in enumerate(users.items())
    ]
    for w in workers:
        w.start()
    timings, errors = defaultdict(list), defaultdict(int)
    for _ in workers:
        their_timings, their_errors = out.get()
        for kind, values in their_timings.items():
            timings[kind] += values
        for kind, count in their_errors.items():
            errors[kind] += count
    for w in workers:
        w.join()
    return {
        kind: {
            "count": len(values),
            "rate_per_s": round(len(values) / seconds, 1),
            "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1),
            "errors": errors[kind],
        }
        for kind, values in timings.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase")
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause of a user between operations (paced)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="review-load-"))
    studies = work / "studies"
    studies.mkdir()
    print(f"setting up {args.cases} cases ...", flush=True)
    users = make_studies(studies, args.cases, args.clients // 2, args.clients - args.clients // 2)
    service = ReviewService(load_config(), str(studies))
    tokens = {name: Accounts(service.store).issue_token(name) for name in users}
    service.accounts.add_user("bench_admin", "admin")
    auth = {"Authorization": f"Bearer {service.accounts.issue_token('bench_admin')}"}  # MONAI Label's endpoints
    service.store.dispose()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")
    started = time.time()
    server = subprocess.Popen(
        server_command(str(studies), "127.0.0.1", port, {"preset": "cpu-fast"}),
        env=server_environment(),
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                if requests.get(f"{url}/info/", headers=auth, timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
            if server.poll() is not None or time.time() - started > 600:
                raise RuntimeError(f"server did not start; see {work / 'server.log'}")
        startup = time.time() - started
        print(f"server up in {startup:.1f} s; {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
        # a team at work: every user pauses (mean think_s) between operations
        paced = run_clients(url, users, tokens, args.seconds, think_s=args.think_s)
        print(f"paced: {json.dumps(paced)}", flush=True)
        # saturation: every user fires back to back; latency here is mostly queueing on 2 cores
        saturated = run_clients(url, users, tokens, args.seconds)
        print(f"back to back: {json.dumps(saturated)}", flush=True)
        # one junior and one senior back to back: the service time without queueing
        pair = {n: r for n, r in users.items() if n in ("junior0", f"senior{args.clients - args.clients // 2 - 1}")}
        single = run_clients(url, pair, tokens, min(args.seconds, 15))
        listing = []
        for _ in range(5):
            t = time.perf_counter()
            requests.get(f"{url}/datastore/?output=all", headers=auth, timeout=120).raise_for_status()
            listing.append((time.perf_counter() - t) * 1000)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    report = {
        "cases": args.cases,
        "clients": args.clients,
        "seconds": args.seconds,
        "server_startup_s": round(startup, 1),
        "think_s": args.think_s,
        "operations_paced": paced,
        "operations_back_to_back": saturated,
        "operations_two_clients_back_to_back": single,
        "monailabel_datastore_output_all_ms": {
            "p50": round(statistics.median(listing), 1),
            "max": round(max(listing), 1),
        },
    }
    slowest_p99 = max(r["p99_ms"] for r in paced.values())
    report["goal_paced"] = {
        "p99_le_20ms": slowest_p99 <= 20,
        "errors": sum(r["errors"] for r in paced.values()),
        "speedup_vs_listing_p99": round(statistics.median(listing) / slowest_p99, 1),
    }
    out = BENCH_OUTPUT / "review_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    failed = sum(r["errors"] for phase in (paced, saturated, single) for r in phase.values())
    if failed:  # a figure made of refused requests measures nothing: say so, and fail the command
        print(f"review_load: {failed} operation(s) failed (see the lines above); the figures are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
