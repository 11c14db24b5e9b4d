"""The SQLite backend: one file under the root, WAL mode, the embedded default.

Every connection is opened here, so every connection gets the same settings: WAL (readers
never block the one writer), a busy timeout (writers from other processes wait instead of
failing), foreign keys on. `PRAGMA user_version` holds the number of the last migration
applied; migrations run in order inside one transaction each, under an exclusive lock,
so two processes starting on a fresh root cannot both migrate.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.state import migrations
from reconciler.state.backend import Dialect

class SqliteSession:
    """One connection to the state file (autocommit outside `transaction`)."""

    dialect = Dialect()

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict]:
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        """Rows one at a time (SQLite steps the statement as they are read)."""
        cursor = self.conn.execute(sql, params)
        try:
            yield from cursor
        finally:
            cursor.close()

    @contextmanager
    def transaction(self, *, immediate: bool = True) -> Iterator[SqliteSession]:
        """One transaction: all of it commits, or none of it does.

        IMMEDIATE takes the write lock at the start, so a task never fails half-way with
        "database is locked" on its first write after having read under a stale snapshot.
        """
        self.conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[SqliteSession]:
        """A read-only view of one moment: a deferred transaction in WAL mode reads the
        snapshot its first read sees, whatever commits meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class SqliteBackend:
    """State in one SQLite file (`sqlite:///PATH`)."""

    dialect = Dialect()

    def __init__(self, path: Path):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def session(self, *, migrate: bool = True) -> SqliteSession:
        return connect(self.path, migrate=migrate)

    def integrity_problems(self, session: Any) -> list[str]:
        return integrity_problems(session)

    def close(self) -> None:
        """Nothing is pooled: each session is its own connection."""


def connect(path: Path, *, migrate: bool = True) -> SqliteSession:
    """Open the state database with the project's settings; create and upgrade it if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _setup_lock(path):
            conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            session = SqliteSession(conn)
            if migrate:
                upgrade(session)
            else:
                check_version(session)
    except sqlite3.DatabaseError as exc:
        raise StateError(_diagnose(path, exc)) from exc
    return session


def empty() -> SqliteSession:
    """An empty state in memory, at the current schema: what a read-only command reads
    where there is no state yet, so that reading never creates one."""
    session = SqliteSession(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))
    upgrade(session)
    return session


@contextmanager
def _setup_lock(path: Path) -> Iterator[None]:
    """Serialise opening: switching a new file to WAL can fail with "database is locked"
    without waiting (SQLite does not call the busy handler there) when another process
    is setting up the same file, as two commands started together on a fresh root do."""
    try:
        fd = os.open(path.with_name(path.name + ".open-lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only root: SQLite itself then says what is wrong
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _diagnose(path: Path, exc: sqlite3.DatabaseError) -> str:
    """Say why the database cannot be used: a read-only root is not a corrupt database."""
    directory = path.parent
    if not os.access(directory, os.W_OK) or os.statvfs(directory).f_flag & os.ST_RDONLY:
        return (f"{directory} is read-only: reconciler needs to write its state database there "
                f"({exc}); nothing was changed")
    if "full" in str(exc):
        return f"{path}: the disk is full ({exc}); nothing was changed"
    return (f"{path}: the state database cannot be used: {exc}. "
            "Run `reconciler verify` for details, or restore it from a backup.")


def check_version(session: SqliteSession) -> int:
    version = session.execute("PRAGMA user_version").fetchone()[0]
    return migrations.check(version)


def upgrade(session: SqliteSession) -> None:
    """Apply the migrations not applied yet, under one exclusive transaction."""
    if check_version(session) == migrations.SCHEMA_VERSION:
        return
    conn = session.conn
    conn.execute("BEGIN EXCLUSIVE")
    try:
        version = check_version(session)
        for number in range(version, migrations.SCHEMA_VERSION):
            for statement in migrations.statements(number):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def integrity_problems(session: SqliteSession) -> list[str]:
    """What SQLite's own checks find wrong (empty when the file is sound)."""
    rows = session.execute("PRAGMA integrity_check").fetchall()
    problems = [r[0] for r in rows if r[0] != "ok"]
    problems += [f"foreign key: {r}" for r in session.execute("PRAGMA foreign_key_check").fetchall()]
    return problems
