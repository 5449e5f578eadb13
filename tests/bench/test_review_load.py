"""The review load benchmark runs end to end on both designs (tiny settings): one server on SQLite, and a team of
one app server and one review worker on a private PostgreSQL behind HAProxy, each phase timed, its CPU per operation
measured, no operation failing; `make bench-review` runs 10,000 cases, 20 clients, 60 s phases, and two servers."""

from __future__ import annotations

import json

from bench.review_load import FLOOR, GOALS, main


def test_the_benchmark_measures_both_designs(tmp_path):
    out = tmp_path / "review_load.json"
    tiny = ["--cases", "1000", "--clients", "4", "--seconds", "3", "--think-s", "0.2", "--review-workers", "1"]
    assert main(tiny + ["--designs", "single,team1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for design in ("single", "team1"):
        for phase in ("paced", "back_to_back", "two_clients"):
            figures = report[design][phase]
            assert set(GOALS) <= set(figures), figures
            assert all(figures[op]["count"] > 0 and figures[op]["errors"] == 0 for op in GOALS)
            assert figures["cpu_ms_per_operation"]["app_servers"] > 0
        start = report[design]["session_start"]["session start"]  # the token verified, apart from the operations
        assert start["count"] == 4 * 2 * 4 and start["errors"] == 0
        assert {what for what, _, _ in FLOOR} == set(report[design]["cpu_ms_per_request_floor"])
        assert report[design]["monailabel_datastore_output_all_ms"]["p50"] > 0
    team = report["team1"]["back_to_back"]["cpu_ms_per_operation"]
    assert team["postgresql"] > 0 and team["haproxy"] > 0
