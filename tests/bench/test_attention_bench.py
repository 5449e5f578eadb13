"""`make bench-attention` end to end at tiny settings: both model stages, the synthetic and the real sets, voxel
AUROC and AP per heat, case- and organ-level recall against random; the real settings run in the make target."""

from __future__ import annotations

import json
import re

from bench.attention import HEATS, SCORES, main


def test_the_attention_bench_measures_every_heat_on_both_sets(tmp_path):
    tiny = ["--steps", "1", "2", "--per-source", "3", "--test-per-source", "2", "--grid", "24", "--spacing", "16"]
    assert main(tiny + ["--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [stage["steps"] for stage in results["stages"]] == [1, 2]
    for stage in results["stages"]:
        synthetic, real = stage["sets"]["synthetic"], stage["sets"]["real"]
        assert len(synthetic["cases"]) == 10 and len(real["cases"]) == 3
        for part in (synthetic, real):
            for heat in HEATS:
                voxel = part["voxel"][heat]
                assert 0 <= voxel["auroc"] <= 1 and 0 < voxel["error_rate"] <= 1
        assert set(synthetic["case_level"]) == {"all", "segmentable"}
        level = synthetic["case_level"]["all"]
        assert level["random"]["cases top 10%"] == 0.1 and level["random"]["cases top 20%"] == 0.2
        assert all(0 <= level[h]["organs top 20%"] <= 1 for h in SCORES)
        assert level["counts"]["failing cases"] == sum(bool(m["failed"]) for m in synthetic["cases"].values())
        assert "case_level" not in real  # three real scans make no case-level figure
    table = (tmp_path / "table.md").read_text()
    assert len(re.findall(r"^\| synthetic \| 2 \| [0-9.]+ \| attention \|", table, re.M)) == 1  # voxel level
    assert "| synthetic | 1 | all: all |" in table and "| synthetic | 1 | segmentable: " in table
