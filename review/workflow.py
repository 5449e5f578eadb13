"""The AMOS review workflow: pre-label, junior correction, independent senior review per organ, rounds, consensus.

Every operation is one database transaction that checks the state machine (:mod:`review.states`), the actor's
role and ownership, writes its rows and an audit event, or changes nothing. Label files enter the content-addressed
version store before the transaction that names them.

The last vote moves a case to ``consensus``; finalising it (fusing labels, outside the write lock) is
:mod:`review.finalising`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import SimpleITK as sitk
from sqlalchemy import select

from amoslabel.ids import check_id
from amoslabel.config import ReviewSettings
from amoslabel.errors import Conflict, InputError, NotFound, Unprocessable
from amoslabel.organs import ORGANS
from review import assignments, audit, pass_policy
from review.assignments import assign
from review.carry_over import carry_approvals
from review.auth import Forbidden, Principal
from review.consensus import DECISIONS, OrganRule, decide_round, rules_from_config
from review.finalising import Finalising
from review.hot_paths import FALLBACK, HotPaths
from review.schema import AuditEvent, Case, Decision, LabelVersion, Review, User
from review.states import WHEN_YOU_CAN, where_it_is
from review.store import ReviewStore, utcnow
from review.summaries import case_summary
from review.votes import check_once, parse_vote, store_votes, vote_event

log = logging.getLogger(__name__)

Publisher = Callable[[str, Path, Dict[str, Any]], None]
# told, after its transaction, of each version a reader must see: {"case_id", "version", "round", "kind"
# ("submitted" or "reviewer edit"), "author" (a pseudonym), "path", "info"}
VersionListener = Callable[[Dict[str, Any]], None]
LabelSource = Union[str, Path, sitk.Image]  # a label file (copied into the version store) or an image (written)
_ORGAN_BY_NAME = {o.name: o.id for o in ORGANS}
MAX_COMMENT = 2000


class Workflow(Finalising, HotPaths):
    """All workflow operations over one :class:`ReviewStore`."""

    def __init__(self, store: ReviewStore, settings: ReviewSettings, publisher: Optional[Publisher] = None):
        self.store = store
        self.settings = settings
        self.publisher = publisher
        self.rules: Dict[int, OrganRule] = rules_from_config(
            OrganRule(settings.consensus.kind, settings.consensus.k),
            {name: OrganRule(r.kind, r.k) for name, r in settings.organ_rules.items()},
        )
        self.version_listeners: List[VersionListener] = []
        self.auto_threshold = pass_policy.AutoThreshold()  # review.pass_policy.threshold: auto

    # -- cases and versions -------------------------------------------------------------------------------------
    def register_case(self, case_id: str, actor: str = "system") -> str:
        """Create the case (state ``new``) if it does not exist; returns its state."""
        check_id(case_id, "case id")
        with self.store.write() as s:
            case = s.get(Case, case_id)
            if case is None:
                now = utcnow()
                s.add(Case(id=case_id, state="new", round=1, created=now, updated=now))
                audit.record(s, case_id, actor, "register", None, "new", "case registered")
                return "new"
            return case.state

    def register_cases(self, case_ids: Sequence[str], actor: str = "system") -> List[str]:
        """Register many cases in one transaction (start-up on a large datastore); returns the ones that are new."""
        ids = []
        for case_id in case_ids:
            try:
                ids.append(check_id(case_id, "case id"))
            except InputError as e:  # one oddly named file must not stop the server: skip it and say so
                log.warning("not a case: %s", e)
        with self.store.read() as s:
            known = set(s.execute(select(Case.id)).scalars())
        missing = [c for c in dict.fromkeys(ids) if c not in known]
        if missing:
            now = utcnow()
            with self.store.write() as s:
                s.add_all([Case(id=c, state="new", round=1, created=now, updated=now) for c in missing])
                s.add_all(
                    [
                        AuditEvent(
                            case_id=c,
                            actor=actor,
                            action="register",
                            from_state=None,
                            to_state="new",
                            reason="case registered",
                            at=now,
                            details={},
                        )
                        for c in missing
                    ]
                )
        with self.store.read() as s:
            return list(s.execute(select(Case.id).where(Case.state == "new")).scalars())

    def record_prelabel(self, case_id: str, label: LabelSource, model: str, info: Dict[str, Any]) -> int:
        """A model's pre-label: a new version; a ``new`` case becomes ``prelabelled`` and goes to a junior."""
        self.register_case(case_id)
        sha, path = self.store.versions.put(case_id, label)
        with self.store.write() as s:
            case = self._case(s, case_id)
            if case.state not in ("new", "prelabelled"):
                raise Conflict(f"{where_it_is(case.state)} A pre-label no longer replaces its label.", state=case.state)
            version = self._add_version(s, case, sha, path, "prelabel", None, model, info)
            if case.state == "new":
                audit.move(s, case, "prelabelled", f"model:{model}", "pre-label", f"pre-labelled by {model}")
            if self.settings.routing == "least_loaded":
                junior = next(iter(assignments.least_loaded(s, "junior", "annotate", exclude=set())), None)
                if junior is not None:
                    assign(s, case, junior, "annotate", "system", "routed to the least loaded junior", self.settings)
                    audit.move(s, case, "with_junior", "system", "route", f"assigned to {junior.name}")
            return version.id

    def import_final(self, case_id: str, label: LabelSource, source: str) -> int:
        """A label that came with the scan (e.g. AMOS ground truth): the case is final from the start."""
        self.register_case(case_id)
        sha, path = self.store.versions.put(case_id, label)
        with self.store.write() as s:
            case = self._case(s, case_id)
            if case.state == "final":
                return case.final_version
            version = self._add_version(s, case, sha, path, "imported", None, None, {"source": source})
            audit.move(s, case, "final", "import", "import", f"imported as final from {source}")
            case.final_version = version.id
            return version.id

    def record_opened(self, who: str, case_id: str, where: str, action: str = "open") -> None:
        """Audit who opened (or downloaded) which scan, and through what (the review page, the API, a viewer)."""
        with self.store.write() as s:
            case = s.get(Case, check_id(case_id, "case id"))
            state = case.state if case is not None else None
            audit.record(s, case_id, who, action, state, state, where)

    # -- junior ----------------------------------------------------------------------------------------------------
    def claim(self, who: Principal, case_id: str) -> Dict[str, Any]:
        """Take (or renew) the lease on a case in the user's queue (an expired lease counts as none)."""
        with self.store.write() as s:
            case = self._case(s, case_id)
            assignments.expire_stale(s, case)
            if who.role == "junior":
                if case.state not in ("prelabelled", "with_junior"):
                    raise Conflict(
                        f"{where_it_is(case.state)} Juniors take cases that wait for a junior.", state=case.state
                    )
                holder = assignments.live(s, case.id, "annotate")
                if holder and holder.user_id != who.id:
                    raise Conflict(f"Case {case_id!r} is with another junior.", state=case.state)
                if holder:
                    holder.expires = utcnow() + assignments.lease(self.settings, "annotate")
                else:
                    assign(s, case, self._user(s, who.id), "annotate", who.name, "claimed", self.settings)
                if case.state == "prelabelled":
                    audit.move(s, case, "with_junior", who.name, "claim", "claimed by a junior")
            elif who.role == "senior":
                if case.state != "in_review":
                    raise Conflict(f"{where_it_is(case.state)} {WHEN_YOU_CAN['review']}", state=case.state)
                self._check_not_author(s, case, who)
                mine = assignments.live(s, case.id, "review", user_id=who.id)
                if mine:
                    mine.expires = utcnow() + assignments.lease(self.settings, "review")
                elif assignments.reviewed_this_round(s, case, who):
                    raise Conflict(
                        f"You ({who.name}) have already voted in round {case.round} of case {case_id!r}; the "
                        "other reviewers' votes decide it now.",
                        state=case.state,
                    )
                elif assignments.review_slots(s, case, self.settings.reviewers_per_case) <= 0:
                    raise Conflict(
                        f"Case {case_id!r} already has its {self.settings.reviewers_per_case} reviewers.",
                        state=case.state,
                    )
                else:
                    assign(s, case, self._user(s, who.id), "review", who.name, "claimed a review slot", self.settings)
            else:
                raise Forbidden("admins do not claim cases; they resolve escalated ones")
            return self._summary(s, case, who)

    def save_version(
        self, who: Principal, case_id: str, label: LabelSource, submit: bool = False, info: Optional[dict] = None
    ) -> int:
        """A label saved by a user: a junior's correction (``submit`` also submits it) or a senior's edit.

        ``info`` is kept with the version (e.g. the viewer it came from)."""
        self._check_saver_role(who)
        sha, path = self.store.versions.put(check_id(case_id, "case id"), label)
        with self.store.write() as s:
            case = self._case(s, case_id)
            self._require_saver(s, case, who)
            if who.role == "junior":
                version = self._add_version(s, case, sha, path, "junior", who.id, None, dict(info or {}))
                case.current_version = version.id
                notice = self._submit(s, case, who) if submit else None
            else:
                version = self._add_version(s, case, sha, path, "senior_edit", who.id, None, dict(info or {}))
                notice = self._notice(case, version, "reviewer edit", who)
            version_id = version.id
        self._tell(notice)
        return version_id

    def check_may_save(self, who: Principal, case_id: str) -> None:
        """Raise what :meth:`save_version` would refuse ``who`` on the case, before any file is read: who may save is
        answered before what was sent (a 403 for someone else's case, not a 400 for its file)."""
        self._check_saver_role(who)
        with self.store.read() as s:
            self._require_saver(s, self._case(s, check_id(case_id, "case id")), who)

    @staticmethod
    def _check_saver_role(who: Principal) -> None:
        if who.role not in ("junior", "senior"):
            raise Forbidden(
                f"{who.name} is an {who.role}: labels are saved by a case's junior or its reviewers; admins settle "
                "escalated cases on the review pages"
            )

    def _require_saver(self, s, case: Case, who: Principal) -> None:
        if who.role == "junior":
            assignments.require(s, case, who, "annotate", "with_junior")
        else:
            assignments.require(s, case, who, "review", "in_review")
            self._check_not_author(s, case, who)

    def submit(self, who: Principal, case_id: str) -> Dict[str, Any]:
        """The junior hands the current label to review."""
        who.require("junior")
        fast = self._submit_fast(who, check_id(case_id, "case id"))
        if fast is not FALLBACK:
            summary, notice = fast
            self._tell(notice)
            return summary
        with self.store.write() as s:
            case = self._case(s, case_id)
            assignments.require(s, case, who, "annotate", "with_junior")
            notice = self._submit(s, case, who)
            summary = self._summary(s, case, who)
        self._tell(notice)
        return summary

    def _submit(self, s, case: Case, who: Principal) -> Dict[str, Any]:
        if case.current_version is None:
            raise Conflict(f"Case {case.id!r} has no label to submit yet: save one first.", state=case.state)
        current = s.get(LabelVersion, case.current_version)
        if current.kind == "prelabel":
            # the junior vouches for the pre-label unchanged: record that as their own version
            current = self._add_version(
                s, case, current.sha256, Path(current.path), "junior", who.id, None, {"unchanged_from": current.id}
            )
            case.current_version = current.id
        audit.move(s, case, "submitted", who.name, "submit", f"round {case.round} submitted")
        for assignment in assignments.actives(s, case.id, "annotate"):
            assignment.status = "done"
        seniors = assignments.pick_seniors(s, case, self.settings.reviewers_per_case)
        leases = {senior.name: assign(s, case, senior, "review", "system", "routed for review", self.settings)
                  for senior in seniors}  # fmt: skip
        if seniors:
            audit.move(s, case, "in_review", "system", "route", "to " + ", ".join(u.name for u in seniors))
        carried = carry_approvals(s, case, current, seniors)
        designated = pass_policy.plan(s, case, self.settings.pass_policy, [u.id for u in seniors], self.auto_threshold)
        for senior in seniors:  # nothing left for them (unchanged, or another's alone): their round is done already
            theirs = {_ORGAN_BY_NAME[n] for n in carried.get(senior.name, [])}
            if len(theirs | {o for o, r in designated.items() if r != senior.id}) >= len(ORGANS):
                leases[senior.name].status = "done"
        return self._notice(case, current, "submitted", who)

    @staticmethod
    def _notice(case: Case, version: LabelVersion, kind: str, who: Principal) -> Dict[str, Any]:
        return {
            "case_id": case.id,
            "version": version.id,
            "round": version.round,
            "kind": kind,
            "author": who.pseudonym,
            "path": version.path,
            "info": dict(version.info or {}),
        }

    def _tell(self, notice: Optional[Dict[str, Any]]) -> None:
        """Tell the listeners of a committed version; a listener's failure is logged, never the caller's."""
        for listener in self.version_listeners if notice else ():
            try:
                listener(notice)
            except Exception:
                log.exception("a version listener failed for %s v%s", notice["case_id"], notice["version"])

    # -- seniors -------------------------------------------------------------------------------------------------
    def review(
        self, who: Principal, case_id: str, votes: Sequence[Dict[str, Any]], default: Optional[str] = None
    ) -> Dict[str, Any]:
        """Record a senior's per-organ decisions (and comments); decide the round when every vote is in.

        Args:
            votes: ``{"organ": id or name, "decision": ..., "comment": text, "point_world": [x, y, z] (mm),
                "point_voxel": [i, j, k]}`` items.
            default: a decision for every organ this reviewer has not decided yet in this round.
        """
        who.require("senior")
        parsed = [parse_vote(v) for v in votes]
        if default is not None and default not in DECISIONS:
            raise Unprocessable(f"default decision must be one of {', '.join(DECISIONS)}")
        fast = self._review_fast(who, check_id(case_id, "case id"), parsed, default)
        if fast is not FALLBACK:
            return fast
        with self.store.write() as s:
            case = self._case(s, case_id)
            assignment = assignments.require(s, case, who.require("senior"), "review", "in_review")
            self._check_not_author(s, case, who)
            mine = select(Review).where(
                Review.case_id == case.id, Review.round == case.round, Review.user_id == who.id
            )  # fmt: skip
            rows = {r.organ: r for r in s.execute(mine).scalars()}
            done = {o for o, r in rows.items() if r.carried_from is None}
            carried = set(rows) - done  # approvals carried from the last round (review.carry_over)
            others = pass_policy.not_mine(s, case, who.id)  # another reader's alone
            now = utcnow()
            seen = check_once(parsed, done, who.name)
            for organ in carried & seen:  # a vote on an organ whose approval was carried reopens it
                s.delete(rows[organ])
            s.flush()
            if default is not None:
                parsed += [
                    {"organ": o.id, "decision": default} for o in ORGANS if o.id not in set(rows) | seen | others
                ]
            if not parsed:
                raise Unprocessable("no organ decision to record: send votes, or a default for the organs left")
            where = {"case_id": case.id, "round": case.round, "user_id": who.id, "created": now}
            store_votes(s.execute, where, parsed, case.current_version)
            s.add(AuditEvent(**vote_event(case.id, who.name, case.state, parsed)))
            if len(done | carried | others | {v["organ"] for v in parsed}) >= len(ORGANS):
                assignment.status = "done"
            self._decide(s, case)
            return self._summary(s, case, who)

    def _decide(self, s, case: Case) -> None:
        readers = assignments.readers(s, case)
        if len(readers) < assignments.readers_needed(s, case, self.settings.reviewers_per_case):
            return  # review slots are still open: a round is never decided by fewer readers than it should have
        votes: Dict[int, Dict[int, str]] = {}
        for review in s.execute(select(Review).where(Review.case_id == case.id, Review.round == case.round)).scalars():
            votes.setdefault(review.organ, {})[review.user_id] = review.decision
        outcome, organs = decide_round(votes, len(readers), self.rules, set(pass_policy.one_approval(s, case)))
        if outcome != "pending":
            self._settle(s, case, outcome, organs)

    def _settle(self, s, case: Case, outcome: str, organs: Dict[int, str]) -> None:
        """Record a decided round: consensus, or changes back to the junior (escalated after the last round)."""
        names = {o.id: o.name for o in ORGANS}
        s.add(
            Decision(
                case_id=case.id,
                round=case.round,
                outcome=outcome,
                organs={names[k]: v for k, v in organs.items()},
                created=utcnow(),
            )
        )
        if outcome == "consensus":
            audit.move(s, case, "consensus", "system", "consensus", f"round {case.round}: every organ approved")
            return
        sent_back = [names[k] for k, v in organs.items() if v == "changes"]
        if case.round >= self.settings.max_rounds:
            audit.move(
                s,
                case,
                "escalated",
                "system",
                "escalate",
                f"round {case.round} of at most {self.settings.max_rounds}: changes on {', '.join(sent_back)}",
            )
            return
        audit.move(s, case, "changes_requested", "system", "changes", "changes requested on " + ", ".join(sent_back))
        self._back_to_junior(s, case, "system")

    def _back_to_junior(self, s, case: Case, actor: str) -> None:
        case.round += 1
        audit.move(s, case, "with_junior", actor, "return", f"round {case.round} with the junior")
        junior = s.get(User, case.junior_id) if case.junior_id else None
        if junior is not None and junior.active:
            assign(s, case, junior, "annotate", actor, "returned with the reviewers' comments", self.settings)

    def resolve(self, who: Principal, case_id: str, action: str) -> Dict[str, Any]:
        """An admin settles an escalated case: ``reopen`` (another round) or ``accept`` (current label final)."""
        who.require("admin")
        with self.store.write() as s:
            case = self._case(s, case_id)
            if case.state != "escalated":
                raise Conflict(
                    f"{where_it_is(case.state)} Admins settle only cases the reviewers could not agree on.",
                    state=case.state,
                )
            if action == "reopen":
                self._back_to_junior(s, case, who.name)
            elif action == "accept":
                audit.move(s, case, "consensus", who.name, "accept", "accepted by an admin")
            else:
                raise Unprocessable("action must be 'reopen' or 'accept'")
            return self._summary(s, case, who)

    # -- withdrawal -----------------------------------------------------------------------------------------------
    def withdraw(self, who: Principal, case_id: str, reason: str) -> Dict[str, Any]:
        """An admin takes a case out of the work (a wrong patient, consent withdrawn): out of every queue (its leases
        end), out of scoring and out of training (only ``final`` cases train). Its versions and history stay; a
        withdrawn case is withdrawn again without change."""
        who.require("admin")
        if not isinstance(reason, str) or not reason.strip():
            raise Unprocessable("a withdrawal needs a reason (it goes in the case's history)")
        with self.store.write() as s:
            case = self._case(s, case_id)
            if case.state != "withdrawn":
                for duty in ("annotate", "review"):
                    for assignment in assignments.actives(s, case.id, duty):
                        assignment.status = "released"
                audit.move(s, case, "withdrawn", who.name, "withdraw", reason.strip()[:500])
            return self._summary(s, case, who)

    def final_labels(self) -> List[Dict[str, Any]]:
        """Every final case with its final label file: the only labels training may use."""
        with self.store.read() as s:
            rows = s.execute(
                select(Case.id, LabelVersion.path, LabelVersion.id, LabelVersion.kind)
                .join(LabelVersion, LabelVersion.id == Case.final_version)
                .where(Case.state == "final")
                .order_by(Case.id)
            ).all()
        return [{"case_id": r[0], "label": r[1], "version": r[2], "kind": r[3]} for r in rows]

    # -- leases and priorities -----------------------------------------------------------------------------------
    def expire_leases(self) -> int:
        """Expired leases return their case to the pool; each expiry is logged. Returns how many expired."""
        return assignments.expire_due(self.store)

    def set_priority(self, case_id: str, score: float, reason: str) -> None:
        """Queue order hook for active learning: a higher score comes first (FIFO among equal scores)."""
        if not math.isfinite(score):
            raise Unprocessable("priority must be a finite number")
        with self.store.write() as s:
            case = self._case(s, case_id)
            case.priority, case.priority_reason = float(score), reason[:500]

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _case(self, s, case_id: str) -> Case:
        check_id(case_id, "case id")
        case = self.store.lock_case(s, case_id) if s.info.get("write") else s.get(Case, case_id)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        return case

    @staticmethod
    def _user(s, user_id: int) -> User:
        return s.get(User, user_id)

    def _check_not_author(self, s, case: Case, who: Principal) -> None:
        authors = set(
            s.execute(
                select(LabelVersion.author_user_id).where(
                    LabelVersion.case_id == case.id, LabelVersion.kind.in_(("junior", "imported"))
                )
            ).scalars()
        )
        if who.id in authors:
            raise assignments.refuse_author(case.id, case.state, who)

    def _add_version(self, s, case, sha, path, kind, user_id, model, info) -> LabelVersion:
        version = LabelVersion(
            case_id=case.id,
            sha256=sha,
            path=str(path),
            kind=kind,
            author_user_id=user_id,
            author_model=model,
            parent_id=case.current_version,
            round=case.round,
            created=utcnow(),
            info=info,
        )
        s.add(version)
        s.flush()
        if kind in ("prelabel", "junior", "imported"):
            case.current_version = version.id
        audit.record(
            s,
            case.id,
            model or (s.get(User, user_id).name if user_id else "system"),
            "version",
            case.state,
            case.state,
            f"{kind} label v{version.id}",
            {"sha256": sha},
        )
        return version

    def _summary(self, s, case: Case, who: Optional[Principal] = None) -> Dict[str, Any]:
        return case_summary(s, case)
