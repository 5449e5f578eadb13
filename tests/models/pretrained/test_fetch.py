"""`models fetch`: TotalSegmentator (CT and MRI) and MONAI bundles through their packages' own downloaders, from a
loopback mirror, imported and pre-labelling a real scan through the server; air-gapped `--from`; every failure one
message with nothing registered; nothing opened but the mirror.

The models are made here: nnU-Net's own trainer for 10 iterations on synthetic cases, zipped in TotalSegmentator's
release layout with its class names (no weights come from a hub). The real hosts cannot be reached from here, so:
* TotalSegmentator has no setting for its download URL (a local variable of ``download_pretrained_weights``): a
  ``sitecustomize`` (below) rewrites that URL's host to the mirror where it reaches ``download_url_and_unpack``;
* ``monai.bundle.download`` takes a ``url`` (``--url``): pointed at the mirror, no patch.
"""

from __future__ import annotations

import ast
import re
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk

from amoslabel.errors import InputError
from models.pretrained.fetch import STAGING_PREFIX, fetch_totalsegmentator
from models.pretrained.label_maps import LabelMap
from models.versions import ModelStore
from tests.amoslabel.server.test_first_start import _wait_for_banner
from tests.conftest import NO_SCORER, ROOT, ServerProcess, free_port, login, running
from tests.models.pretrained.test_imported_models import REAL_CT, same_grid, write_bundle

GITHUB = "https://github.com/wasserth/TotalSegmentator/releases/download"
SITECUSTOMIZE = f'''
import os, socket
_log = os.environ.get("AMOSLABEL_TEST_CONNECTIONS")
if _log:  # every connection the process opens, for the test to read
    _connect = socket.socket.connect
    def _recorded(self, address):
        with open(_log, "a") as out:
            out.write(repr(address) + "\\n")
        return _connect(self, address)
    socket.socket.connect = _recorded
_mirror = os.environ.get("AMOSLABEL_TEST_TOTALSEG_MIRROR")
if _mirror:  # TotalSegmentator's one download URL, pointed at the test's mirror
    import totalsegmentator.libs as _libs
    _unpack = _libs.download_url_and_unpack
    _libs.download_url_and_unpack = lambda url, folder: _unpack(url.replace("{GITHUB}", _mirror), folder)
'''
TASKS = {297: "totalsegmentator_total", 850: "totalsegmentator_total_mr", 852: "totalsegmentator_total_mr"}


class Mirror(http.server.ThreadingHTTPServer):
    """A loopback HTTP server of the release files; ``delay_s`` slows each 64 KiB (to kill a download midway)."""

    def __init__(self, root: Path):
        self.root, self.hits, self.delay_s = root, [], 0.0
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        path = self.server.root / self.path.lstrip("/")
        self.server.hits.append(self.path)
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for start in range(0, len(data), 1 << 16):
            self.wfile.write(data[start : start + (1 << 16)])
            time.sleep(self.server.delay_s)

    def log_message(self, *args):
        pass


def _zip_folder(folder: Path, zip_path: Path) -> None:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, file.relative_to(folder.parent))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, nnunet_model):
    """TotalSegmentator's release zips of a model trained here (its class names), and a bundle zip, on loopback."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    work = tmp_path_factory.mktemp("release")
    result = nnunet_model
    root = work / "mirror"
    for task_id, map_name in TASKS.items():
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        dataset = work / "releases" / info["foldername"]
        shutil.copytree(result, dataset / result.name)
        organs = LabelMap.load(map_name).organs
        names = {amos: by_sex.get("any") or by_sex.get("male") for amos, by_sex in organs.items()}
        spec = json.loads((dataset / result.name / "dataset.json").read_text())
        spec["labels"] = {"background": 0, **{names[i]: i for i in sorted(names)}}  # TotalSegmentator's class names
        (dataset / result.name / "dataset.json").write_text(json.dumps(spec))
        _zip_folder(dataset, root / info["version"] / f"{info['foldername']}.zip")
    bundle = write_bundle(work / "bundles" / "tiny_bundle")
    _zip_folder(bundle, root / "bundles" / "tiny_bundle.zip")
    server = Mirror(root)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    from amoslabel.data.importer import import_source

    folder = tmp_path_factory.mktemp("studies")
    import_source(ROOT / "samples" / "shared-data.yaml", folder, link_images=True, progress=False)
    return folder


def mirrored(mirror: Mirror, home: Path) -> dict:
    """The environment of a command whose TotalSegmentator downloads come from the mirror (``sitecustomize``), with
    TotalSegmentator's home in ``home`` and every connection recorded."""
    site = home / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        **os.environ,
        "PYTHONPATH": str(site),
        "TOTALSEG_HOME_DIR": str(home / "totalseg"),
        "AMOSLABEL_TEST_TOTALSEG_MIRROR": mirror.url,
        "AMOSLABEL_TEST_CONNECTIONS": str(home / "connections.log"),
    }


