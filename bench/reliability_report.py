"""Print the table of docs/reliability.md from what the reliability suite measured (test-output/reliability/*.json).

Run by ``make reliability`` after the suite; ``python -m bench.reliability_report [FOLDER]`` re-prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "test-output" / "reliability"


def _crash(r: Dict) -> List[str]:
    return [
        "R1 crash (`tests/reliability/test_crash.py`)",
        f"{r['cases']} cases x (1 submission + 3 votes) = {4 * r['cases']} writes by 4 concurrent clients",
        f"{r['kills']} x kill -9 at random moments (after writes {', '.join(map(str, r['killed_after_write']))}, "
        f"+0-50 ms), restart each time (median {r['restart_s_median']} s); {r['writes_cut_off_by_a_kill']} requests "
        "cut off; store checked after every kill",
        f"{r['writes_acknowledged']} acknowledged, all stored; {r['cut_off_writes_found_stored']} cut-off writes had "
        f"landed; every case consistent ({len(r['inconsistent_cases'])} not); end states {r['final_states']}",
        f"**{r['acknowledged_lost']}** acknowledged writes, {r['damaged_versions']} label files",
    ]


def _concurrency(r: Dict) -> List[str]:
    return [
        "R2 concurrency (`tests/reliability/test_concurrency.py`)",
        f"{r['writers']} writers (own user, own HTTP client), {r['cases']} shared cases, {r['seconds']} s",
        f"claims, submissions and votes racing on the same cases; refused as conflicts: {r['refused_by_status']}",
        f"acknowledged {r['acknowledged']}; stored submissions {r['stored_submits']}; end states {r['final_states']}",
        f"**{r['lost_updates']}** lost updates, **{r['double_assignments']}** double assignments",
    ]


def _bad_input(r: Dict) -> List[str]:
    return [
        "R3 bad input (`tests/reliability/test_bad_input.py`)",
        f"{r['tried']} attempts: {len(r['inputs'])} inputs x the paths they reach ({len(r['paths'])} paths)",
        "corrupt/truncated NIfTI, NaN/Inf, 2D, 4D, one voxel, one slice, 10^12-voxel header, zero and negative "
        "spacing, label ids 99/-1/fractional, wrong shape/spacing/direction, DICOM without positions or cut short, "
        "15 kinds of bad id and tag (traversal, separators, NUL, newline, bidi, unicode, too long), malformed, "
        "deep and oversized JSON; the oblique scan must work",
        f"{r['refused_as_expected']} refused with a 4xx and a message (or the import skipped with one), "
        f"{r['accepted_as_expected']} oblique-scan steps accepted; nothing stored, server alive; "
        f"{len(r['wrong'])} wrong",
        "**0** stored files or versions changed" if not r["wrong"] else f"**{len(r['wrong'])} wrong**",
    ]


def _roles(r: Dict) -> List[str]:
    return [
        "R4 roles (`tests/reliability/test_roles.py`)",
        f"{r['cells']} cells: {r['operations']} operations (the review API's, and one probe per rule of the access "
        "gate: every MONAI Label endpoint) x principals (no token, forged, revoked, expired, deactivated user's; "
        "junior owner/other, senior assigned/not, admin; client ids naming another user)",
        "every refused principal first, then the allowed one; revocation and deactivation done by the command "
        "while the server runs; a gate refusal carries its header; refused probes change no file and serve no scan",
        f"{r['refused_as_expected']} refused, {r['allowed_as_expected']} allowed as designed; {r['by_interface']}",
        f"**{len(r['wrong'])}** wrong cells",
    ]


def _fuzz(r: Dict) -> List[str]:
    runs = ", ".join(f"{x['run']} {x['requests']}" for x in r["runs"])
    other = sorted({k.split(": ", 1)[1].split(" ", 1)[0] for x in r["runs"] for k in x["other_findings"]})
    return [
        "R5 fuzzing (`tests/reliability/test_fuzz.py`)",
        f"schemathesis 4.32.5, all phases and checks; {r['requests']} requests ({runs})",
        "generated and mutated bodies, parameters, headers, methods; auth on: review API as admin, junior, senior; "
        "MONAI Label's /openapi.json (auth, info, infer, activelearning, datastore, model) as admin, junior and "
        "with no token",
        f"other checks' findings (not errors here): {', '.join(other) or 'none'}",
        f"**{r['server_errors']}** server errors (5xx)",
    ]


def _team_race(r: Dict) -> List[str]:
    return [
        "R7 two servers race (`tests/reliability/test_team.py`)",
        f"{r['writers']} writers for {r['seconds']} s, half straight to each of 2 app servers on one PostgreSQL",
        "claims, submissions and votes on the same pool of cases from both servers at once",
        f"acknowledged {r['acknowledged']}, every one stored",
        "**0** lost updates, **0** double assignments",
    ]


def _team_kill(r: Dict) -> List[str]:
    return [
        "R7 app server killed (`tests/reliability/test_team.py`)",
        f"{r['writers']} users submitting and voting through HAProxy to 2 app servers (+ 2 review workers)",
        f"{r['kills']} x kill -9 of the leader; requests cut off: {r['cut_off']}",
        f"{r['acknowledged']} acknowledged, all stored; the survivor led after {r['led_after_s']} s; "
        f"{r['finalised_after_kill']} cases reached consensus and were finalised after a kill",
        f"**{r['lost']}** acknowledged writes",
    ]


def _team_postgres(r: Dict) -> List[str]:
    return [
        "R7 PostgreSQL stopped (`tests/reliability/test_team.py`)",
        f"50 users through HAProxy; `pg_ctl stop -m immediate`, {r['down_s']} s down, started again",
        f"while down: {r['answer_while_down']}",
        f"{r['acknowledged']} acknowledged, all stored; refused {r['refused']}; first write "
        f"{r['first_write_after_s']} s after PostgreSQL was back, {r['restarts']} server restarts",
        f"**{r['lost']}** acknowledged writes",
    ]


def _disk_full(r: Dict) -> List[str]:
    return [
        "R8 label store full (`tests/reliability/test_disk_full.py`)",
        "a junior's save through the review API and through 3D Slicer's client",
        f"the label store a 1 MB tmpfs with {r['free_kb_when_refused']} KB free",
        f"{r['refusal']} with a message; no partial file; reads served; the same save stored once space was freed",
        "**0** half-written files",
    ]


SECTIONS: Dict[str, Callable[[Dict], List[str]]] = {
    "r1_crash": _crash,
    "r2_concurrency": _concurrency,
    "r3_bad_input": _bad_input,
    "r4_roles": _roles,
    "r5_fuzz": _fuzz,
    "team_race": _team_race,
    "team_kill": _team_kill,
    "team_postgres": _team_postgres,
    "disk_full": _disk_full,
}


def table(folder: Path = FOLDER) -> str:
    lines = ["| test | load | faults injected / bad inputs tried | result | lost |", "|---|---|---|---|---|"]
    forms = set()
    for name, row in SECTIONS.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            lines.append(f"| {name} | not run | | | |")
            continue
        figures = json.loads(path.read_text())
        forms.add(f"{figures['form']} ({figures['when']})")
        lines.append("| " + " | ".join(row(figures)) + " |")
    return "\n".join(lines) + f"\n\nForm and time of the runs: {', '.join(sorted(forms))}.\n"


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER))
