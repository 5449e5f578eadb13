"""Commands on one case: ``case-history`` (its audit log), ``withdraw`` and ``purge`` (an admin's)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from amoslabel.cli.team import attach_datastore, review_service
from amoslabel.config import load_config
from amoslabel.errors import InputError


def register(sub) -> None:
    hist = sub.add_parser("case-history", help="print a case's workflow history (the audit log)")
    hist.add_argument("case_id")
    hist.add_argument("--studies", type=Path, required=True)
    hist.add_argument("--database", default=None)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(run=_case_history)

    out = sub.add_parser(
        "withdraw",
        help="take a case out of the work (wrong patient, consent withdrawn): out of every queue and of training; "
        "its scan and labels archived, nothing deleted",
    )
    out.add_argument("case_id")
    out.add_argument("--studies", type=Path, required=True)
    out.add_argument("--database", default=None)
    out.add_argument("--reason", required=True, help="why (kept in the case's history)")
    out.set_defaults(run=_withdraw)

    purge = sub.add_parser("purge", help="delete what a withdrawn case left: archived scan and labels, label versions")
    purge.add_argument("case_id")
    purge.add_argument("--studies", type=Path, required=True)
    purge.add_argument("--database", default=None)
    purge.add_argument("--confirm", required=True, metavar="CASE_ID", help="the case id again")
    purge.set_defaults(run=_purge)


def _admin():
    from review.auth import Principal

    return Principal(0, f"cli:{getpass.getuser()}", "admin")


def _case_history(args) -> int:
    from review.queries import history

    service = review_service(args.studies, args.database)
    events = history(service.workflow, args.case_id, _admin())
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        moved = f"{e['from']} -> {e['to']}" if e["from"] != e["to"] else (e["to"] or "")
        print(f"{e['at'][:19]}  {e['actor']:16s} {e['action']:14s} {moved:32s} {e['reason'] or ''}")
    return 0


def _attached(args):
    """The review service with the studies' datastore attached (the folder's own, opened here), its cases synced as
    at a server's start."""
    service = review_service(args.studies, args.database)
    attach_datastore(service, args.studies, load_config().storage)
    return service


def _withdraw(args) -> int:
    service = _attached(args)
    done = service.withdraw(_admin(), args.case_id, args.reason)
    service.files.flush_index()
    print(f"{args.case_id}: withdrawn; scan and labels archived in {done['archive']}")
    print("  A running server stops listing the scan at its next start; the review API's withdraw acts at once.")
    return 0


def _purge(args) -> int:
    if args.confirm != args.case_id:
        raise InputError("--confirm must repeat the case id: purging deletes files for good")
    service = _attached(args)
    done = service.purge(_admin(), args.case_id)
    print(f"{args.case_id}: purged, {done['deleted_files']} file(s) deleted; its history stays")
    return 0
