"""Review workflow under load: 10,000 cases, 20 concurrent clients on loopback, through the real servers.

Designs, each on its own fresh 10,000 cases, in one run (``--designs``):
* ``single``: the baseline, one MONAI Label server process on its SQLite file, the clients straight to it;
* ``team2``: two app servers on one PostgreSQL, the clients through HAProxy (``amoslabel.server.team_launch``);
* ``team1``: the same with one app server, back to back only: with ``team2`` it gives the scale-out figure.

The CPU each component spent (app servers, PostgreSQL, HAProxy; user + system, children included) is divided by the
operations of each phase: the figures the goal of at most 4 ms of server CPU per operation (one server) is judged on.

Phases, 20 users each: *paced*, every user pausing a random (exponential, mean ``--think-s``) time between
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

    python -m bench.review_load [--cases 10000 --clients 20 --seconds 60 --designs single,team2,team1]
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
from typing import Dict, List, Optional, Sequence

import numpy as np
import psutil
import requests
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from amoslabel.workspace import BENCH_OUTPUT  # noqa: E402

from amoslabel.cluster.postgres import PrivatePostgres  # noqa: E402
from amoslabel.config import load_config  # noqa: E402
from amoslabel.processes import answers  # noqa: E402
from amoslabel.server.team_launch import Team  # noqa: E402
from amoslabel.server.launch import server_command, server_environment  # noqa: E402
from review.auth import Accounts  # noqa: E402
from review.schema import AuditEvent, Case, LabelVersion  # noqa: E402
from review.service import ReviewService  # noqa: E402
from review.store import utcnow  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(folder: Path, cases: int, juniors: int, seniors: int, database: Optional[str] = None) -> dict:
    """Images, review cases (half pre-labelled, half in review) and users, in the review store at ``database``
    (default: the studies folder's SQLite file); returns {user: role}."""
    image = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16))
    source = folder.parent / "source.nii.gz"
    sitk.WriteImage(image, str(source))
    label = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.uint8))
    label_file = folder.parent / "label.nii.gz"
    sitk.WriteImage(label, str(label_file))
    ids = [f"case{i:05d}" for i in range(cases)]
    for case_id in ids:
        os.symlink(source, folder / f"{case_id}.nii.gz")
    overrides = {"reviewers_per_case": "3"} | ({"review_database": database} if database else {})
    service = ReviewService(load_config(overrides=overrides), str(folder))
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


SESSION_START_REQUESTS = 4  # of each kind: through HAProxy, enough to reach both app servers and both review workers


def _client(url: str, name: str, role: str, token: str, seconds: float, think_s: float, seed: int, out) -> None:
    """One user's loop in its own process (so that client-side work never queues behind another client's GIL)."""
    rng = random.Random(seed)
    session = requests.Session()  # keep-alive, as a viewer or a browser would
    session.headers["Authorization"] = f"Bearer {token}"  # every request, MONAI Label's Next Sample included
    timings, errors = defaultdict(list), defaultdict(int)
    deadline = time.time() + seconds
    if seconds <= 0:  # a session's start: the token checked by every process that serves this user
        for _ in range(SESSION_START_REQUESTS):
            for path in ("/auth/token/valid", "/review/api/me"):  # the app servers' gate, the review workers'
                started = time.perf_counter()
                reply = session.get(url + path, timeout=30)
                timings["session start"].append((time.perf_counter() - started) * 1000)
                errors["session start"] += reply.status_code != 200
        out.put((dict(timings), dict(errors)))
        return

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
            "rate_per_s": round(len(values) / seconds, 1) if seconds else None,
            "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1),
            "errors": errors[kind],
        }
        for kind, values in timings.items()
    }


# Background scoring off: its CPU is the active learner's, not the operations' (the figures divide by operations).
SERVER_CONF = {"preset": "cpu-fast", "active_learning": "false"}


class CpuMeter:
    """CPU seconds (user + system) of some processes and their children, between two readings."""

    def __init__(self, pids: Dict[str, List[int]]):
        self.processes = {name: [psutil.Process(p) for p in found] for name, found in pids.items()}

    def read(self) -> Dict[str, float]:
        totals = {}
        for name, processes in self.processes.items():
            total = 0.0
            for process in processes:
                for member in [process, *process.children(recursive=True)]:
                    try:
                        times = member.cpu_times()
                        total += times.user + times.system
                    except psutil.NoSuchProcess:
                        pass
            totals[name] = total
        return totals


