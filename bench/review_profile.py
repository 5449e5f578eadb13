"""Where a review operation's time goes, without HTTP: next-case, submit and vote run in this process on a store of
10,000 cases (SQLite or a private PostgreSQL), counting SQL statements and CPU per operation, with a cProfile of each.

``make bench-review`` gives the CPU a server spends per operation end to end; this gives the workflow's share of
it (the rest is HTTP, the access gate, MONAI Label's endpoint and Flask), and the functions it goes to.

    python -m bench.review_profile [--cases 10000 --operations 200 --database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from amoslabel.cluster.postgres import PrivatePostgres  # noqa: E402
from amoslabel.config import load_config  # noqa: E402
from bench.review_load import make_studies  # noqa: E402
from review.queries import next_case  # noqa: E402
from review.service import ReviewService  # noqa: E402


def profile(service: ReviewService, operations: int, top: int) -> dict:
    statements = {"count": 0}

    def count(*_):
        statements["count"] += 1

    for engine in {service.store.engine, service.store._read_engine}:
        event.listen(engine, "before_cursor_execute", count)
    junior, senior = service.accounts.by_name("junior0"), service.accounts.by_name("senior0")
    work = {
        "next-case (junior)": lambda _: next_case(service.workflow, junior),
        "next-case (senior)": lambda _: next_case(service.workflow, senior),
    }
    results = {name: _measure(run, operations, statements, top) for name, run in work.items()}
    # submit and vote each need a case claimed first: the claim is not measured
    results["submit"] = _measure(
        lambda case: service.workflow.submit(junior, case),
        operations,
        statements,
        top,
        prepare=lambda: next_case(service.workflow, junior)["case_id"],
    )
    results["vote"] = _measure(
        lambda case: service.workflow.review(senior, case, [], default="approve"),
        operations,
        statements,
        top,
        prepare=lambda: next_case(service.workflow, senior)["case_id"],
    )
    return results


def _measure(run, operations, statements, top, prepare=lambda: None) -> dict:
    """``run(prepare())`` ``operations`` times, timed and counted; then as many again under cProfile (whose own
    cost would distort the timing). Only ``run`` is measured."""
    cpu, count = 0.0, 0
    for _ in range(operations):
        item = prepare()
        before, started = statements["count"], time.process_time()
        run(item)
        cpu += time.process_time() - started
        count += statements["count"] - before
    profiler = cProfile.Profile()
    for _ in range(operations):
        item = prepare()
        profiler.enable()
        run(item)
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return {
        "cpu_ms_per_operation": round(cpu * 1000 / operations, 2),
        "sql_statements_per_operation": round(count / operations, 1),
        "profile": text.getvalue(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--operations", type=int, default=200)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="review-profile-"))
    work.chmod(0o755)
    database = PrivatePostgres(work / "postgres").start() if args.database == "postgresql" else None
    try:
        studies = work / "studies"
        studies.mkdir()
        make_studies(studies, args.cases, 1, 1, database.url if database else None)
        overrides = {"review_database": database.url} if database else {}
        service = ReviewService(load_config(overrides=overrides), str(studies))
        results = profile(service, args.operations, args.top)
        service.store.dispose()
    finally:
        if database is not None:
            database.remove()
        shutil.rmtree(work, ignore_errors=True)
    for name, result in results.items():
        print(f"==== {name}\n{result['profile']}")
    print(json.dumps({k: {m: v for m, v in r.items() if m != "profile"} for k, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
