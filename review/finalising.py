"""The workflow's last step: fuse a ``consensus`` case's readers' labels and publish the final label.

Finalising is two steps, so that fusing labels (seconds) never holds the write lock: the last vote moves a case to
``consensus``; :meth:`Finalising.finalise` then fuses the readers' labels, measures their agreement, and moves it to
``final`` with a new consensus version. A crash in between leaves a ``consensus`` case, which
:meth:`Finalising.recover` finalises at start-up (and the team's leader at each sweep).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable, Optional

from sqlalchemy import select

from review import audit
from review.consensus import fuse_readers
from review.schema import Case, Decision, LabelVersion, User
from review.store import utcnow
from review.summaries import final_provenance

log = logging.getLogger(__name__)


class Finalising:
    """The finalising half of :class:`review.workflow.Workflow` (which provides ``store``, ``publisher``,
    ``_case`` and ``_add_version``)."""

    def finalise(self, case_id: str) -> Optional[int]:
        """Fuse and publish a ``consensus`` case (no-op for other states); returns the final version id."""
        with self.store.read() as s:
            case = self._case(s, case_id)
            if case.state != "consensus":
                return None
            current = s.get(LabelVersion, case.current_version)
            edits = s.execute(
                select(LabelVersion, User.name)
                .join(User, User.id == LabelVersion.author_user_id)
                .where(
                    LabelVersion.case_id == case.id,
                    LabelVersion.round == case.round,
                    LabelVersion.kind == "senior_edit",
                )
                .order_by(LabelVersion.id)
            ).all()
            junior = s.get(User, current.author_user_id) if current.author_user_id else None
            round_, current_id, current_path, current_sha = case.round, current.id, current.path, current.sha256
        newest = {name: version for version, name in edits}  # a reviewer's newest edit speaks for them
        # ... unless it is the reviewed label itself (an edit undone back to the start): that reader edited nothing
        latest_edit = {name: version.path for name, version in newest.items() if version.sha256 != current_sha}
        fused, figures = fuse_readers(f"junior:{junior.name if junior else 'model'}", current_path, latest_edit)
        # no reviewer edited: the final is the reviewed label's own file (versions are immutable and content-named)
        sha, path = self.store.versions.put(case_id, fused if latest_edit else current_path)
        with self.store.write() as s:
            case = self._case(s, case_id)
            if case.state != "consensus" or case.round != round_:
                return case.final_version  # another process finished it first
            version = self._add_version(
                s,
                case,
                sha,
                path,
                "consensus",
                None,
                "consensus",
                {"parent": current_id, "readers": figures["readers"]},
            )
            case.final_version = version.id
            decision = (
                s.execute(
                    select(Decision)
                    .where(Decision.case_id == case.id, Decision.round == case.round)
                    .order_by(Decision.id.desc())
                )
                .scalars()
                .first()
            )
            if decision is not None:
                decision.agreement = figures
            audit.move(s, case, "final", "system", "finalise", f"consensus label v{version.id} ({figures['fusion']})")
            info = final_provenance(s, case, version)
        if self.publisher is not None:
            self.publisher(case_id, path, info)
        return version.id

    def recover(self, settled_s: float = 0.0, queued: Callable[[str], bool] = lambda case_id: False) -> int:
        """Finalise every case in ``consensus`` (a crash between the last vote and finalising, or a vote on another
        server of the team) that has been there at least ``settled_s`` seconds, oldest first, but those ``queued``
        for this process's finaliser (asked as each case comes: the queue moves meanwhile); returns how many were
        finalised. A case that fails is logged and left for the next call."""
        query = select(Case.id).where(Case.state == "consensus")
        if settled_s > 0:
            query = query.where(Case.updated <= utcnow() - timedelta(seconds=settled_s))
        with self.store.read() as s:
            pending = list(s.execute(query.order_by(Case.updated)).scalars())
        done = 0
        for case_id in pending:
            if queued(case_id):
                continue
            try:
                self.finalise(case_id)
                done += 1
            except Exception:  # one case that cannot be finalised must not hold up the others; retried next sweep
                log.exception("finalising %s failed; the others go on", case_id)
        return done
