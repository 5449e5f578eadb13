"""The active-learning simulation runs end to end (tiny settings): every strategy gets a learning curve, the
cases-to-90% figure and the correction effort (minutes and mL); `make al-simulation` runs the real settings."""

from __future__ import annotations

import json

from bench.al_simulation import STRATEGIES, main


def test_the_simulation_runs_every_strategy(tmp_path, capsys):
    tiny = [
        "--per-source",
        "3",
        "--rounds",
        "1",
        "--first-steps",
        "1",
        "--steps",
        "1",
        "--k",
        "1",
        "--start",
        "2",
        "--seeds",
        "2",
    ]
    # 24 voxels of 13.5 mm: the field of view of 32 x 10 mm at 42 % of the voxels (27 -> 16 s alone on 2 cores)
    assert main(tiny + ["--grid", "24", "--spacing", "13.5", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["seeds"][0]
    assert set(run["curves"]) == set(STRATEGIES) == set(run["cases_to_90pct"]) == set(run["effort"])
    for curve in run["curves"].values():
        assert [n for n, _ in curve] == [2, 3] and all(0 <= d <= 1 for _, d in curve)
    liver = run["effort"]["random"]["liver"]
    assert liver["from_empty_ml"] > 0 and liver["from_prelabel_ml"] >= 0
    assert liver["from_empty_min"] > 0 and liver["from_prelabel_min"] >= 0
    assert liver["from_empty_min (slices only)"] > 0 and liver["from_empty_min (contour only)"] > 0
    assert len(results["seeds"]) == 2
    for plot in ("learning_curves_seed0.png", "learning_curves_seed1.png", "learning_curves.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {s} |" in table for s in STRATEGIES) and "| all organs |" in table
    assert "from empty (min)" in table and "evaluation/effort.py" in table
    assert "mean [95 % CI]" in table and "over foreground_random" in table
    # each seed is kept as it ends, and the tables can be made again from those files alone
    assert [json.loads((tmp_path / f"seed{n}.json").read_text())["seed"] for n in (0, 1)] == [0, 1]
    capsys.readouterr()
    assert main(["--report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
