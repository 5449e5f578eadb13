"""Round 2 and later review only what changed: a senior's approval of an organ the junior did not touch is carried into
the next round.

When a case sent back is submitted again, each of the new round's readers who read the previous round keeps their
approvals of the organs whose voxels are identical in the version they approved and the version now submitted. A
carried approval is a vote of the new round (``Review.carried_from`` names the round it came from), shown as carried,
and its senior may reopen it by voting on that organ again. Their work in the new round is the organs the junior
changed and the organs they asked to change. Consensus is decided as before, on the round's votes; what was carried
is in the case's history.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Set

import numpy as np
import SimpleITK as sitk
from sqlalchemy import insert, select

from amoslabel.organs import ORGAN_BY_ID, ORGANS
from review import audit
from review.schema import Case, LabelVersion, Review, User
from review.store import utcnow


def changed_organs(before: str, after: str) -> Set[int]:
    """The organs whose voxels differ between two label versions of one case (on the case's grid, so same shape)."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(before)))  # a copy: a view would outlive its image
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(after)))
    if a.shape != b.shape:
        return {o.id for o in ORGANS}
    differ = a != b
    return {int(v) for v in np.union1d(np.unique(a[differ]), np.unique(b[differ])) if v != 0}


def carry_approvals(s, case: Case, submitted: LabelVersion, readers: Sequence[User]) -> Dict[str, List[str]]:
    """Carry the previous round's approvals of unchanged organs to ``readers`` of the case's new round (those who read
    the previous round); record it in the history. Returns ``{reader: [organ names carried]}``."""
    previous = case.round - 1
    if previous < 1 or not readers:
        return {}
    by_id = {u.id: u for u in readers}
    approvals = s.execute(
        select(Review.user_id, Review.organ, Review.version_id).where(
            Review.case_id == case.id,
            Review.round == previous,
            Review.decision == "approve",
            Review.user_id.in_(list(by_id)),
        )
    ).all()
    changed_since: Dict[int, Set[int]] = {}  # the version each reader approved -> organs changed since
    for version_id in {v for _, _, v in approvals if v is not None}:
        approved = s.get(LabelVersion, version_id)
        changed_since[version_id] = changed_organs(approved.path, submitted.path)
    carried: Dict[str, List[str]] = {}
    rows = []
    now = utcnow()
    for user_id, organ, version_id in approvals:
        if version_id is None or organ in changed_since[version_id]:
            continue
        carried.setdefault(by_id[user_id].name, []).append(ORGAN_BY_ID[organ].name)
        rows.append(
            {
                "case_id": case.id,
                "round": case.round,
                "user_id": user_id,
                "organ": organ,
                "decision": "approve",
                "version_id": submitted.id,
                "carried_from": previous,
                "created": now,
            }
        )
    if rows:
        s.execute(insert(Review), rows)
        changed = sorted({o for organs in changed_since.values() for o in organs})
        audit.record(
            s,
            case.id,
            "system",
            "carry",
            case.state,
            case.state,
            f"round {case.round}: approvals of unchanged organs carried from round {previous} ("
            + ", ".join(f"{name} {len(organs)}" for name, organs in sorted(carried.items()))
            + f"); changed: {', '.join(ORGAN_BY_ID[o].name for o in changed) or 'none'}",
            {"carried": carried, "changed": [ORGAN_BY_ID[o].name for o in changed]},
        )
    return carried
