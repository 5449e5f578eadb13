"""`make bench-attention`'s quality part end to end at tiny settings: the estimator learns from simulated corrections
at two model stages, is measured on held-out seeds and the real scans (organ AUROC, failing cases in the top 20 %,
the pass policy's curve), and its cold start is published where a server takes it."""

from __future__ import annotations

import json

import numpy as np

from bench.quality import main
from strategies.quality_history import QualitySource
from amoslabel.workspace import Workspace


def test_the_quality_bench_learns_measures_and_publishes_a_cold_start(tmp_path):
    # at 16 mm and a few dozen steps no organ reaches Dice 0.8: failing is Dice < 0.4 here (the real bench: 0.8)
    tiny = ["--steps", "40", "160", "--per-source", "3", "--fit-per-source", "2", "--test-per-source", "2"]
    tiny += ["--seeds", "2", "--grid", "24", "--spacing", "16", "--failure-dice", "0.4"]
    studies = tmp_path / "studies"
    plot = tmp_path / "curve.png"
    assert main(tiny + ["--out", str(tmp_path), "--plot", str(plot), "--publish", str(studies)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted({stage["steps"] for stage in results["stages"]}) == [40, 160]
    learned = results["estimator"]
    assert learned["units"] > 0 and 0 < learned["failing"] < learned["units"] and 0 <= learned["threshold"] <= 1
    assert set(learned["thresholds"]) == {"40", "160"} and learned["threshold"] == learned["thresholds"]["160"]
    histories = 0
    for stage in results["stages"]:
        for name, part in stage["sets"].items():
            assert part["cases"] == (20 if name.startswith("synthetic") else 3), name
            assert part["failing organs"] <= part["organ units"]
            assert "organ auroc (without outline)" in part, name
            assert set(part["cases top 20%"]) == {"expected failures", "attention mL", "entropy per organ"}
            assert set(part["cases top 20% at share"]) == set(part["cases top 20%"])
            assert all(0 <= v <= 1 for v in part["cases top 20% at share"].values() if v == v), name
            assert 0 < part["best top 20%"] <= 1 or part["failing cases"] == 0, name
            curve = part["curve"]
            assert curve[0]["saved"] == 0 and curve[-1]["saved"] == 1.0  # nothing below 0, everything below 1
            assert all(a["saved"] <= b["saved"] and a["missed"] <= b["missed"] for a, b in zip(curve, curve[1:]))
            auto = part["auto"]  # the server's threshold: auto, chosen from the set's own predictions
            assert 0 <= auto["threshold"] <= 1 and 0 <= auto["saved"] <= 1 and 0 <= auto["missed"] <= 1, name
            # threshold: auto from a history: the other seeds' units (the real scans: every seed's), labelled
            history = part["history"]
            histories += history["threshold"] == history["threshold"]  # a number: the history had enough failures
            assert all(0 <= history[k] <= 1 for k in history if history[k] == history[k]), name
            if name.startswith("real"):  # one set (not a mean of seeds): its curve holds the same figures there
                for chosen in (auto, history) if history["threshold"] == history["threshold"] else (auto,):
                    at = next(row for row in curve if abs(row["threshold"] - chosen["threshold"]) < 1e-9)
                    assert (at["saved"], at["missed"]) == (chosen["saved"], chosen["missed"]), name
    assert histories > 0
    assert "auto from history: threshold" in (tmp_path / "table.md").read_text()
    # the history's growth: with 2 seeds, one size (the other seed), which is the table's leave-one-seed-out history
    for stage in results["stages"]:
        (grown,) = stage["history growth"]
        seeds = next(part for name, part in stage["sets"].items() if name.startswith("synthetic"))
        assert grown["other sets"] == 1 and grown["failing organs in the history"] == seeds["failing organs"] / 2
        assert grown["sets without a threshold"] == sum(s["history"]["threshold"] != s["history"]["threshold"]
                                                        for s in seeds["per seed"])  # fmt: skip
        for key in ("threshold", "saved", "missed"):
            assert np.isclose(grown[key], seeds["history"][key], equal_nan=True), (key, grown, seeds["history"])
    assert "| history: other sets |" in (tmp_path / "table.md").read_text()
    units = np.array([u[4:] for u in results["units"]], dtype=float)  # (dice, predicted chance of failing)
    assert len(units) and ((units[:, 1] >= 0) & (units[:, 1] <= 1)).all()
    assert (
        plot.stat().st_size > 1000
        and "| synthetic, all (mean of 2 seeds) | 160 |" in (tmp_path / "table.md").read_text()
    )
    number, estimator = QualitySource(Workspace(studies).models()).current()
    assert number == 1 and estimator.params() == learned["params"]
