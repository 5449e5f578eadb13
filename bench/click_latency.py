"""One click round trip through the real server, as 3D Slicer makes it (part ``latency`` of ``make bench-clicks``).

A ``monailabel start_server`` process on the sample studies (``cpu-fast`` preset, background scoring off so that it
does not share the two cores), a UNet version with random weights (the time of a click does not depend on the
weights), and per real CT one junior with the case in their queue. Each click is what Slicer sends for a landmark on
the liver segment (``label`` and the organ's points, result as NRRD), answered from the case's current label on the
server and saved as the junior's label version: the whole round trip, timed at the client.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from amoslabel.config import load_config
from amoslabel.data.importer import import_source
from amoslabel.workspace import PROJECT_ROOT, SHARED_DATA
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


def measure_round_trips(clicks: int, seed: int = 0) -> Dict[str, Any]:
    """p50/p95 of ``clicks`` click round trips on each scan of :data:`SCANS`."""
    work = Path(tempfile.mkdtemp(prefix="bench-clicks-"))
    studies = work / "studies"
    import_source(PROJECT_ROOT / "samples" / "shared-data.yaml", studies, link_images=True, progress=False)
    publish_random_unet(studies, "cpu-fast")
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
            times: List[float] = []
            for _ in tqdm(range(clicks), desc=f"clicks on {case}", unit="click"):
                z, y, x = inside[rng.integers(len(inside))]
                params = {"label": "liver", "liver": [[int(x), int(y), int(z)]], "result_extension": ".nrrd"}
                started = time.perf_counter()
                junior.infer("deepedit", case, params)
                times.append(time.perf_counter() - started)
            ordered = sorted(times)
            out[case] = {
                "size": "x".join(str(n) for n in reversed(liver.shape)),
                "p50_s": round(statistics.median(ordered), 3),
                "p95_s": round(ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)], 3),
                "n": len(ordered),
            }
    finally:
        process.terminate()
        process.wait(timeout=60)
    return out