def fetch(mirror: Mirror, home: Path, *args: str, delay: float = 0.0) -> subprocess.Popen:
    """``python -m amoslabel models fetch ...`` as a user types it."""
    mirror.delay_s = delay
    command = [sys.executable, "-m", "amoslabel", "models", "fetch", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=mirrored(mirror, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(process: subprocess.Popen) -> str:
    out = process.communicate(timeout=600)[0]
    assert process.returncode == 0, out[-3000:]
    return out


def connections(home: Path) -> set:
    log = home / "connections.log"
    return {ast.literal_eval(line)[:2] for line in log.read_text().splitlines()} if log.exists() else set()


def test_totalsegmentator_ct_and_mri_are_fetched_imported_and_prelabel_by_modality(mirror, studies, tmp_path):
    home = tmp_path / "home"
    models = studies / ".amoslabel" / "models"
    started = time.monotonic()
    out = finished(fetch(mirror, home, "totalsegmentator", "--fast", "--accept-licence", "--studies", str(studies)))
    fetch_s = time.monotonic() - started
    assert "imported totalseg_fast:v1" in out and "fallback_model" in out, out[-2000:]
    finished(fetch(mirror, home, "totalsegmentator", "--task", "total_mr", "--studies", str(studies)))
    assert len(mirror.hits) == 2
    # TotalSegmentator's statistics are off in its own configuration, and nothing but the mirror was reached
    config = json.loads((home / "totalseg" / "config.json").read_text())
    assert config["send_usage_stats"] is False
    assert connections(home) == {("127.0.0.1", mirror.server_address[1])}, connections(home)
    meta = ModelStore(models, "totalseg_fast").get(1).meta
    fetched = meta["imported"]["fetched"]
    assert fetched["task_ids"] == [297] and fetched["licence"]["accepted_by"] and meta["imported"]["fingerprint"]
    assert ModelStore(models, "totalseg_mr").get(1).meta["label_map"]["name"] == "totalsegmentator_total_mr"
    assert not list((home / "totalseg").rglob(f"{STAGING_PREFIX}*"))  # no staging folder left
    # the weights are in the package's folder now: a second fetch downloads nothing
    finished(fetch(mirror, home, "totalsegmentator", "--fast", "--name", "again", "--studies", str(studies)))
    assert len(mirror.hits) == 2

    # one server, a pre-labeler per modality: the CT gets total, the MRI total_mr, each on its exact grid
    conf = {"preset": "cpu-fast", "fallback_model": "ct=totalseg_fast,mri=totalseg_mr", **NO_SCORER}
    (tmp_path / "server").mkdir()
    with running(ServerProcess(studies, tmp_path / "server", conf)) as server:
        client = server.client(tmp_path / "client")
        started = time.monotonic()
        label_file, ct = client.infer("unet", REAL_CT, {})
        first_prelabel_s = time.monotonic() - started
        assert ct["model"] == "totalseg_fast" and ct["requested_model"] == "unet", ct
        scan = sitk.ReadImage(str(studies / f"{REAL_CT}.nii.gz"))
        assert same_grid(sitk.ReadImage(label_file), scan)
        _, mri = client.infer("unet", "ts_abdomen_mr_small", {})
        assert mri["model"] == "totalseg_mr", mri
    figures = {"fetch_and_import_s": round(fetch_s, 1), "first_prelabel_s": round(first_prelabel_s, 1)}
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "models_fetch.json").write_text(json.dumps(figures, indent=1))


def test_a_fetch_killed_midway_registers_nothing_and_the_next_run_starts_clean(mirror, studies, tmp_path):
    home = tmp_path / "home"
    process = fetch(mirror, home, "totalsegmentator", "--task", "total_mr", "--name", "killed", "--studies",
                    str(studies), delay=0.5)  # fmt: skip
    partial = home / "totalseg" / "nnunet" / "results"
    deadline = time.time() + 120
    while not list(partial.glob(f"{STAGING_PREFIX}*/tmp_download_file.zip")):
        assert time.time() < deadline and process.poll() is None, process.stdout.read() if process.stdout else ""
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (studies / ".amoslabel" / "models" / "killed").exists()
    assert not [p for p in partial.iterdir() if not p.name.startswith(STAGING_PREFIX)]  # nothing half-made in place
    out = finished(fetch(mirror, home, "totalsegmentator", "--task", "total_mr", "--name", "killed", "--studies",
                         str(studies)))  # fmt: skip
    assert "imported killed:v1" in out and not list(partial.glob(f"{STAGING_PREFIX}*"))


def test_a_bundle_is_fetched_through_monai_and_an_air_gapped_server_takes_the_same_files(mirror, studies, tmp_path):
    home = tmp_path / "home"
    label_map = mirror.root.parent / "bundles" / "tiny_bundle" / "map.yaml"
    out = finished(
        fetch(
            mirror,
            home,
            "monai-bundle",
            "tiny_bundle",
            "--url",
            f"{mirror.url}/bundles/tiny_bundle.zip",
            "--label-map",
            str(label_map),
            "--studies",
            str(studies),
        )  # fmt: skip
    )
    assert "imported tiny_bundle:v1" in out
    assert connections(home) == {("127.0.0.1", mirror.server_address[1])}
    # air-gapped: the release zips carried in by hand, no connection at all
    carried = mirror.root / "v2.5.0-weights" / "Dataset850_TotalSegMRI_part1_organs_1088subj.zip"
    hits = len(mirror.hits)
    offline = tmp_path / "offline"
    out = finished(fetch(mirror, offline, "totalsegmentator", "--task", "total_mr", "--name", "carried", "--from",
                         str(carried), "--studies", str(studies)))  # fmt: skip
    assert "imported carried:v1" in out and len(mirror.hits) == hits and connections(offline) == set()
    fetched = ModelStore(studies / ".amoslabel" / "models", "carried").get(1).meta["imported"]["fetched"]
    assert fetched["carried_in"][0]["zip"] == carried.name and len(fetched["carried_in"][0]["sha256"]) == 64
    bundle_zip = mirror.root / "bundles" / "tiny_bundle.zip"
    out = finished(fetch(mirror, offline, "monai-bundle", "tiny_bundle", "--from", str(bundle_zip), "--label-map",
                         str(label_map), "--name", "carried_bundle", "--studies", str(studies)))  # fmt: skip
    assert "imported carried_bundle:v1" in out


def test_each_failure_is_one_message_and_registers_nothing(mirror, studies, tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))

    def refused(match: str, **kwargs) -> None:
        with pytest.raises(InputError, match=match):
            fetch_totalsegmentator("total_mr", False, models, name="bad", **kwargs)
        assert not models.exists() or not list(models.glob("bad/v*")), "something was registered"
        assert not list((tmp_path / "totalseg").rglob(f"{STAGING_PREFIX}*"))

    corrupt = tmp_path / "corrupt.zip"
    good = (mirror.root / "v2.5.0-weights" / "Dataset850_TotalSegMRI_part1_organs_1088subj.zip").read_bytes()
    corrupt.write_bytes(good[: len(good) // 2])
    refused("not a whole zip file", source=corrupt)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr("Dataset999_something_else/readme.txt", "not TotalSegmentator's")
    refused("no Dataset850_TotalSegMRI_part1_organs_1088subj folder", source=wrong)
    refused("no such file or folder", source=tmp_path / "nowhere.zip")
    # no network: TotalSegmentator's own downloader against a closed port (its URL rewritten as the subprocesses do)
    import totalsegmentator.libs as libs

    closed = Mirror(tmp_path)
    closed.shutdown()
    closed.server_close()
    unpack = libs.download_url_and_unpack
    monkeypatch.setattr(libs, "download_url_and_unpack", lambda url, d: unpack(url.replace(GITHUB, closed.url), d))
    refused("cannot be reached.*--from FILE.zip")
    # a full disk: TotalSegmentator's weights folder on a 256 KB tmpfs (needs root, as the reliability suite does)
    small = tmp_path / "totalseg" / "nnunet" / "results"
    small.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"could not mount a small tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setattr(libs, "download_url_and_unpack", lambda url, d: unpack(url.replace(GITHUB, mirror.url), d))
        refused("the disk is full")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_make_run_with_pretrained_makes_totalsegmentator_the_first_prelabeler(mirror, tmp_path):
    """``make run PRETRAINED=totalsegmentator-fast``'s command: both tasks fetched at the first start, then a
    junior's first pre-label of a scan without one (Slicer's auto-segmentation) comes from TotalSegmentator."""
    home, port = tmp_path / "home", free_port()
    command = [sys.executable, "-m", "amoslabel", "serve", "--port", str(port), "--workspace", str(tmp_path / "ws")]
    command += ["--conf", "preset", "cpu-fast", "--conf", "active_learning", "false"]
    command += ["--pretrained", "totalsegmentator-fast"]
    mirror.delay_s = 0.0
    process = subprocess.Popen(
        command, cwd=ROOT, env=mirrored(mirror, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        printed = _wait_for_banner(process)
        assert "first pre-labelers: ct: totalseg_fast, mri: totalseg_mr_fast" in printed, printed[-3000:]
        password = dict(re.findall(r"^ {4}(\w+) +(?:admin|junior|senior) +(\S+)$", printed, re.MULTILINE))["junior"]
        junior = login(f"http://127.0.0.1:{port}", tmp_path, "junior", password)
        _, result = junior.infer("unet", "chaos_ct_series", {})  # a CT without any label yet
        assert result["model"] == "totalseg_fast" and result["requested_model"] == "unet", result
    finally:
        process.terminate()
        process.wait(60)
