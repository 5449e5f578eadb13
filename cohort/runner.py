"""Run a cohort job on Ray: connect, plan, stream the cases through the job's stages, store on the driver.

Ray Data runs the pipeline: CPU stages as tasks, the model as a pool of actors, with backpressure between them, and
Ray's fault tolerance underneath (an actor that dies is restarted and its case retried; Ray Data's actor pools ask
for that). The driver alone writes, one case at a time, and checks the store first: a case is stored at most once
even when Ray delivers a retried result, and a run stopped at any point resumes where it stopped (the plan skips
what is stored).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from amoslabel.errors import InputError
from cohort.cluster import join
from cohort.jobs import Resources
from cohort.spec import pack, unpack

log = logging.getLogger(__name__)


@dataclass
class CohortSummary:
    """What a run did: cases done, skipped and failed (each with its reason), where the time went, who worked."""

    job: str
    planned: int = 0
    done: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    stage_s: Dict[str, float] = field(default_factory=dict)  # summed over cases (worker seconds)
    stage_median_s: Dict[str, float] = field(default_factory=dict)  # a typical case (a worker's start-up aside)
    workers: Dict[str, int] = field(default_factory=dict)  # model actor pid -> cases

    @property
    def cases_per_s(self) -> float:
        return len(self.done) / self.wall_s if self.wall_s else 0.0

    def as_json(self) -> Dict[str, Any]:
        return {**asdict(self), "cases_per_s": round(self.cases_per_s, 4)}

    def lines(self) -> List[str]:
        out = [
            f"{self.job}: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"in {self.wall_s:.1f} s ({self.cases_per_s:.2f} cases/s)"
        ]
        for reason, n in Counter(self.skipped.values()).most_common():
            out.append(f"  skipped {n}: {reason}")
        for case_id, reason in sorted(self.failed.items()):
            out.append(f"  failed {case_id}: {reason}")
        if self.done:
            per_case = ", ".join(f"{k} {v / len(self.done):.3f}" for k, v in self.stage_s.items())
            typical = ", ".join(f"{k} {v:.3f}" for k, v in self.stage_median_s.items())
            out.append(f"  seconds per case by stage: {per_case} (median case: {typical})")
            out.append(f"  cases per model worker: {dict(sorted(self.workers.items()))}")
        return out


def connect(address: str, resources: Resources) -> Dict[str, float]:
    """Join a Ray cluster (``auto``: the one ``ray start`` made here; ``host:port``) or start one in this process
    (``local``), as :func:`cohort.cluster.join` does. Returns the cluster's resources.

    A local cluster gets at least the CPUs the model actors and the CPU stage pools ask for: CPUs are Ray's
    bookkeeping, and each model actor on a CPU runs ``torch_threads`` threads, so a 2-core machine can host 2 actors.
    Workers import this project's packages: they get the driver's sys.path (Ray's default on one machine; on several,
    every node needs the repository and its environment at the same path, and the studies on shared storage).
    """
    num_cpus = None
    if address == "local":
        cpu_stages = 2 * resources.cpu_stage_workers * resources.cpus_per_cpu_stage  # prepare and restore pools
        needed = resources.workers * resources.cpus_per_worker + cpu_stages
        num_cpus = max(float(os.cpu_count() or 1), needed)
    cluster = join(address, num_cpus)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, the driver's, in cases/s
    context.print_on_execution_start = False
    return cluster


def run(
    job: Any,
    resources: Resources,
    wanted: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    join: Callable[[], Resources] = lambda: None,
):
    """Plan ``job``, run the planned cases through its pipeline, store each result.

    Args:
        join: connects to the Ray cluster and returns the resources to use (None: ``resources``); called only when
            there is work, so a re-run with nothing left to do starts no cluster.

    Returns:
        The run's :class:`CohortSummary`.
    """
    plan = job.plan(wanted, limit)
    summary = CohortSummary(job=job.title, planned=len(plan.todo), skipped=dict(plan.skipped))
    rows = []
    for case_id in plan.todo:
        try:
            rows.append({"case_id": case_id, "payload": pack(job.first_payload(case_id)), "error": ""})
        except InputError as e:
            summary.failed[case_id] = e.message
    log.info(f"cohort: {job.title}: {len(rows)} case(s) to do, {len(plan.skipped)} skipped")
    started = time.perf_counter()
    stage_s: Dict[str, List[float]] = defaultdict(list)
    workers: Counter = Counter()
    if rows:
        resources = join() or resources
        import ray.data  # after join(): Ray reads its settings from the environment at the first import

        # one block per case: cases stream through the stages one by one, not in blocks of many
        ds = job.pipeline(ray.data.from_items(rows, override_num_blocks=len(rows)), resources)
        with tqdm(total=len(rows), desc=job.kind, unit="case", dynamic_ncols=True) as bar:
            for row in ds.iter_rows():
                case_id = row["case_id"]
                if row["error"]:
                    summary.failed[case_id] = row["error"]
                else:
                    data = unpack(row["payload"])
                    write_started = time.perf_counter()
                    outcome = _store(job, case_id, data, summary)
                    data.setdefault("timings", {})["write"] = time.perf_counter() - write_started
                    if outcome == "done":
                        summary.done.append(case_id)
                        workers[str(row.get("worker"))] += 1
                        for stage, seconds in data["timings"].items():
                            stage_s[stage].append(seconds)
                bar.update(1)
                bar.set_postfix(done=len(summary.done), failed=len(summary.failed))
    if hasattr(job, "finish") and summary.done:
        job.finish()
    summary.wall_s = time.perf_counter() - started
    summary.stage_s = {k: round(sum(v), 3) for k, v in stage_s.items()}
    summary.stage_median_s = {k: round(statistics.median(v), 4) for k, v in stage_s.items()}
    summary.workers = dict(workers)
    return summary


def _store(job: Any, case_id: str, data: Dict[str, Any], summary: CohortSummary) -> str:
    """Store one result; a case the store refuses (it moved on meanwhile: a junior took it) is reported, not fatal."""
    from amoslabel.errors import Conflict

    try:
        outcome = job.store(case_id, data)
    except Conflict as e:
        summary.skipped[case_id] = e.message
        return "skipped"
    if outcome == "skipped":
        summary.skipped[case_id] = "stored by an earlier attempt"
    return outcome


def write_summary(summary: CohortSummary, path: str) -> None:
    with open(path, "w") as f:
        json.dump(summary.as_json(), f, indent=2)
