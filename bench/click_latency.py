"""Interaction round trips through the real server, as 3D Slicer makes them (part ``latency`` of ``make
bench-clicks``), and the review API's undo and redo.

A ``monailabel start_server`` process on the sample studies (``cpu-fast`` preset, background scoring off so that it
does not share the two cores), a UNet version with random weights (the time of a click does not depend on the
weights), and per real CT one junior with the case in their queue. Each round, at a random voxel of the liver:

* ``click``: what Slicer sends for a landmark on the liver segment (``label`` and the organ's points, result NRRD);
* ``box``: Slicer's ROI, 40 voxels a side about it;
* ``scribble``: a foreground stroke 21 voxels long through it, on its axial slice;
* ``lasso``: a foreground square 17 voxels a side about it, on its axial slice;

each answered from the case's current label on the server and saved as the junior's label version: the whole round
trip, timed at the client. Then ``undo`` and ``redo`` of the last answer through the review API (a new label version
each), timed at the client as well.

With a SAM2 checkpoint (``--sam2 FILE.pt``, fetched into the bench's studies as ``models fetch sam2 --from`` does),
every round is asked of the ``sam2`` engine too (``sam2 click``, ``sam2 box``, ...), at ``--sam2-image-size``
(1024 as SAM2 trained). Its time does not depend on the weights' values either: a checkpoint of random weights
(tests/conftest.py's ``made_sam2``) measures it as well as a real one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import requests
import SimpleITK as sitk
from tqdm import tqdm

from amoslabel.config import load_config
from amoslabel.data.importer import import_source
from amoslabel.workspace import PROJECT_ROOT, SHARED_DATA, Workspace
from bench.cohort import publish_random_unet
from bench.server import start_bench_server
from review.service import ReviewService

LIVER = 6
# case id -> (scan to upload, or None for an imported sample; the liver's reference on the scan's grid)
SCANS = {
    "chaos_ct_series": (None, SHARED_DATA / "dicom" / "chaos_ct_series_liver_label.nii.gz"),
    "latency_ct": (SHARED_DATA / "ct" / "ts_abdomen_ct.nii.gz", SHARED_DATA / "ct" / "ts_abdomen_ct_label.nii.gz"),
}


def _client(url: str, tmp: Path, name: str, secret: str):
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(url, tmpdir=str(tmp))
    client.update_auth(client.auth_token(name, secret))
    return client


KINDS = ("click", "box", "scribble", "lasso")


def _interaction(kind: str, x: int, y: int, z: int, shape) -> Dict[str, Any]:
    """The request's interaction of ``kind`` about voxel (x, y, z) (i, j, k), inside a scan of ``shape`` (z, y, x)."""
    size = tuple(reversed(shape))

    def within(value: int, axis: int, pad: int) -> int:
        return int(min(max(value, pad), size[axis] - 1 - pad))

    if kind == "click":
        return {"liver": [[x, y, z]]}
    if kind == "box":
        return {"roi": [max(x - 20, 0), min(x + 20, size[0] - 1), max(y - 20, 0), min(y + 20, size[1] - 1), z, z]}
    cx, cy = within(x, 0, 10), within(y, 1, 10)
    if kind == "scribble":
        return {"scribbles": [{"kind": "foreground", "points": [[cx - 10, cy, z], [cx + 10, cy, z]]}]}
    corners = [[cx - 8, cy - 8, z], [cx + 8, cy - 8, z], [cx + 8, cy + 8, z], [cx - 8, cy + 8, z]]
    return {"lassos": [{"kind": "foreground", "points": corners}]}


def _percentiles(values: List[float]) -> Dict[str, Any]:
    ordered = sorted(values)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)], 3),
        "n": len(ordered),
    }


def measure_round_trips(
    clicks: int, seed: int = 0, sam2: Optional[Path] = None, sam2_image_size: int = 1024
) -> Dict[str, Any]:
    """p50/p95 of ``clicks`` rounds of each interaction kind (:data:`KINDS`), and of undo and redo, on each scan of
    :data:`SCANS`; with ``sam2`` (a checkpoint), each kind of the ``sam2`` engine as well."""
    work = Path(tempfile.mkdtemp(prefix="bench-clicks-"))
    studies = work / "studies"
    import_source(PROJECT_ROOT / "samples" / "shared-data.yaml", studies, link_images=True, progress=False)
    publish_random_unet(studies, "cpu-fast")
    engines = {"": "amos"}
    if sam2 is not None:
        from models.pretrained.sam2_weights import fetch_sam2

        fetch_sam2(Workspace(studies).models(), source=sam2, image_size=sam2_image_size, actor="bench")
        engines["sam2 "] = "sam2"
    service = ReviewService(load_config(), str(studies))
    secrets = {}
    for name, role in [("bench_admin", "admin")] + [(f"bench_junior{i}", "junior") for i in range(len(SCANS))]:
        service.accounts.add_user(name, role, "bench")
        secrets[name] = service.accounts.issue_token(name, "bench")
    service.store.dispose()
    process, url = start_bench_server(studies, work, {"preset": "cpu-fast"})
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {}
    try:
        admin = _client(url, work, "bench_admin", secrets["bench_admin"])
        for i, (case, (upload, reference)) in enumerate(SCANS.items()):
            if upload is not None:
                admin.upload_image(str(upload), image_id=case)
            admin.infer("prior", case, {})  # the case's first pre-label routes it to the least loaded junior
            junior = _client(url, work, f"bench_junior{i}", secrets[f"bench_junior{i}"])
            claimed = junior.next_sample("review_queue", {})
            assert claimed and claimed["id"] == case, claimed
            liver = sitk.GetArrayFromImage(sitk.ReadImage(str(reference))) == LIVER
            inside = np.argwhere(liver)
            kinds = [prefix + kind for prefix in engines for kind in KINDS]
            times: Dict[str, List[float]] = {kind: [] for kind in kinds + ["undo", "redo"]}
            headers = {"Authorization": f"Bearer {secrets[f'bench_junior{i}']}"}
            for _ in tqdm(range(clicks), desc=f"interactions on {case}", unit="round"):
                z, y, x = (int(v) for v in inside[rng.integers(len(inside))])
                for prefix, engine in engines.items():
                    for kind in KINDS:
                        params = {"label": "liver", **_interaction(kind, x, y, z, liver.shape), "engine": engine}
                        started = time.perf_counter()
                        junior.infer("deepedit", case, {**params, "result_extension": ".nrrd"})
                        times[prefix + kind].append(time.perf_counter() - started)
                for step in ("undo", "redo"):
                    started = time.perf_counter()
                    answer = requests.post(f"{url}/review/api/cases/{case}/{step}", headers=headers, timeout=60)
                    times[step].append(time.perf_counter() - started)
                    answer.raise_for_status()
            out[case] = {"size": "x".join(str(n) for n in reversed(liver.shape))}
            out[case].update({kind: _percentiles(values) for kind, values in times.items()})
    finally:
        process.terminate()
        process.wait(timeout=60)
    return out
