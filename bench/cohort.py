"""Cohort benchmark: an AbdomenAtlas-size cohort, simulated, pre-labelled on Ray; the store at that size.

1. **The cohort**: ``--volumes`` synthetic CTs made from the real AMOS/TotalSegmentator label maps in ../shared/data
   (:mod:`amoslabel.data.synthetic`: deformed anatomy, CT-like intensities; SYNTHETIC, not scans), cropped to a
   small field of view so that 2,000 of them run on 2 cores, each linked under ``--cases`` case ids (every id its
   own case: its own workflow, label versions, scores). A UNet version of the ``cpu-fast`` preset is published with
   random weights: the time of a pre-label does not depend on the weights.
2. **Throughput**: ``python -m amoslabel cohort prelabel`` (the real command, a local Ray cluster in its process) on
   ``--measure`` cases with 1 model worker, then on the next ``--measure`` with 2; per stage (read, preprocess,
   network, restore, write) in seconds per case, from the run's summary. **Peer**: the same infer task called one
   case after another in one process, as the server answers one ``/infer`` at a time.
3. ``--full``: the rest of the cohort pre-labelled with 2 workers (so the store holds every case pre-labelled).
4. **The store with that many cases**: opening the datastore, registering the cases, the plan's queries, a junior's
   queue, a case's detail, the datastore's listing; the SQLite file's size.

    python -m bench.cohort                         # 2,000 cases, 100 measured per worker count (~15 min, 2 cores)
    python -m bench.cohort --full                  # and pre-label all 2,000 (about 30 min more)

Everything lands in .bench/cohort/ (results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from tqdm import tqdm  # noqa: E402

from amoslabel.config import load_config  # noqa: E402
from amoslabel.data.synthetic import draw_params, synthesise  # noqa: E402
from amoslabel.workspace import BENCH_OUTPUT, SHARED_DATA, Workspace  # noqa: E402

OUT = BENCH_OUTPUT / "cohort"
CONF = {"preset": "cpu-fast"}
SOURCES = [
    SHARED_DATA / "labels" / "amos_0013_label.nii.gz",
    SHARED_DATA / "labels" / "amos_0024_label.nii.gz",
    SHARED_DATA / "ct" / "ts_abdomen_ct_label.nii.gz",
    SHARED_DATA / "dicom" / "ts_ct_series_label.nii.gz",
]
FOV_VOXELS = (64, 64, 40)  # x, y, z at 3 mm: one 64^3 sliding window of the cpu-fast UNet


def make_volumes(folder: Path, count: int) -> List[Path]:
    """``count`` synthetic CTs at 3 mm, each cropped around its organs to :data:`FOV_VOXELS`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in tqdm(range(count), desc="synthesise", unit="volume"):
        path = folder / f"volume_{n:02d}.nii.gz"
        paths.append(path)
        if path.exists():
            continue
        image, label = synthesise(sitk.ReadImage(str(SOURCES[n % len(SOURCES)])), draw_params(1000 + n, 3.0))
        organs = np.argwhere(sitk.GetArrayFromImage(label) > 0)
        centre = organs.mean(axis=0)[::-1] if len(organs) else np.array(image.GetSize()) / 2  # x, y, z
        start = [int(max(0, min(c - f / 2, s - f))) for c, f, s in zip(centre, FOV_VOXELS, image.GetSize())]
        size = [min(f, s) for f, s in zip(FOV_VOXELS, image.GetSize())]
        sitk.WriteImage(sitk.RegionOfInterest(image, size, start), str(path), useCompression=True)
    return paths


def make_cohort(studies: Path, volumes: List[Path], cases: int) -> None:
    """``cases`` case ids linking the volumes in turn, and the UNet version (random weights)."""

    studies.mkdir(parents=True, exist_ok=True)
    for n in range(cases):
        link = studies / f"cohort_{n:05d}.nii.gz"
        if not link.is_symlink():
            link.symlink_to(volumes[n % len(volumes)])
    publish_random_unet(studies, CONF["preset"])


