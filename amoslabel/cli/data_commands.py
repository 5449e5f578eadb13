"""Commands on scans and labels: ``import``, ``synth``, ``send-dicom``, ``backup``, ``restore``."""

from __future__ import annotations

import json
from pathlib import Path

from amoslabel.errors import InputError


def register(sub) -> None:
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
    imp.set_defaults(run=_import)

    syn = sub.add_parser("synth", help="write a SYNTHETIC AMOS-layout split made from real label maps")
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument("--train", nargs="+", type=Path, required=True, help="label maps that feed imagesTr/labelsTr")
    syn.add_argument("--test", nargs="+", type=Path, required=True, help="label maps that feed imagesVa/labelsVa")
    syn.add_argument("--per-map", type=int, default=4, help="cases made from each label map")
    syn.add_argument("--spacing", type=float, default=3.0, help="voxel size of the cases, mm")
    syn.add_argument("--seed", type=int, default=0)
    syn.set_defaults(run=_synth)

    send = sub.add_parser("send-dicom", help="check, de-identify and send DICOM series to an Orthanc (its REST URL)")
    send.add_argument("source", type=Path, help="a series folder, or a folder of series folders")
    send.add_argument("orthanc", help="Orthanc's REST root, e.g. http://127.0.0.1:8042")
    send.add_argument("--workspace", type=Path, required=True, help="where the private UID mapping is kept")
    send.set_defaults(run=_send_dicom)

    snap = sub.add_parser("backup", help="a consistent snapshot of a studies folder, safe while the server runs")
    snap.add_argument("studies", type=Path)
    snap.add_argument("out", type=Path, help="a new folder for the snapshot")
    snap.set_defaults(run=_backup)
    rest = sub.add_parser("restore", help="restore a snapshot (hashes checked first) into a new studies folder")
    rest.add_argument("snapshot", type=Path)
    rest.add_argument("studies", type=Path, help="a new or empty folder")
    rest.set_defaults(run=_restore)


def _import(args) -> int:
    from amoslabel.data.importer import import_source, report_json

    report = import_source(args.source, args.studies, args.labels_as, args.modality, args.link)
    print(json.dumps(report_json(report), indent=2) if args.json else report.summary())
    return 0 if not report.skipped else 3


def _synth(args) -> int:
    from amoslabel.data.synthetic import write_split

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


def _send_dicom(args) -> int:
    from amoslabel.dicom.send import send_to_dicomweb

    for sent in send_to_dicomweb(args.source, args.orthanc, args.workspace):
        print(f"{sent.folder}: {sent.instances} instances as series {sent.series_uid}")
    return 0


def _backup(args) -> int:
    from amoslabel.data.backup import snapshot

    manifest = snapshot(args.studies, args.out)
    print(f"backup: {len(manifest['files'])} files; review store {manifest['review_store']}")
    return 0


def _restore(args) -> int:
    from amoslabel.data.backup import restore

    manifest = restore(args.snapshot, args.studies)
    print(f"restore: {len(manifest['files'])} files; review store {manifest['review_store']}")
    return 0
