"""``cohort prelabel|score``: pre-label or score a whole studies folder on a Ray cluster (:mod:`cohort`)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from amoslabel.cli.serving import add_conf_option, conf_pairs
from amoslabel.errors import InputError


def register(sub) -> None:
    cohort = sub.add_parser("cohort", help="pre-label or score a cohort on Ray (every GPU, several machines)")
    kinds = cohort.add_subparsers(dest="cohort_job", required=True)
    for kind, text in (
        ("prelabel", "pre-label every case not yet with a junior, with one model version"),
        ("score", "score every open case (uncertainty, attention, ClaSP entropies) with the scoring networks"),
    ):
        job = kinds.add_parser(kind, help=text)
        job.add_argument("--studies", type=Path, required=True, help="the studies folder (shared by every node)")
        job.add_argument(
            "--model",
            action="append",
            default=None,
            help="the model (prelabel: one, default unet; score: repeat for several, default every trained one)",
        )
        job.add_argument("--model-version", type=int, default=None, help="prelabel: a version (default: serving)")
        job.add_argument("--address", default="local", help="local (a Ray cluster in this process), auto, HOST:PORT")
        job.add_argument("--workers", type=int, default=None, help="model actors (default: GPUs in the cluster, or 1)")
        job.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 on a GPU cluster, else 0")
        job.add_argument("--cpus-per-worker", type=float, default=1.0, help="a model actor's CPUs (torch threads)")
        job.add_argument(
            "--cpu-workers",
            type=int,
            default=None,
            help="most workers of each CPU stage pool (default: half the CPUs the model actors leave, at least 2)",
        )
        job.add_argument("--cases", default=None, help="comma-separated case ids (default: every case)")
        job.add_argument("--limit", type=int, default=None, help="at most this many cases")
        job.add_argument("--database", default=None, help="the review database URL (default: the folder's SQLite)")
        job.add_argument("--json", type=Path, default=None, help="write the summary here as JSON")
        job.add_argument("--preset", default=None, help="apps.yaml preset (the server's; default: the file's)")
        add_conf_option(job, "apps.yaml override (e.g. --conf review_database URL)")
        job.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from amoslabel.config import load_config
    from amoslabel.cli.team import attach_datastore
    from cohort.jobs import JOBS, Resources
    from cohort.runner import connect, run, write_summary
    from cohort.spec import CohortSpec

    if not args.studies.is_dir():
        raise InputError(f"--studies {args.studies}: not a folder")
    for name, value in (("--workers", args.workers), ("--limit", args.limit), ("--cpu-workers", args.cpu_workers)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1")
    resources = Resources(workers=args.workers or 1, cpus_per_worker=args.cpus_per_worker)
    overrides = conf_pairs(args.conf)
    if args.preset:
        overrides["preset"] = args.preset
    if args.database:
        overrides["review_database"] = args.database
    config = load_config(overrides=overrides)
    if args.address != "local":
        connect(args.address, resources)  # before anything is written, so that a refused driver leaves nothing
    models = args.model or ([config.models[0]] if args.cohort_job == "prelabel" else None)
    spec = CohortSpec(
        str(args.studies.resolve()), models[0] if models else "", 0, None, tuple(sorted(overrides.items()))
    )
    if args.cohort_job == "prelabel":
        if len(models) != 1:
            raise InputError("cohort prelabel takes one --model")
        spec = replace(spec, version=_version(spec, args.model_version))

    from review.service import ReviewService

    review = ReviewService(config, str(args.studies))
    datastore = attach_datastore(review, args.studies, config.storage)

    if args.cohort_job == "prelabel":
        job = JOBS["prelabel"](review, datastore, spec)
    else:
        job = JOBS["score"](review, datastore, spec, models or _scoring_models(config, spec))

    def join() -> Resources:
        cluster = connect(args.address, resources)
        gpus = cluster.get("GPU", 0.0)
        per_worker = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        workers = args.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
        left = cluster.get("CPU", 0.0) - workers * resources.cpus_per_worker
        cpu_workers = args.cpu_workers or max(2, int(left // 2))
        logging.getLogger(__name__).info(
            f"cohort: Ray cluster with {cluster.get('CPU', 0):g} CPU(s), {gpus:g} GPU(s); {workers} model worker(s), "
            f"up to {cpu_workers} worker(s) in each CPU stage pool"
        )
        return replace(resources, workers=workers, gpus_per_worker=per_worker, cpu_stage_workers=cpu_workers)

    wanted = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    summary = run(job, resources, wanted, args.limit, join)
    for line in summary.lines():
        print(line)
    if args.json:
        write_summary(summary, str(args.json))
    return 1 if summary.failed else 0


def _version(spec, requested) -> int:
    """The version to pre-label with: the one asked for, else the serving one (Conflict when none is trained)."""
    from cohort.spec import network_task

    try:
        store = network_task(spec).store
    except KeyError:
        raise InputError(f"unknown model {spec.model!r}: not in apps.yaml's models nor imported") from None
    return store.resolve(requested).number


def _scoring_models(config, spec):
    """Every network and imported model with a trained version (the server's scoring members)."""
    from amoslabel.workspace import Workspace
    from models.serving import ServedModels

    served = ServedModels(config, Workspace(spec.studies).models(config.storage.models_dir), atlas=None)
    found = []
    for name in served.scorers():
        store = {**served.networks, **served.imported}[name].store
        if store.champion() is not None:
            found.append(name)
    if not found:
        raise InputError("no model has a trained version: nothing to score with")
    return found
