"""R8: the label store runs out of space: a save is refused with a clear error (507), nothing half-written stays behind,
the server keeps serving reads, and saves work again once space is freed.

The label version store (``<studies>/.amoslabel/label-versions``) is a real 1 MB tmpfs, filled to its last few KB;
the real server is saved to through the review API and through ``monailabel.client`` (3D Slicer's class). Mounting
needs root, as ``make test`` runs here and in CI; without it the test fails and says so.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from amoslabel.config import load_config
from amoslabel.files import FULL
from amoslabel.workspace import Workspace
from review.service import ReviewService
from tests.conftest import ServerProcess
from tests.reliability.conftest import PEOPLE, private_studies, report
from tests.review.conftest import LABEL, add_users


def _versions(server: ServerProcess, token: str, case_id: str) -> list:
    reply = requests.get(
        f"{server.url}/review/api/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    reply.raise_for_status()
    return reply.json()["versions"]


def _save_and_submit(server: ServerProcess, headers: dict) -> requests.Response:
    """A junior's label file through the review API, submitted."""
    return requests.post(
        f"{server.url}/review/api/cases/ct_small/label",
        headers=headers,
        files={"label": ("label.nii.gz", LABEL.read_bytes())},
        data={"submit": "true"},
        timeout=60,
    )


def test_a_full_label_store_refuses_saves_cleanly_and_keeps_serving(shared, tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("disk-full")
    studies = private_studies(shared, root, final=None)
    tokens = add_users(studies, PEOPLE)
    versions_dir = Workspace(studies).label_versions
    versions_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(versions_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"could not mount a small tmpfs (needs root): {mounted.stderr.decode().strip()}")
    server = None
    try:
        service = ReviewService(load_config(), str(studies))  # the case waits for its junior, pre-labelled
        service.workflow.register_case("ct_small")
        service.workflow.record_prelabel("ct_small", str(LABEL), "import", {"source": "test"})
        service.store.dispose()
        server = ServerProcess(studies, root, {"preset": "cpu-fast"})
        server.wait_ready()
        j1 = {"Authorization": f"Bearer {tokens['j1']}"}
        claimed = requests.post(f"{server.url}/activelearning/review_queue", headers=j1, json={"client_id": "j1"})
        assert claimed.json()["id"] == "ct_small", claimed.text
        before = _versions(server, tokens["boss"], "ct_small")
        free = shutil.disk_usage(versions_dir).free
        (versions_dir / "filler").write_bytes(b"\0" * (free - 8192))  # the disk's last 8 KB stay free
        free_kb = shutil.disk_usage(versions_dir).free // 1024

        # the review API's save (a label file and submit) is refused with the reason
        refused = _save_and_submit(server, j1)
        assert refused.status_code == 507, refused.text
        assert refused.json()["detail"] == FULL
        # 3D Slicer's save (PUT /datastore/label) too
        slicer = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="j1")
        slicer._headers["Authorization"] = j1["Authorization"]
        with pytest.raises(MONAILabelClientException) as slicer_refused:
            slicer.save_label("ct_small", str(LABEL), tag="final")
        assert "507" in str(slicer_refused.value) and "storage is full" in str(slicer_refused.value)

        # nothing half-written is left, nothing was recorded, and the server still serves reads
        left = sorted(p.name for p in versions_dir.rglob("*") if p.is_file() and p.name != "filler")
        assert all(not name.startswith((".incoming", ".tmp")) for name in left), left
        assert _versions(server, tokens["boss"], "ct_small") == before
        assert server.http.get(f"{server.url}/datastore/image", params={"image": "ct_small"}, timeout=60).ok
        assert server.http.get(f"{server.url}/info/", timeout=30).ok

        # space freed: the same save goes through, whole
        (versions_dir / "filler").unlink()
        saved = _save_and_submit(server, j1)
        assert saved.status_code == 200, saved.text
        after = _versions(server, tokens["boss"], "ct_small")
        assert len(after) == len(before) + 1
        report("disk_full", {"free_kb_when_refused": free_kb, "refusal": refused.status_code})
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(versions_dir)], capture_output=True)