def publish_random_unet(studies: Path, preset: str) -> None:
    """The preset's UNet with random weights as version 1 of ``studies``, once (a pre-label's time does not depend
    on the weights)."""
    from models.networks import build_network
    from models.versions import ModelStore

    config = load_config(overrides={"preset": preset})
    store = ModelStore(Workspace(studies).models(config.storage.models_dir), "unet")
    if not store.numbers():
        settings = config.active.networks["unet"]
        spec = {"name": settings.network, "params": dict(settings.params)}
        store.publish(build_network(settings.network, settings.params).state_dict(), {"network": spec})


def add_junior(studies: Path) -> None:
    """A junior to route pre-labelled cases to (their queue is one of the store's measured queries)."""
    from review.service import ReviewService

    accounts = ReviewService(load_config(overrides=CONF), str(studies)).accounts
    if not any(u["name"] == "junior" for u in accounts.list_users()):
        accounts.add_user("junior", "junior", "bench")


def cohort_run(studies: Path, workers: int, limit: int | None, name: str, preset: str = "cpu-fast") -> Dict[str, Any]:
    """The real command; its JSON summary."""
    summary = OUT / f"{name}.json"
    command = [sys.executable, "-m", "amoslabel", "cohort", "prelabel", "--studies", str(studies), "--model", "unet"]
    command += ["--workers", str(workers), "--json", str(summary), "--preset", preset]
    command += ["--limit", str(limit)] if limit else []
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-4000:])
    result = json.loads(summary.read_text())
    n = len(result["done"]) or 1
    return {
        "workers": workers,
        "cases": len(result["done"]),
        "failed": len(result["failed"]),
        "process_wall_s": round(wall, 1),
        "run_wall_s": round(result["wall_s"], 1),
        "cases_per_s": result["cases_per_s"],
        "stage_s_per_case": {k: round(v / n, 4) for k, v in result["stage_s"].items()},
        "stage_median_s": result["stage_median_s"],
        "cases_per_worker": result["workers"],
    }


def clinical_stages(cases: int) -> Dict[str, Any]:
    """Stage costs at clinical size: the 512x512x300 CT of ``make bench`` (the real CT resampled onto a clinical
    grid) under ``cases`` ids, the ``cpu`` preset (1.5 mm, the UNet's 64^3 window), 1 model worker. Random weights
    are restoring's worst case (every organ wins somewhere): ``make bench`` measured 21.9 s with them, 2.6 s with a
    realistic prediction."""
    from bench.prelabel import prepare_volumes

    big = prepare_volumes()["ct512x300"]
    studies = OUT / "clinical"
    studies.mkdir(parents=True, exist_ok=True)
    for n in range(cases):
        link = studies / f"clinical_{n:02d}.nii.gz"
        if not link.is_symlink():
            link.symlink_to(big)
    publish_random_unet(studies, "cpu")
    return {"volume": big.name, **cohort_run(studies, 1, None, "clinical", preset="cpu")}


def peer_sequential(studies: Path, cases: int) -> Dict[str, Any]:
    """The server's way: the infer task on one case after another in one process (what ``/infer`` runs)."""
    from cohort.spec import CohortSpec, network_task

    task = network_task(CohortSpec(str(studies.resolve()), "unet", 1, None, tuple(CONF.items())))
    images = sorted(studies.glob("cohort_*.nii.gz"))[-cases:]
    task({"image": str(images[0]), "device": "cpu"})  # the network loaded, as in a running server
    started = time.perf_counter()
    for image in tqdm(images, desc="peer: one at a time", unit="case"):
        task({"image": str(image), "device": "cpu"})
    wall = time.perf_counter() - started
    return {"cases": cases, "wall_s": round(wall, 1), "cases_per_s": round(cases / wall, 3)}


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def store_figures(studies: Path) -> Dict[str, Any]:
    """How the store behaves with every case of the cohort in it (milliseconds, best of 3)."""
    from amoslabel.data.stores import open_datastore
    from cohort.plan import prelabelled_by, states
    from review.auth import Principal
    from review.queries import case_detail, queue
    from review.service import ReviewService

    config = load_config(overrides=CONF)
    started = time.perf_counter()
    datastore = open_datastore(str(studies), config.storage)
    open_ms = round((time.perf_counter() - started) * 1000, 1)
    review = ReviewService(config, str(studies))
    review.attach(datastore)
    started = time.perf_counter()
    review.sync_cases()
    sync_ms = round((time.perf_counter() - started) * 1000, 1)
    who = review.accounts.by_name("junior")
    admin = Principal(0, "bench", "admin")
    table = states(review.store)
    first = sorted(table)[0]
    db = studies / ".amoslabel" / "review.db"
    return {
        "cases": len(table),
        "states": {s: list(table.values()).count(s) for s in sorted(set(table.values()))},
        "open_datastore_ms": open_ms,
        "sync_cases_ms": sync_ms,
        "list_images_ms": timed(datastore.list_images),
        "plan_states_ms": timed(lambda: states(review.store)),
        "plan_prelabelled_ms": timed(lambda: prelabelled_by(review.store, "unet:v1")),
        "junior_queue_50_ms": timed(lambda: queue(review.workflow, who)),
        "junior_queue_length": len(queue(review.workflow, who, limit=100000)),
        "case_detail_ms": timed(lambda: case_detail(review.workflow, first, admin)),
        "sqlite_mb": round(db.stat().st_size / 2**20, 1) if db.exists() else None,
    }