def _measured(meter: CpuMeter, run) -> dict:
    """``run()``'s figures, with the CPU milliseconds each component spent per operation."""
    before = meter.read()
    figures = run()
    after = meter.read()
    operations = sum(r["count"] for r in figures.values())
    figures["cpu_ms_per_operation"] = {
        name: round((after[name] - before[name]) * 1000 / max(operations, 1), 2) for name in after
    }
    return figures


def _wait_answering(url: str, auth: dict, process_alive) -> None:
    if not answers(f"{url}/info/", process_alive, 600, headers=auth):
        raise RuntimeError(f"{url} did not start")


def _setup(work: Path, args, database: Optional[str]) -> tuple:
    studies = work / "studies"
    studies.mkdir(parents=True)
    print(f"setting up {args.cases} cases in {'PostgreSQL' if database else 'SQLite'} ...", flush=True)
    users = make_studies(studies, args.cases, args.clients // 2, args.clients - args.clients // 2, database)
    overrides = {"review_database": database} if database else {}
    service = ReviewService(load_config(overrides=overrides), str(studies))
    tokens = {name: Accounts(service.store).issue_token(name) for name in users}
    service.accounts.add_user("bench_admin", "admin")
    auth = {"Authorization": f"Bearer {service.accounts.issue_token('bench_admin')}"}  # MONAI Label's endpoints
    service.store.dispose()
    return studies, users, tokens, auth


def _phases(url: str, users: dict, tokens: dict, args, meter: CpuMeter, phases: Sequence[str]) -> dict:
    """The phases asked for, each with its CPU per operation."""
    # Each user's first requests to a server process verify their token (Argon2id, slow by design, then remembered
    # for 5 minutes): a session's start, once per person and process, timed here apart from the operations' steady
    # state (in the paced phase it was the p99 of next-case, every user's first operation)
    out = {"session_start": run_clients(url, users, tokens, 0.0)}
    print(f"  session start: {json.dumps(out['session_start'])}", flush=True)
    if "paced" in phases:  # a team at work: every user pauses (mean think_s) between operations
        out["paced"] = _measured(meter, lambda: run_clients(url, users, tokens, args.seconds, think_s=args.think_s))
        print(f"  paced: {json.dumps(out['paced'])}", flush=True)
    if "back_to_back" in phases:  # saturation: latency here is mostly queueing on 2 cores
        out["back_to_back"] = _measured(meter, lambda: run_clients(url, users, tokens, args.seconds))
        print(f"  back to back: {json.dumps(out['back_to_back'])}", flush=True)
    if "two_clients" in phases:  # one junior and one senior back to back: the service time without queueing
        pair = {n: r for n, r in users.items() if n in ("junior0", f"senior{args.clients - args.clients // 2 - 1}")}
        out["two_clients"] = _measured(meter, lambda: run_clients(url, pair, tokens, min(args.seconds, 15)))
        print(f"  two clients: {json.dumps(out['two_clients'])}", flush=True)
    return out


FLOOR = (  # what one request costs a server before any workflow work: (what, method, path)
    ("HTTP, no SQL (GET /auth/)", "GET", "/auth/"),
    ("+ one SELECT (GET /health)", "GET", "/health"),
    ("+ the gate's token check (GET /auth/token/valid)", "GET", "/auth/token/valid"),
    ("review API: Flask + token (GET /review/api/me)", "GET", "/review/api/me"),
)


def _floor(url: str, token: str, meter: CpuMeter, requests_each: int = 300) -> dict:
    """Server CPU (ms) per request of the cheapest requests, one client: where an operation's time goes before the
    workflow does anything."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    out = {}
    for what, method, path in FLOOR:
        for _ in range(10):  # warm: the token's Argon2 check is remembered after the first request
            session.request(method, url + path, timeout=30).raise_for_status()
        before = meter.read()
        for _ in range(requests_each):
            session.request(method, url + path, timeout=30).raise_for_status()
        after = meter.read()
        out[what] = {name: round((after[name] - before[name]) * 1000 / requests_each, 2) for name in after}
    return out


def _listing(url: str, auth: dict) -> dict:
    times = []
    for _ in range(5):
        t = time.perf_counter()
        requests.get(f"{url}/datastore/?output=all", headers=auth, timeout=120).raise_for_status()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": round(statistics.median(times), 1), "max": round(max(times), 1)}


def bench_single(args) -> dict:
    """Today's design: one server process on its SQLite file, clients straight to it."""
    work = Path(tempfile.mkdtemp(prefix="review-load-"))
    studies, users, tokens, auth = _setup(work, args, None)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")
    started = time.time()
    server = subprocess.Popen(
        server_command(str(studies), "127.0.0.1", port, SERVER_CONF),
        env=server_environment(),
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_answering(url, auth, lambda: server.poll() is None)
        print(f"one server on SQLite, up in {time.time() - started:.1f} s", flush=True)
        meter = CpuMeter({"app_servers": [server.pid]})
        report = _phases(url, users, tokens, args, meter, ("paced", "back_to_back", "two_clients"))
        report["monailabel_datastore_output_all_ms"] = _listing(url, auth)
        report["cpu_ms_per_request_floor"] = _floor(url, tokens["junior0"], meter)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def bench_team(args, servers: int, phases: Sequence[str]) -> dict:
    """The team design: ``servers`` app servers and ``args.review_workers`` review workers on one PostgreSQL, the
    clients through HAProxy."""
    work = Path(tempfile.mkdtemp(prefix="review-load-team-"))
    work.chmod(0o755)  # PostgreSQL runs as the postgres user below it
    database = PrivatePostgres(work / "postgres").start()
    try:
        studies, users, tokens, auth = _setup(work, args, database.url)
        team = Team(
            str(studies),
            work / "team",
            [_free_port() for _ in range(servers)],
            _free_port(),
            SERVER_CONF,
            database_url=database.url,
            stats_port=_free_port(),
            review_workers=args.review_workers,
            review_port=_free_port(),
        )
        started = time.time()
        try:
            team.start()
            print(
                f"{servers} app server(s), {args.review_workers} review worker(s) on PostgreSQL behind HAProxy, "
                f"up in {time.time() - started:.1f} s"
            )
            reviewers = [team.reviewers.process.pid] if team.reviewers else []  # gunicorn's master and its workers
            meter = CpuMeter(
                {
                    "app_servers": [s.process.pid for s in team.servers.values()] + reviewers,
                    "postgresql": [database.postmaster_pid()],
                    "haproxy": [team.balancer.process.pid],
                }
            )
            report = _phases(team.url, users, tokens, args, meter, phases)
            if "paced" in phases:
                report["monailabel_datastore_output_all_ms"] = _listing(team.url, auth)
                report["cpu_ms_per_request_floor"] = _floor(team.url, tokens["junior0"], meter)
        finally:
            team.stop()
    finally:
        database.remove()
        shutil.rmtree(work, ignore_errors=True)
    return report


GOALS = {"next-case": 50.0, "vote": 50.0, "submit": 100.0}  # p99 ms, and server CPU <= 4 ms per operation (one server)


def goals(phase: dict) -> dict:
    """The issue's goals against one phase: p99 per operation, errors, and the app servers' CPU per operation."""
    return {
        "p99_ok": {op: phase[op]["p99_ms"] <= limit for op, limit in GOALS.items() if op in phase},
        "errors": sum(r["errors"] for op, r in phase.items() if op in GOALS),
        "server_cpu_ms_per_operation": phase["cpu_ms_per_operation"]["app_servers"],
        "server_cpu_ok": phase["cpu_ms_per_operation"]["app_servers"] <= 4.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase")
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause of a user between operations (paced)")
    parser.add_argument("--review-workers", type=int, default=2, help="review API worker processes of a team")
    parser.add_argument("--out", type=Path, default=BENCH_OUTPUT / "review_load.json", help="the report (JSON)")
    parser.add_argument(
        "--designs",
        default="single,team2,team1",
        help="single: one server on SQLite (the baseline); teamN: N app servers on PostgreSQL behind HAProxy",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="first run this benchmark on the code at git REF (a worktree, the same machine and arguments), then on "
        "this tree, and print both tables: a before and after from one run",
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PATH",
        default=sys.executable,
        help="the baseline's interpreter, when its environment differs (a change of requirements); default: this one",
    )
    args = parser.parse_args(argv)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    rest = argv if argv is not None else sys.argv[1:]
    baseline = run_baseline(args.baseline, rest, args.baseline_python) if args.baseline else None
    report = {"cases": args.cases, "clients": args.clients, "seconds": args.seconds, "think_s": args.think_s}
    for design in designs:
        print(f"== {design}", flush=True)
        if design == "single":
            report[design] = bench_single(args)
        elif design.startswith("team"):
            servers = int(design[4:] or 2)
            # the scale-out figure needs back to back only; the first team design gets every phase
            full = design == next(d for d in designs if d.startswith("team"))
            phases = ("paced", "back_to_back", "two_clients") if full else ("back_to_back",)
            report[design] = bench_team(args, servers, phases)
        else:
            parser.error(f"unknown design {design!r}")
        report[design]["goals"] = {
            p: goals(report[design][p]) for p in ("paced", "back_to_back") if p in report[design]
        }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if baseline is not None:
        print(f"\nbefore (git {args.baseline}):\n{table(baseline)}\n\nafter (this tree):")
    print(table(report))
    for design in designs:
        for what, cpu in report[design].get("cpu_ms_per_request_floor", {}).items():
            print(f"{design}: {what}: server CPU {cpu['app_servers']} ms per request")
    failed = sum(
        r["errors"]
        for d in designs
        for phase in report[d].values()
        if isinstance(phase, dict)
        for op, r in phase.items()
        if op in GOALS
    )
    if failed:  # a figure made of refused requests measures nothing: say so, and fail the command
        print(f"review_load: {failed} operation(s) failed (see the lines above); the figures are not valid")
        return 1
    return 0


def run_baseline(ref: str, argv: Sequence[str], python: str) -> dict:
    """This benchmark of the code at git ``ref`` (a temporary worktree, this environment, this benchmark's own file);
    its report."""
    work = Path(tempfile.mkdtemp(prefix="review-load-baseline-"))
    tree, out = work / "tree", work / "review_load.json"
    rest, skip = [], False
    for arg in argv:  # the same arguments, less this option and the report's path
        if skip:
            skip = False
        elif arg in ("--baseline", "--out", "--baseline-python"):
            skip = True
        elif not arg.startswith(("--baseline=", "--out=", "--baseline-python=")):
            rest.append(arg)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True)
    try:
        shutil.copyfile(Path(__file__), tree / "bench" / "review_load.py")  # the same measurement of the older code
        print(f"== the baseline: git {ref}", flush=True)
        subprocess.run([python, "-m", "bench.review_load", *rest, "--out", str(out)], cwd=tree, check=False)
        if not out.exists():
            raise SystemExit(f"review_load: the baseline at {ref} wrote no report (see its output above)")
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def table(report: dict) -> str:
    """The figures as a Markdown table: one row per design and phase."""
    lines = [
        "| design | phase | next-case p50 / p99 | submit p50 / p99 | vote p50 / p99 | ops/s | app CPU ms/op | "
        "PostgreSQL ms/op | HAProxy ms/op | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for design, result in report.items():
        if not isinstance(result, dict):
            continue
        for phase in ("paced", "back_to_back", "two_clients"):
            figures = result.get(phase)
            if not figures:
                continue
            cells = [
                f"{figures[op]['p50_ms']:.0f} / {figures[op]['p99_ms']:.0f}" if op in figures else "-" for op in GOALS
            ]
            rate = sum(figures[op]["rate_per_s"] for op in figures if op in GOALS)
            cpu = figures["cpu_ms_per_operation"]
            errors = sum(figures[op]["errors"] for op in figures if op in GOALS)
            lines.append(
                f"| {design} | {phase} | {cells[0]} | {cells[2]} | {cells[1]} | {rate:.0f} | {cpu['app_servers']} | "
                f"{cpu.get('postgresql', '-')} | {cpu.get('haproxy', '-')} | {errors} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
