"""The review store's tables (SQLAlchemy ORM). Every transition of the workflow writes these in one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person with a role: junior, senior or admin; a password is optional (an Argon2id hash, never the password)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True)
    created: Mapped[datetime]
    password_hash: Mapped[Optional[str]] = mapped_column(String(200), default=None)


class Token(Base):
    """A token: its public id and an Argon2 hash of its secret (the secret itself is never stored).

    ``api`` tokens are made by an admin and last until revoked; ``access`` tokens are what a login returns
    (``POST /auth/token``) and also expire.
    """

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime]
    revoked: Mapped[Optional[datetime]] = mapped_column(default=None)
    kind: Mapped[str] = mapped_column(String(8), default="api", server_default="api")
    expires: Mapped[Optional[datetime]] = mapped_column(default=None)


class LoginFailure(Base):
    """Failed logins of one user name from one client address, for throttling (:mod:`review.logins`); the row goes
    at the next success. In the store, so every server of a team throttles alike."""

    __tablename__ = "login_failures"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last: Mapped[datetime]
    wait_until: Mapped[Optional[datetime]] = mapped_column(default=None)


class Case(Base):
    """One image under annotation."""

    __tablename__ = "cases"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(24), index=True)
    round: Mapped[int] = mapped_column(default=0)
    current_version: Mapped[Optional[int]] = mapped_column(ForeignKey("label_versions.id", use_alter=True))
    final_version: Mapped[Optional[int]] = mapped_column(ForeignKey("label_versions.id", use_alter=True))
    junior_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"))
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    priority_reason: Mapped[Optional[str]] = mapped_column(Text)
    created: Mapped[datetime]
    updated: Mapped[datetime]
    # a queue reads one state's cases in priority order and stops at the first few its user may take: with this
    # index that is an ordered scan that ends early, not a sort of every case in the state
    __table_args__ = (Index("ix_cases_queue", "state", priority.desc(), "created", "id"),)


class LabelVersion(Base):
    """An immutable, content-hashed label file with its provenance."""

    __tablename__ = "label_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # prelabel | junior | senior_edit | consensus | imported
    author_user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"))
    author_model: Mapped[Optional[str]] = mapped_column(String(64))
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("label_versions.id"))
    round: Mapped[int]
    created: Mapped[datetime]
    info: Mapped[dict] = mapped_column(JSON, default=dict)


class Assignment(Base):
    """A user's lease on a case: as its junior, or as one of its reviewers in a round."""

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    duty: Mapped[str] = mapped_column(String(8))  # annotate | review
    round: Mapped[int]
    status: Mapped[str] = mapped_column(String(12))  # active | done | expired | released
    assigned: Mapped[datetime]
    expires: Mapped[datetime]
    # a case's live leases (every transition), and each user's load (routing): without these SQLite's planner
    # walks every active assignment of the store
    __table_args__ = (
        Index("ix_assignments_case_live", "case_id", "status", "duty"),
        Index("ix_assignments_load", "status", "duty", "user_id"),
    )


class Review(Base):
    """One senior's decision on one organ in one round."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    round: Mapped[int]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    organ: Mapped[int]
    decision: Mapped[str] = mapped_column(String(20))  # approve | changes_requested | not_assessable
    version_id: Mapped[Optional[int]] = mapped_column(ForeignKey("label_versions.id"))
    carried_from: Mapped[Optional[int]] = mapped_column(default=None)  # an approval carried from that round
    created: Mapped[datetime]
    __table_args__ = (UniqueConstraint("case_id", "round", "user_id", "organ", name="uq_review_once"),)


class Comment(Base):
    """A reviewer's comment on an organ, optionally anchored at a 3D point (world mm and voxel index)."""

    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    round: Mapped[int]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    organ: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    point_world: Mapped[Optional[list]] = mapped_column(JSON)
    point_voxel: Mapped[Optional[list]] = mapped_column(JSON)
    created: Mapped[datetime]


class Decision(Base):
    """The consensus outcome of one round: per-organ states, the rule used, agreement figures."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    round: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(20))  # consensus | changes_requested | escalated
    organs: Mapped[dict] = mapped_column(JSON)
    agreement: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[datetime]


class AuditEvent(Base):
    """Who did what to which case, from which state to which, when and why."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[Optional[str]] = mapped_column(String(128), index=True)
    actor: Mapped[str] = mapped_column(String(96))
    # by action: the pass policy's plans and calibrations are read across cases (the overview page, auto threshold)
    action: Mapped[str] = mapped_column(String(32), index=True)
    from_state: Mapped[Optional[str]] = mapped_column(String(24))
    to_state: Mapped[Optional[str]] = mapped_column(String(24))
    reason: Mapped[Optional[str]] = mapped_column(Text)
    at: Mapped[datetime]
    details: Mapped[dict] = mapped_column(JSON, default=dict)


class CaseScore(Base):
    """A case's active-learning scores, with what they were computed from (kept across restarts)."""

    __tablename__ = "case_scores"
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    computed: Mapped[datetime]
    members: Mapped[dict] = mapped_column(JSON, default=dict)  # member name -> model version (None: the prior)
    attention_ml: Mapped[float] = mapped_column(Float, default=0.0)
    uncertainty: Mapped[float] = mapped_column(Float, default=0.0)
    foreground_ml: Mapped[float] = mapped_column(Float, default=0.0)
    descriptor: Mapped[list] = mapped_column(JSON, default=list)
    components: Mapped[dict] = mapped_column(JSON, default=dict)
