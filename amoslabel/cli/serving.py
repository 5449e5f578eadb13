"""Commands that start servers or check what they would start with: ``serve``, ``serve-dicomweb``, ``check-config``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

from amoslabel.config import load_config
from amoslabel.workspace import PROJECT_ROOT

DEFAULT_WORKSPACE = PROJECT_ROOT / ".workspace"


def conf_pairs(pairs: Optional[List[List[str]]]) -> Dict[str, str]:
    """``--conf KEY VALUE`` pairs as a dict (later ones win)."""
    return {k: v for k, v in (pairs or [])}


def add_conf_option(parser: argparse.ArgumentParser, help_text: str = "apps.yaml override") -> None:
    parser.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help=help_text)


def add_labels_as_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels-as",
        choices=["final", "prelabel"],
        default="final",
        help="what the labels of an imported dataset become: final (training data) or prelabel (a junior's work)",
    )


def register(sub) -> None:
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
    add_conf_option(serve, "apps.yaml override, as in monailabel start_server (e.g. --conf preset cpu-fast)")
    serve.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE)
    add_labels_as_option(serve)
    serve.add_argument(
        "--pretrained",
        default=None,
        choices=["totalsegmentator", "totalsegmentator-fast"],
        help="fetch (once) TotalSegmentator's CT and MRI models and make them the first pre-labelers",
    )
    serve.set_defaults(run=_serve)

    web = sub.add_parser("serve-dicomweb", help="private Orthanc with the de-identified samples, OHIF, and the server")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--orthanc-port", type=int, default=8042)
    web.add_argument("--ohif-port", type=int, default=3000)
    add_conf_option(web)
    web.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE / "dicomweb")
    web.set_defaults(run=_serve_dicomweb)

    team = sub.add_parser("serve-team", help="a private PostgreSQL, several app servers and HAProxy in front")
    team.add_argument("studies", nargs="?", default=None, help="as for serve (default: the sample data)")
    team.add_argument("--host", default="127.0.0.1", help="where the load balancer listens")
    team.add_argument("--port", type=int, default=8000, help="the load balancer's port; app servers on PORT+1...")
    team.add_argument("--servers", type=int, default=2)
    team.add_argument("--review-workers", type=int, default=2, help="gunicorn processes for /review (0: none)")
    add_conf_option(team)
    team.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE)
    add_labels_as_option(team)
    team.set_defaults(run=_serve_team)

    haproxy = sub.add_parser("haproxy-config", help="print the HAProxy configuration for a team on real machines")
    haproxy.add_argument("--bind", required=True, help="where HAProxy listens, host:port")
    haproxy.add_argument("--server", action="append", required=True, help="an app server, host:port (repeat)")
    haproxy.add_argument("--review", action="append", default=[], help="a review workers' address, host:port")
    haproxy.add_argument("--stats", default="127.0.0.1:8404", help="HAProxy's statistics page, host:port")
    haproxy.set_defaults(run=_haproxy_config)

    check = sub.add_parser("check-config", help="parse apps.yaml (with --conf overrides) and print the result")
    check.add_argument("--config", type=Path, default=None)
    add_conf_option(check)
    check.set_defaults(run=_check_config)


def _serve(args) -> int:
    from amoslabel.server.launch import run

    return run(
        args.studies, args.host, args.port, conf_pairs(args.conf), args.workspace, args.labels_as, args.pretrained
    )


def _serve_dicomweb(args) -> int:
    from amoslabel.server.dicomweb_launch import serve_dicomweb

    conf = conf_pairs(args.conf)
    return serve_dicomweb(args.workspace, args.host, args.port, conf, args.orthanc_port, args.ohif_port)


def _serve_team(args) -> int:
    from amoslabel.server.team_launch import run_team

    conf = conf_pairs(args.conf)
    return run_team(
        args.studies, args.host, args.port, args.servers, conf, args.workspace, args.review_workers, args.labels_as
    )


def _haproxy_config(args) -> int:
    from amoslabel.cluster.haproxy import render

    print(render(args.bind, args.server, args.stats, args.review))
    return 0


def _check_config(args) -> int:
    config = load_config(args.config, conf_pairs(args.conf))
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0
