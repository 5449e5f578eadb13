"""`make bench-clicks` end to end at tiny settings: both starts and both refiners on the synthetic set, NoC per organ
within the cap, minutes by voxel editing and by clicks, and the click round trip through a real server (the real
settings run in the make target; the real scans' part reads them as bench-attention does, tested there)."""

from __future__ import annotations

import json

from bench.clicks import REFINERS, STARTS, main


def test_the_click_bench_counts_clicks_per_organ_and_times_the_round_trip(tmp_path):
    tiny = ["--grid", "24", "--spacing", "16", "--per-source", "3", "--cases", "2", "--seg-steps", "2"]
    tiny += ["--click-steps", "2", "--cap", "3", "--latency-clicks", "1", "--parts", "synthetic,latency"]
    tiny += ["--organs", "1", "3", "6"]  # the spleen, the left kidney and the liver: a fifth of the time of all 15
    networks = ["--networks", str(tmp_path / "networks")]
    assert main(tiny + ["--out", str(tmp_path)] + networks) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "networks" / "networks.pt").is_file()
    assert results["training"]["click_steps"] == 2
    assert "real" not in results
    for name in ("synthetic",):
        boxed = {f"{s} + box + clicks" for s in STARTS} | {
            f"{s} + box + {k} (clicks)" for s in STARTS for k in ("scribbles", "lassos")
        }
        assert set(results[name]) == {f"{s} + {r}" for s in STARTS for r in REFINERS} | boxed
        for key, figures in results[name].items():
            runs = figures["runs"]
            assert runs and all(0 <= r["noc"] <= 3 for r in runs)
            assert {r["organ"] for r in runs} == {"spleen", "left kidney", "liver"}, key
            # the start, then one Dice per interaction (a box, when drawn, is the first)
            assert all(len(r["dice"]) == 1 + r["boxes"] + r["clicks"] for r in runs)
            assert all(r["boxes"] == (1 if key in boxed and r["dice"][0] < 0.9 else 0) for r in runs), key
            assert all(r["boxes"] + r["clicks"] == r["noc"] for r in runs if r["reached"])
            assert all(r["reached"] == (max(r["dice"]) >= 0.9) for r in runs)
            assert figures["median_organ_noc"] is not None and figures["voxel_minutes"] >= 0
            # an annotator who never saw an interaction change nothing never took the brush early
            assert all(r["mixed_minutes"] == r["click_minutes"] for r in runs if r["stalled_at"] is None), key
            assert all(0 < r["stalled_at"] < len(r["dice"]) for r in runs if r["stalled_at"] is not None), key
            assert all(r["noc_lower"] <= r["noc"] and 0 < r["border_share"] <= 1 for r in runs)
            assert figures["median_organ_noc_lower"] <= figures["median_organ_noc"]
            assert all(0 <= figures[key] <= 1 for key in ("dice_start", "dice_after_5", "dice_last"))
            assert figures["dice_start"] == round(sum(r["dice"][0] for r in runs) / len(runs), 3)
    for scan, timings in results["latency"].items():
        assert set(timings) == {"size", "click", "box", "scribble", "lasso", "undo", "redo"}, scan
        for kind, timing in timings.items():
            if kind != "size":
                assert timing["n"] == 1 and 0 < timing["p50_s"] <= timing["p95_s"], (scan, kind)
    table = (tmp_path / "table.md").read_text()
    assert (
        "| prior + clicks |" in table
        and "| segmentor + box + scribbles (clicks) |" in table
        and "## Round trips" in table
        and "| lasso |" in table
        and "NoC@85" in table
    )

    # the trained pair is reused by a run with the same settings: the same figures without training again
    again = tmp_path / "again"
    assert main(tiny + ["--parts", "synthetic", "--out", str(again)] + networks) == 0
    rerun = json.loads((again / "results.json").read_text())
    assert rerun["training"] == results["training"]
    assert rerun["synthetic"] == results["synthetic"]
