"""R5: schemathesis against the review API's OpenAPI description and against the MONAI Label server's /openapi.json
(the endpoints this app implements), on a real server. Goal: no response is a server error (5xx).

Every check schemathesis has runs; the test asserts only the 5xx count and reports the other findings (e.g. a 400
for a "schema-valid" upload that is not a NIfTI file, which is right for us). Left out of the MONAI run: ``/train``
(each call starts a training process), ``/batch``, ``/scoring``, ``/session``, ``/logs`` and ``/infer/wsi_v2``, which
this app does not serve beyond MONAI Label's defaults.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest

from tests.reliability.conftest import REPORTS, TeamServer, report, size

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MONAI_PATHS = r"^/(auth/|info/|infer/\{model\}|activelearning/|datastore/|model/)"
REVOKE = "DELETE /api/users/{name}/tokens"
RUNS: List[Dict] = []


def fuzz(server: TeamServer, name: str, schema: str, *args: str, token: str | None = None) -> Dict:
    """One schemathesis run; the status codes it saw and the failures of each check."""
    out = REPORTS / "schemathesis" / name
    shutil.rmtree(out, ignore_errors=True)  # the last run's reports and schemathesis' own cache folder
    out.mkdir(parents=True)
    command = [
        str(SCHEMATHESIS),
        "run",
        schema,
        "--max-examples",
        str(size(15, 100)),
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--seed",
        "20261123",
        "--checks",
        "all",
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(out),
        *args,
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=out)  # its caches go there
    (out / "output.txt").write_text(done.stdout + done.stderr)
    ndjson = next(out.glob("*.ndjson")).read_text()
    statuses = Counter(int(code) for code in re.findall(r'"status_code":"?(\d{3})', ndjson))
    failures: Counter = Counter()
    for case in ET.parse(next(out.glob("*.xml"))).getroot().iter("testcase"):
        for failure in case.iter("failure"):
            for code in re.findall(r"- (ST\d+ [^\n]+)", failure.text or "") or [failure.get("message")]:
                failures[f"{case.get('name')}: {code}"] += 1
    generated = re.search(r"(\d+) generated", done.stdout)
    run = {
        "run": name,
        "requests": sum(statuses.values()),
        "test_cases": int(generated.group(1)) if generated else None,
        "server_errors": sum(n for code, n in statuses.items() if code >= 500),
        "statuses": dict(sorted(statuses.items())),
        "other_findings": dict(failures),
    }
    RUNS.append(run)
    assert statuses, f"schemathesis made no request:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    report(
        "r5_fuzz",
        {
            "runs": RUNS,
            "requests": sum(r["requests"] for r in RUNS),
            "server_errors": sum(r["server_errors"] for r in RUNS),
        },
    )


def review_schema(server: TeamServer) -> List[str]:
    return [f"{server.url}/review/api/openapi.json", "--origin", server.url]


@pytest.mark.parametrize("who", ["boss", "j1", "s1"])
def test_review_api_has_no_server_error(team_server, who):
    args = review_schema(team_server)
    if who == "boss":  # the fuzzer would revoke its own token and test the rest unauthenticated: that one runs last
        args += ["--exclude-name", REVOKE]
    run = fuzz(team_server, f"review-{who}", *args, token=team_server.tokens[who])
    assert run["server_errors"] == 0, run
    assert team_server.process.alive()


@pytest.mark.parametrize("who", ["boss", "j1", None])
def test_monai_label_endpoints_have_no_server_error(team_server, who):
    """With auth on: as the admin (every endpoint open to it), as a junior (many refused by role), with no token."""
    final = team_server.studies / "labels" / "final" / "ct_small.nii.gz"
    before = final.read_bytes()
    schema = f"{team_server.url}/openapi.json"
    args = ("--url", team_server.url, "--include-path-regex", MONAI_PATHS)
    run = fuzz(team_server, f"monai-{who or 'anonymous'}", schema, *args, token=team_server.tokens.get(who))
    assert run["server_errors"] == 0, run
    assert team_server.process.alive()
    # what the fuzzer could reach is intact: the final label, the linked source scans, the listing
    assert final.read_bytes() == before
    assert sorted(p.name for p in team_server.sources.glob("*.nii.gz"))[:2] == [
        "ts_abdomen_ct_small.nii.gz",
        "ts_abdomen_ct_small_label.nii.gz",
    ]
    listing = team_server.http("boss").get(f"{team_server.url}/datastore/", params={"output": "all"}, timeout=60)
    assert {"ct_small", "mr_small"} <= set(listing.json()["objects"])


def test_review_api_token_revocation_last(team_server):
    args = review_schema(team_server) + ["--include-name", REVOKE]
    run = fuzz(team_server, "review-revoke", *args, token=team_server.tokens["boss"])
    assert run["server_errors"] == 0, run
