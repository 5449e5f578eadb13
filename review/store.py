"""Where the review workflow keeps its state: a SQL database and a folder of immutable label files.

SQLite (the embedded default, a file in the studies folder) runs in WAL mode, and every write transaction starts with
``BEGIN IMMEDIATE``: writers are serialised at the start of a transaction, so a read-modify-write can never lose an
update and a crash leaves either the whole transition or none of it. A PostgreSQL URL works too; there, the case row
is locked with ``SELECT ... FOR UPDATE`` instead.

Label files are content-addressed (``<root>/<case>/<sha256>.nii.gz``), written atomically and fsynced *before* the
database row that names them is committed, and never overwritten or deleted by the workflow.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

import SimpleITK as sitk

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from amoslabel.cluster.leadership import lock_key
from amoslabel.errors import Unavailable
from amoslabel.files import file_sha256, fsync_dir, fsync_file, full_disk_refused
from amoslabel.ids import check_id
from amoslabel.volume import write_image
from amoslabel.workspace import Workspace
from review.schema import Base, Case

_VERSION_NAME = re.compile(r"[0-9a-f]{64}\.nii\.gz")


def utcnow() -> datetime:
    """Timestamps are stored as naive UTC (SQLite keeps no time zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def database_url(studies: str | Path) -> str:
    """The default store: a SQLite file in the studies folder's workspace."""
    path = Workspace(Path(studies)).review_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class ReviewStore:
    """Sessions on the review database, with one transaction per workflow transition."""

    def __init__(self, url: str, versions_dir: str | Path):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # two engines on one file: writes begin IMMEDIATE (take the write lock first), reads begin deferred
            self.engine = _sqlite_engine(url, "BEGIN IMMEDIATE")
            self._read_engine = _sqlite_engine(url, "BEGIN")
        else:
            # pool_pre_ping: a round trip before lending a connection (about 0.1 ms), so that no request fails on a
            # connection PostgreSQL dropped (a restart): without it the first request of each pooled connection did
            self.engine = create_engine(url, pool_size=20, max_overflow=10, pool_pre_ping=True)
            self._read_engine = self.engine
        with self.engine.begin() as connection:  # the tables, and columns and indexes added since a store was made
            if not self.is_sqlite:  # servers of a team starting (or upgraded) together: one at a time
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("amoslabel:schema")})
            Base.metadata.create_all(connection)
            _add_missing_columns(connection)
            for table in Base.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(connection, checkfirst=True)
        self._writes = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self._read_engine, expire_on_commit=False)
        self.versions = VersionFiles(versions_dir)
        self._write_turn = threading.Lock() if self.is_sqlite else nullcontext()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back entirely if it raises."""
        # SQLite has one writer at a time; threads of this process queue here rather than in SQLite's busy handler,
        # whose sleeps (1 to 100 ms, growing) would otherwise set the latency tail. Other processes still wait there.
        with self._write_turn, _unavailable_when_down(), self._writes() as session:
            session.info["write"] = True  # workflow reads of a case row in this session lock it
            try:
                yield session
                session.commit()
            except BaseException:
                try:
                    session.rollback()
                except (OperationalError, InterfaceError):  # the connection is gone, and the transaction with it
                    pass
                raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        with _unavailable_when_down(), self._reads() as session:
            yield session

    def ping(self) -> None:
        """One round trip to the database (health checks); :class:`Unavailable` when it does not answer."""
        with self.read() as session:
            session.execute(text("SELECT 1"))

    def lock_case(self, session: Session, case_id: str) -> Case | None:
        """The case row, locked for this transaction (SQLite: already serialised by BEGIN IMMEDIATE)."""
        query = select(Case).where(Case.id == case_id)
        if not self.is_sqlite:
            query = query.with_for_update()
        return session.execute(query).scalar_one_or_none()

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


@contextmanager
def _unavailable_when_down() -> Iterator[None]:
    """A database that cannot be reached (PostgreSQL stopped or restarting, a lost connection) is a 503 with a
    message, not a 500: the request was not acknowledged, and the client may try again. The pool checks a
    connection before lending it (``pool_pre_ping``), so once the database is back the next request reconnects."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        if not _is_unreachable(error):
            raise
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:200]
        raise Unavailable(f"the review database is unavailable ({reason}): try again shortly") from error


def _is_unreachable(error: Exception) -> bool:
    """A lost or refused connection (PostgreSQL's SQLSTATE classes 08 and 57P0x, or no SQLSTATE: the client library
    lost the server), or SQLite's file locked past its busy timeout: not a deadlock, a timeout or a bad statement,
    which stay errors of their own."""
    if getattr(error, "connection_invalidated", False) or isinstance(error, InterfaceError):
        return True
    original = getattr(error, "orig", None)
    if type(original).__module__.startswith("sqlite3"):
        return "locked" in str(original) or "unable to open" in str(original)
    state = getattr(original, "sqlstate", None)
    return state is None or state.startswith("08") or state.startswith("57P0")


def _add_missing_columns(connection) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each column of the schema that an older store lacks (nullable, or with a
    server default, so existing rows stay valid)."""
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            default = f" DEFAULT '{column.server_default.arg}'" if column.server_default is not None else ""
            connection.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}')


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=20, max_overflow=10)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # take transaction control from pysqlite (its own BEGIN is deferred, which lets two writers read the same
        # row before either writes: a lost update)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged transition survives a power cut, not only a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql(begin)

    return engine


class StoredLabel(NamedTuple):
    """A label file in the version store: its content hash, and its path (``<root>/<case>/<sha256>.nii.gz``)."""

    sha256: str
    path: Path


class VersionFiles:
    """Immutable label files, named by their content hash."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, case_id: str, source: str | Path | sitk.Image) -> StoredLabel:
        """Store a label file (copied) or a label image (written) once, atomically and fsynced, unless the same
        content is already there. A file already in this store is returned as it is.

        Raises:
            StorageFull: the store's disk is full; nothing of the file stays behind.
        """
        with full_disk_refused():
            return self._put(check_id(case_id, "case id"), source)

    def _put(self, case_id: str, source: str | Path | sitk.Image) -> StoredLabel:
        folder = self.root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(source, sitk.Image):
            tmp = folder / f".incoming-{uuid.uuid4().hex}.nii.gz"
            try:
                write_image(source, tmp)
                return self._keep(folder, tmp, file_sha256(tmp))
            finally:
                tmp.unlink(missing_ok=True)
        source = Path(source)
        if not source.name.endswith(".nii.gz"):
            # the store keeps gzipped NIfTI as <digest>.nii.gz: a file in another format (an NRRD answer, as Slicer
            # and MONAI Label's OHIF panel ask for) is converted, never copied under that name
            return self._put(case_id, sitk.ReadImage(str(source)))
        if source.parent.resolve() == folder.resolve() and _VERSION_NAME.fullmatch(source.name):
            return StoredLabel(source.name.split(".")[0], source)
        digest = file_sha256(source)
        target = folder / f"{digest}.nii.gz"
        if target.exists():
            return StoredLabel(digest, target)
        tmp = folder / f".incoming-{uuid.uuid4().hex}.nii.gz"
        try:
            shutil.copyfile(source, tmp)
            return self._keep(folder, tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _keep(folder: Path, tmp: Path, digest: str) -> StoredLabel:
        """Rename a complete temporary file into place as ``<digest>.nii.gz`` (unless that content is there)."""
        target = folder / f"{digest}.nii.gz"
        if not target.exists():
            fsync_file(tmp)
            os.replace(tmp, target)
            fsync_dir(folder)
        return StoredLabel(digest, target)
