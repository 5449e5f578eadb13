"""``make gpu-check`` in its CPU form (``--device cpu --small``), as the GPU machine would run it: without MONAI
Label, SimpleITK, ITK, Ray or Starlette importable (a ``sitecustomize`` on PYTHONPATH refuses them in the check and
in the DDP rank torchrun starts), so the script cannot come to need what that machine lacks, nor rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

ABSENT_THERE = ("monailabel", "SimpleITK", "itk", "ray", "starlette", "nnunetv2", "sqlalchemy", "flask")

BLOCKER = f'''
import sys

class RefuseAbsentThere:
    """What the GPU machine lacks cannot be imported here either."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_THERE!r}:
            raise ImportError(f"{{name}} is not on the GPU machine")
        return None

sys.meta_path.insert(0, RefuseAbsentThere())
'''


def test_the_cpu_form_measures_every_part_without_what_the_gpu_machine_lacks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    refused = subprocess.run([sys.executable, "-c", "import SimpleITK"], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "not on the GPU machine" in refused.stderr  # the blocker works
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["small"] and report["preset"] == "cpu-fast"

    prelabel = report["prelabel"]
    for run, passes in (("no_tta", 1), ("tta_flip", 8)):
        assert prelabel[run]["passes"] == passes and prelabel[run]["wall_s"] > 0
        assert prelabel[run]["label_zyx"] == list(reversed(prelabel["scan_xyz"]))  # back on the scan's grid
        assert prelabel[run]["network_s"] <= prelabel[run]["wall_s"]
    assert prelabel["tta_flip"]["network_s"] > prelabel["no_tta"]["network_s"]  # eight passes cost more than one

    training = report["training"]
    assert training["fp32"]["steps_per_s"] > 0 and training["fp32"]["last_loss"] > 0
    assert "skipped" in training["amp"]  # AMP is CUDA's; the GPU run measures it

    ddp = report["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["consistency_checks_passed"] >= 1
    assert "torch.distributed.run" in ddp["launcher"]

    clicks = report["clicks"]
    assert clicks["clicks"] == 2 and 0 < clicks["p50_s"] <= clicks["p95_s"]
    assert "[gpu-check] done" in done.stdout
