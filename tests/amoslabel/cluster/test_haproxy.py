"""The checked-in HAProxy template, rendered: HAProxy itself accepts it (``haproxy -c``), every server is in its
backends, and the review API falls back to the app servers when a team has no review workers."""

from __future__ import annotations

import subprocess

from amoslabel.cluster.haproxy import HAProxy, render
from tests.conftest import amoslabel_command


def _backend(config: str, name: str) -> str:
    return config.split(f"backend {name}\n", 1)[1].split("\n\n", 1)[0]


def test_the_rendered_configuration_is_valid_and_routes_as_documented(tmp_path):
    servers = ["10.0.0.1:8001", "10.0.0.2:8001"]
    haproxy = HAProxy(tmp_path / "haproxy.cfg", tmp_path / "haproxy.log").write(
        "0.0.0.0:80", servers, "127.0.0.1:8404", ["10.0.0.3:8050"]
    )  # raises when `haproxy -c` refuses it
    config = haproxy.config_path.read_text()
    for backend in ("servers", "leader"):
        assert all(f" {address} check" in _backend(config, backend) for address in servers)
    assert "10.0.0.3:8050" in _backend(config, "review") and "8001" not in _backend(config, "review")
    assert "use_backend leader if training" in config and "use_backend review if review" in config
    assert "http-check expect status 200" in _backend(config, "servers")
    assert "retry-on conn-failure" in config  # a request that reached a server is never sent twice
    for status in ("502", "503"):
        path = config.split(f"errorfile {status} ", 1)[1].split("\n", 1)[0]
        page = open(path, "rb").read()
        assert page.startswith(f"HTTP/1.0 {status} ".encode()) and b"application/json" in page


def test_without_review_workers_the_app_servers_serve_the_review_api():
    config = render("127.0.0.1:8000", ["127.0.0.1:8001"], "127.0.0.1:8100")
    assert "127.0.0.1:8001 check" in _backend(config, "review")


def test_the_command_prints_a_configuration_haproxy_accepts(tmp_path):
    done = amoslabel_command("haproxy-config", "--bind", "0.0.0.0:80", "--server", "h1:8001")
    assert done.returncode == 0, done.stderr
    (tmp_path / "h.cfg").write_text(done.stdout)
    checked = subprocess.run([HAProxy.binary(), "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
