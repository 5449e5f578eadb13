"""Command line: ``python -m amoslabel {serve,import,check-config,versions}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from amoslabel.config import ConfigError, load_config
from amoslabel.errors import InputError


def _conf_pairs(pairs):
    return {k: v for k, v in (pairs or [])}


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

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from amoslabel.serve import run

            return run(args.studies, args.host, args.port, _conf_pairs(args.conf), args.workspace, args.labels_as)
        if args.command == "import":
            from amoslabel.importer import import_source, report_json

            report = import_source(args.source, args.studies, args.labels_as, args.modality, args.link)
            print(json.dumps(report_json(report), indent=2) if args.json else report.summary())
            return 0 if not report.skipped else 3
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
