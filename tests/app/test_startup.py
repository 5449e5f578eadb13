"""Start-up: a bad configuration stops the server with a message naming the key; auth off only on loopback."""

from __future__ import annotations

from pathlib import Path

from amoslabel.processes import LoggedProcess
from amoslabel.server.launch import server_command, server_environment
from tests.conftest import NO_SCORER, ServerProcess, free_port


def _failed_start(studies: Path, tmp_path: Path, conf: dict, host: str = "127.0.0.1") -> str:
    """Start a server that must not start; returns its log once it has exited (non-zero)."""
    command = server_command(str(studies), host, free_port(), conf)
    proc = LoggedProcess(command, tmp_path / "server.log", env=server_environment(), cwd=tmp_path)
    try:
        code = proc.process.wait(timeout=120)
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert code != 0, log[-2000:]
    return log


def test_server_does_not_start_with_a_bad_conf_value(sample_studies, tmp_path):
    log = _failed_start(sample_studies, tmp_path, {"preset": "cpu", "sw_overlap": "1.7"})
    assert "presets.cpu.inference.sw_overlap" in log and "set by --conf sw_overlap" in log


def test_server_does_not_start_with_an_unknown_conf_key(sample_studies, tmp_path):
    assert "--conf presett: unknown key" in _failed_start(sample_studies, tmp_path, {"presett": "cpu"})


def test_auth_off_refuses_to_listen_beyond_loopback(sample_studies, tmp_path):
    log = _failed_start(sample_studies, tmp_path, {"preset": "cpu-fast", "auth": "false"}, host="0.0.0.0")
    assert "allowed only on a loopback address" in log


def test_auth_off_on_loopback_serves_without_tokens_and_says_so(sample_studies, tmp_path):
    import requests

    proc = ServerProcess(sample_studies, tmp_path, {"preset": "cpu-fast", "auth": "false", **NO_SCORER})
    try:
        proc.wait_ready()
        assert requests.get(f"{proc.url}/auth/", timeout=10).json()["enabled"] is False
        assert requests.get(f"{proc.url}/info/", timeout=10).status_code == 200  # no token needed
        # the review API keeps its own tokens either way
        assert requests.get(f"{proc.url}/review/api/me", timeout=10).status_code == 401
    finally:
        proc.stop()
    assert "AUTH IS OFF" in proc.log_path.read_text()
