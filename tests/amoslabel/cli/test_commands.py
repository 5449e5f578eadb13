"""The command line as a user runs it (``python -m amoslabel ...`` in a subprocess): clear reports and exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "amoslabel", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_check_config_command():
    ok = _cli("check-config", "--conf", "preset", "full")
    assert ok.returncode == 0 and '"preset": "full"' in ok.stdout
    bad = _cli("check-config", "--conf", "device", "tpu")
    assert bad.returncode == 2 and "'device'" in bad.stderr


def test_import_command_reports_skipped_cases_by_name(shared, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (source / "good.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    done = _cli("import", str(source), "--studies", str(tmp_path / "studies"))
    assert done.returncode == 3
    assert "imported 1" in done.stdout and "skipped broken" in done.stdout
    assert (tmp_path / "studies" / "good.nii.gz").exists()
