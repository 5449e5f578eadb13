"""Command line: ``python -m amoslabel {serve,import,evaluate,users,models,backup,restore,check-config,...}``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from amoslabel.config import ConfigError, load_config
from amoslabel.errors import InputError


def _conf_pairs(pairs):
    return {k: v for k, v in (pairs or [])}


def _evaluate(args) -> int:
    from evaluation.report import ScannerMetadata, evaluate_folders, label_folder, summary, training_scanners
    from evaluation.report import write_report

    metadata = None
    in_distribution = list(args.in_distribution)
    if args.metadata is not None:
        metadata = ScannerMetadata(args.metadata, args.id_column, args.scanner_column)
        if args.train_split is not None:
            in_distribution += training_scanners(args.train_split, metadata)
    elif args.in_distribution or args.train_split:
        raise InputError("--in-distribution and --train-split need --metadata (the scanner of each case)")
    labels = label_folder(args.labels, args.studies)
    evaluation = evaluate_folders(
        args.predictions, labels, args.name or args.predictions.name, args.studies, metadata, in_distribution
    )
    paths = write_report(evaluation, args.out)
    mdice, mnsd = summary(evaluation)
    print(f"{len(evaluation.scored)} cases: mDice {mdice:.4f}  mNSD {mnsd:.4f}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 3 if any(c.error for c in evaluation.cases) else 0


def _review_service(studies: Path, database):
    from review.service import ReviewService

    overrides = {"review_database": database} if database else {}
    return ReviewService(load_config(overrides=overrides), str(studies))


def _users(args) -> int:
    accounts = _review_service(args.studies, args.database).accounts
    if args.action == "list":
        for user in accounts.list_users():
            print(f"{user['name']:24s} {user['role']:8s} {'active' if user['active'] else 'inactive'}")
        return 0
    if not args.name:
        raise InputError(f"users {args.action} needs a user name")
    if args.action == "add":
        if not args.role:
            raise InputError("users add needs --role junior|senior|admin")
        accounts.add_user(args.name, args.role)
        print(accounts.issue_token(args.name))
    elif args.action == "token":
        print(accounts.issue_token(args.name))
    elif args.action == "revoke":
        print(f"revoked {accounts.revoke_tokens(args.name)} token(s)")
    elif args.action == "deactivate":
        accounts.set_active(args.name, False)
        print(f"{args.name} deactivated")
    return 0


def _case_history(args) -> int:
    from review.auth import Principal
    from review.queries import history

    service = _review_service(args.studies, args.database)
    events = history(service.workflow, args.case_id, Principal(0, "cli", "admin"))
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        moved = f"{e['from']} -> {e['to']}" if e["from"] != e["to"] else (e["to"] or "")
        print(f"{e['at'][:19]}  {e['actor']:16s} {e['action']:14s} {moved:32s} {e['reason'] or ''}")
    return 0


def _models(args) -> int:
    """List a model's versions (metrics, parent, promotion, which serves), or roll back to an earlier one."""
    from amoslabel.cases import WORKSPACE_DIR
    from models.versions import ModelStore

    config = load_config()
    root = Path(config.storage.models_dir) if config.storage.models_dir else args.studies / WORKSPACE_DIR / "models"
    store = ModelStore(root, args.model)
    if args.action == "rollback":
        if args.version is None:
            raise InputError("rollback needs the version to serve, e.g. `models rollback unet 3`")
        version = store.set_champion(args.version, args.reason or "rollback", os.environ.get("USER", "operator"))
        print(f"{args.model}: version {version.number} serves now")
        return 0
    champion = store.champion()
    for number in store.numbers():
        meta = store.get(number).meta
        promotion = meta.get("promotion") or {}
        print(
            f"{'*' if champion and champion.number == number else ' '} v{number}  parent {meta.get('parent_version')}"
            f"  mDice {meta.get('val_mean_dice')}  mNSD {meta.get('val_mean_nsd')}"
            f"  cases {len(meta.get('training_cases', []))}  {promotion.get('reason', '')}"
        )
    for entry in store.champion_history():
        print(f"  {entry['at']}  v{entry['previous']} -> v{entry['version']} by {entry['by']}: {entry['reason']}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amoslabel", description="AMOS Label commands")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="import studies and start the MONAI Label server")
    serve.add_argument(
        "studies",
        nargs="?",
        default=None,
        help="AMOS-layout dataset, folder of NIfTI files, DICOM series folder, manifest YAML or "
        "DICOMweb URL (default: the real scans in ../shared/data)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="apps.yaml override, as in monailabel start_server (e.g. --conf preset cpu-fast)",
    )
    serve.add_argument("--workspace", type=Path, default=Path(__file__).resolve().parent.parent / ".workspace")
    serve.add_argument("--labels-as", choices=["final", "prelabel"], default="final")

    web = sub.add_parser("serve-dicomweb", help="private Orthanc with the de-identified samples, OHIF, and the server")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--orthanc-port", type=int, default=8042)
    web.add_argument("--ohif-port", type=int, default=3000)
    web.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="apps.yaml override")
    web.add_argument(
        "--workspace", type=Path, default=Path(__file__).resolve().parent.parent / ".workspace" / "dicomweb"
    )
    dw = sub.add_parser("send-dicom", help="check, de-identify and send DICOM series to an Orthanc (its REST URL)")
    dw.add_argument("source", type=Path, help="a series folder, or a folder of series folders")
    dw.add_argument("orthanc", help="Orthanc's REST root, e.g. http://127.0.0.1:8042")
    dw.add_argument("--workspace", type=Path, required=True, help="where the private UID mapping is kept")

    imp = sub.add_parser("import", help="import scans (and labels) into a studies folder")
    imp.add_argument("source", help="AMOS-layout dataset, NIfTI file or folder, DICOM series folder, or manifest YAML")
    imp.add_argument("--studies", required=True, type=Path, help="the studies folder to import into")
    imp.add_argument(
        "--labels-as",
        choices=["final", "prelabel"],
        default="final",
        help="tag labels that come with the images as final, or as pre-labels",
    )
    imp.add_argument("--modality", choices=["ct", "mri"], default=None, help="modality of every scan imported")
    imp.add_argument("--link", action="store_true", help="symlink NIfTI images instead of copying them")
    imp.add_argument("--json", action="store_true", help="print the report as JSON")

    check = sub.add_parser("check-config", help="parse apps.yaml (with --conf overrides) and print the result")
    check.add_argument("--config", type=Path, default=None)
    check.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"))

    ev = sub.add_parser("evaluate", help="score predictions against reference labels; write CSV, tables and plots")
    ev.add_argument("predictions", type=Path, help="folder of predicted label maps, named like the references")
    refs = ev.add_mutually_exclusive_group(required=True)
    refs.add_argument("--labels", type=Path, help="folder of reference label maps")
    refs.add_argument("--studies", type=Path, help="a studies folder: score against its final labels")
    ev.add_argument("--out", type=Path, required=True, help="folder for cases.csv, report.md and the box plots")
    ev.add_argument("--name", default=None, help="name of the prediction set in the report")
    ev.add_argument("--metadata", type=Path, help="CSV with a scanner per case (e.g. AMOS labeled_data_meta_*.csv)")
    ev.add_argument("--id-column", default=None, help="metadata column holding the case id")
    ev.add_argument("--scanner-column", default=None, help="metadata column holding the scanner model")
    ev.add_argument(
        "--in-distribution",
        action="append",
        default=[],
        metavar="SCANNER",
        help="a scanner seen in training (repeat); the others are out-of-distribution",
    )
    ev.add_argument("--train-split", type=Path, help="dataset.json whose training cases' scanners are in-distribution")

    syn = sub.add_parser("synth", help="write a SYNTHETIC AMOS-layout split made from real label maps")
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument("--train", nargs="+", type=Path, required=True, help="label maps that feed imagesTr/labelsTr")
    syn.add_argument("--test", nargs="+", type=Path, required=True, help="label maps that feed imagesVa/labelsVa")
    syn.add_argument("--per-map", type=int, default=4, help="cases made from each label map")
    syn.add_argument("--spacing", type=float, default=3.0, help="voxel size of the cases, mm")
    syn.add_argument("--seed", type=int, default=0)

    users = sub.add_parser("users", help="review workflow users and their API tokens")
    users.add_argument("action", choices=["add", "token", "revoke", "list", "deactivate"])
    users.add_argument("name", nargs="?", help="user name (not for list)")
    users.add_argument("--role", choices=["junior", "senior", "admin"], help="for add")
    users.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    users.add_argument("--database", default=None, help="review store URL (default: SQLite in the studies folder)")

    hist = sub.add_parser("case-history", help="print a case's workflow history (the audit log)")
    hist.add_argument("case_id")
    hist.add_argument("--studies", type=Path, required=True)
    hist.add_argument("--database", default=None)
    hist.add_argument("--json", action="store_true")

    mod = sub.add_parser("models", help="a model's versions and which one serves; roll back to an earlier one")
    mod.add_argument("action", choices=["list", "rollback"])
    mod.add_argument("model", help="a served model, e.g. unet")
    mod.add_argument("version", nargs="?", type=int, help="for rollback: the version to serve")
    mod.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    mod.add_argument("--reason", default=None, help="for rollback: why (kept in the history)")

    snap = sub.add_parser("backup", help="a consistent snapshot of a studies folder, safe while the server runs")
    snap.add_argument("studies", type=Path)
    snap.add_argument("out", type=Path, help="a new folder for the snapshot")
    rest = sub.add_parser("restore", help="restore a snapshot (hashes checked first) into a new studies folder")
    rest.add_argument("snapshot", type=Path)
    rest.add_argument("studies", type=Path, help="a new or empty folder")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from amoslabel.serve import run

            return run(args.studies, args.host, args.port, _conf_pairs(args.conf), args.workspace, args.labels_as)
        if args.command == "serve-dicomweb":
            from amoslabel.serve_dicomweb import serve_dicomweb

            conf = _conf_pairs(args.conf)
            return serve_dicomweb(args.workspace, args.host, args.port, conf, args.orthanc_port, args.ohif_port)
        if args.command == "send-dicom":
            from amoslabel.dicomweb_import import send_to_dicomweb

            for sent in send_to_dicomweb(args.source, args.orthanc, args.workspace):
                print(f"{sent.folder}: {sent.instances} instances as series {sent.series_uid}")
            return 0
        if args.command == "import":
            from amoslabel.importer import import_source, report_json

            report = import_source(args.source, args.studies, args.labels_as, args.modality, args.link)
            print(json.dumps(report_json(report), indent=2) if args.json else report.summary())
            return 0 if not report.skipped else 3
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "synth":
            from amoslabel.synthetic import write_split

            sources = {p.name.split(".")[0]: p for p in args.train + args.test}
            missing = [str(p) for p in sources.values() if not p.is_file()]
            if missing:
                raise InputError(f"label maps not found: {missing}")
            made = write_split(
                sources,
                args.out,
                [p.name.split(".")[0] for p in args.train],
                [p.name.split(".")[0] for p in args.test],
                {name: args.per_map for name in sources},
                args.spacing,
                args.seed,
            )
            print(f"{len(made['training'])} training and {len(made['validation'])} test cases in {args.out}")
            return 0
        if args.command == "users":
            return _users(args)
        if args.command == "case-history":
            return _case_history(args)
        if args.command == "models":
            return _models(args)
        if args.command in ("backup", "restore"):
            from amoslabel import backup

            if args.command == "backup":
                manifest = backup.snapshot(args.studies, args.out)
            else:
                manifest = backup.restore(args.snapshot, args.studies)
            print(f"{args.command}: {len(manifest['files'])} files; review store {manifest['review_store']}")
            return 0
        if args.command == "check-config":
            config = load_config(args.config, _conf_pairs(args.conf))
            print(json.dumps(config.model_dump(mode="json"), indent=2))
            return 0
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
