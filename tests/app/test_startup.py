"""Start-up: a bad configuration stops the server with a message naming the key."""

from __future__ import annotations

from tests.conftest import ServerProcess


def test_server_does_not_start_with_a_bad_conf_value(sample_studies, tmp_path):
    proc = ServerProcess(sample_studies, tmp_path, {"preset": "cpu", "sw_overlap": "1.7"})
    try:
        code = proc.process.wait(timeout=120)
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert code != 0
    assert "presets.cpu.inference.sw_overlap" in log and "set by --conf sw_overlap" in log


def test_server_does_not_start_with_an_unknown_conf_key(sample_studies, tmp_path):
    proc = ServerProcess(sample_studies, tmp_path, {"presett": "cpu"})
    try:
        code = proc.process.wait(timeout=120)
    finally:
        proc.stop()
    assert code != 0 and "--conf presett: unknown key" in proc.log_path.read_text()