def markdown(results: Dict[str, Any]) -> str:
    header = "| run | cases | wall s | cases/s | " + " | ".join(STAGE_NAMES) + " |"
    rows = [header, "|---" * (4 + len(STAGE_NAMES)) + "|"]
    for run in results.get("runs", []):
        stages = " | ".join(f"{run['stage_s_per_case'].get(s, 0):.3f}" for s in STAGE_NAMES)
        rows.append(f"| {run['name']} | {run['cases']} | {run['run_wall_s']} | {run['cases_per_s']:.3f} | {stages} |")
    peer = results.get("peer")
    if peer:
        rows.append(
            f"| peer: infer task one at a time | {peer['cases']} | {peer['wall_s']} | {peer['cases_per_s']:.3f} |"
        )
    lines = ["Seconds per case by stage (summed over workers); wall and cases/s of the whole run.", "", *rows, ""]
    if results.get("store"):
        lines += ["Store with the whole cohort:", "", "```json", json.dumps(results["store"], indent=2), "```", ""]
    if results.get("clinical"):
        lines += ["Clinical size (512x512x300, cpu preset, 1.5 mm), 1 worker:", "", "```json"]
        lines += [json.dumps(results["clinical"], indent=2), "```"]
    return "\n".join(lines) + "\n"


STAGE_NAMES = ("read", "preprocess", "network", "restore", "encode", "write")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--volumes", type=int, default=10, help="distinct synthetic volumes, linked in turn")
    parser.add_argument("--measure", type=int, default=100, help="cases per throughput run")
    parser.add_argument("--peer-cases", type=int, default=30)
    parser.add_argument("--full", action="store_true", help="pre-label every case (2 workers)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty cohort")
    parser.add_argument("--clinical", type=int, default=3, help="512x512x300 cases: 1.5 mm stage costs (0: none)")
    parser.add_argument("--parts", default="cohort,peer,store,clinical", help="which parts to run (comma-separated)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    studies = OUT / "studies"
    if args.fresh:
        shutil.rmtree(studies, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() and not args.fresh else {}
    make_cohort(studies, make_volumes(OUT / "volumes", args.volumes), args.cases)
    add_junior(studies)
    if "cohort" in parts:
        runs = []
        for workers in (1, 2):
            run = cohort_run(studies, workers, args.measure, f"workers{workers}")
            runs.append({"name": f"Ray, {workers} model worker(s)", **run})
            print(f"{workers} worker(s): {run['cases_per_s']:.3f} cases/s; per case {run['stage_s_per_case']}")
        if args.full:
            run = cohort_run(studies, 2, None, "full")
            runs.append({"name": "Ray, 2 workers, the rest of the cohort", **run})
        results.update({"cohort_cases": args.cases, "volumes": args.volumes, "runs": runs})
    if "peer" in parts:
        results["peer"] = peer_sequential(studies, args.peer_cases)
        print(f"peer (one at a time): {results['peer']['cases_per_s']:.3f} cases/s")
    if "store" in parts:
        results["store"] = store_figures(studies)
    if "clinical" in parts and args.clinical:
        results["clinical"] = clinical_stages(args.clinical)
        print(f"clinical size, 1.5 mm: per case {results['clinical']['stage_s_per_case']}")
    results_file.write_text(json.dumps(results, indent=2))
    (OUT / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
