"""The state database: one SQLite file under the root, WAL mode, numbered migrations.

Every connection is opened here, so every connection gets the same settings: WAL (readers
never block the one writer), a busy timeout (writers from other processes wait instead of
failing), foreign keys on. `PRAGMA user_version` holds the number of the last migration
applied; migrations run in order inside one transaction each, under an exclusive lock,
so two processes starting on a fresh root cannot both migrate.

Package lists are content-addressed blobs (see docs/architecture.md): a mirror or a
snapshot names the digest of its list, identical lists are stored once, listing objects
reads one small row each, and the package count is stored with the list it counts.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from reconciler.errors import StateError

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE package_lists (
        digest TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        ids BLOB NOT NULL
    );
    CREATE TABLE packages (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        arch TEXT NOT NULL,
        source TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        fields TEXT NOT NULL,
        files TEXT NOT NULL
    );
    CREATE INDEX packages_sha256 ON packages(sha256);
    CREATE INDEX packages_name ON packages(name, arch);
    CREATE TABLE pool_files (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        imported_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE mirrors (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        spec TEXT NOT NULL,
        protect INTEGER NOT NULL DEFAULT 0,
        list_digest TEXT REFERENCES package_lists(digest),
        status TEXT NOT NULL,
        update_complete INTEGER NOT NULL DEFAULT 0,
        release_sha256 TEXT,
        release_date TEXT,
        upstream TEXT,
        last_update TEXT,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        spec TEXT NOT NULL,
        protect INTEGER NOT NULL DEFAULT 0,
        source_mirror TEXT,
        source_snapshots TEXT,
        series TEXT,
        list_digest TEXT NOT NULL REFERENCES package_lists(digest),
        created_at TEXT NOT NULL
    );
    CREATE INDEX snapshots_mirror ON snapshots(source_mirror);
    CREATE INDEX snapshots_series ON snapshots(series);
    CREATE TABLE publishes (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        prefix TEXT NOT NULL,
        distribution TEXT NOT NULL,
        spec TEXT NOT NULL,
        protect INTEGER NOT NULL DEFAULT 0,
        sources TEXT NOT NULL,
        inputs_digest TEXT NOT NULL,
        release_sha256 TEXT,
        published_at TEXT NOT NULL,
        UNIQUE (prefix, distribution)
    );
    CREATE TABLE publish_sources (
        publish_id INTEGER NOT NULL REFERENCES publishes(id) ON DELETE CASCADE,
        component TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        PRIMARY KEY (publish_id, component)
    ) WITHOUT ROWID;
    CREATE INDEX publish_sources_snapshot ON publish_sources(snapshot);
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        resources TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        host TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        output TEXT NOT NULL DEFAULT '',
        error TEXT
    );
    CREATE INDEX tasks_state ON tasks(state);
    CREATE TABLE locks (
        key TEXT PRIMARY KEY,
        task_id INTEGER,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        description TEXT NOT NULL,
        acquired_at TEXT NOT NULL
    );
    """,
    # 2: which spec source last applied under each owner (apply refuses another source)
    """
    CREATE TABLE owners (
        owner TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        applied_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: lock holders, one row per (key, holder): shared holders of the pool key each
    # have a row, and a holder is told apart by pid and process identity (start time),
    # so rows of a process that is gone are recognised and ignored (reconciler/locks.py)
    """
    DROP TABLE locks;
    CREATE TABLE locks (
        key TEXT NOT NULL,
        holder TEXT NOT NULL,
        shared INTEGER NOT NULL,
        task_id INTEGER,
        pid INTEGER NOT NULL,
        identity TEXT NOT NULL,
        description TEXT NOT NULL,
        acquired_at TEXT NOT NULL,
        PRIMARY KEY (key, holder)
    ) WITHOUT ROWID;
    CREATE INDEX locks_task ON locks(task_id);
    """,
    # 4: what identifies a verified pool file (a publish links it only while these
    # still match, else it is hashed again), when its row was (re)recorded, and when
    # each publish last linked its tree (a file recorded later replaced one it links)
    """
    ALTER TABLE pool_files ADD COLUMN mtime_ns INTEGER;
    ALTER TABLE pool_files ADD COLUMN ino INTEGER;
    ALTER TABLE pool_files ADD COLUMN recorded_ns INTEGER;
    CREATE INDEX pool_files_recorded ON pool_files(recorded_ns);
    ALTER TABLE publishes ADD COLUMN linked_ns INTEGER;
    """,
    # 5: package lists a running task has stored and not switched to yet (a mirror update
    # stores its packages and list, downloads, then switches): a prune keeps them, and
    # the packages they hold, while that task is queued or running
    """
    CREATE TABLE pending_lists (
        task_id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open the state database with the project's settings; create and upgrade it if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _setup_lock(path):
            conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            db = sqlite_utils.Database(conn)
            if migrate:
                upgrade(db)
            else:
                check_version(db)
    except sqlite3.DatabaseError as exc:
        raise StateError(_diagnose(path, exc)) from exc
    return db


def empty() -> sqlite_utils.Database:
    """An empty state in memory, at the current schema: what a read-only command reads
    on a root that has no state yet, so that reading never creates a state.db."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    upgrade(db)
    return db


# Tables any use of a root writes to: all of them empty means a fresh database (or a lost one).
_CONTENT = ("tasks", "mirrors", "snapshots", "publishes", "packages", "pool_files")


def is_blank(db: sqlite_utils.Database) -> bool:
    """True when the database holds no row of any kind: never used, or emptied."""
    query = " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in _CONTENT)
    return not db.execute(f"SELECT {query}").fetchone()[0]


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


def check_version(db: sqlite_utils.Database) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StateError(f"the state database has schema version {version}, newer than this "
                         f"reconciler knows ({SCHEMA_VERSION}); upgrade reconciler")
    return version


def upgrade(db: sqlite_utils.Database) -> None:
    """Apply the migrations not applied yet, each in its own exclusive transaction."""
    if check_version(db) == SCHEMA_VERSION:
        return
    conn = db.conn
    conn.execute("BEGIN EXCLUSIVE")
    try:
        version = check_version(db)
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def transaction(db: sqlite_utils.Database, *, immediate: bool = True) -> Iterator[sqlite_utils.Database]:
    """One transaction: all of it commits, or none of it does.

    IMMEDIATE takes the write lock at the start, so a task never fails half-way with
    "database is locked" on its first write after having read under a stale snapshot.
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield db
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def integrity_problems(db: sqlite_utils.Database) -> list[str]:
    """What SQLite's own checks find wrong (empty when the file is sound)."""
    rows = db.execute("PRAGMA integrity_check").fetchall()
    problems = [r[0] for r in rows if r[0] != "ok"]
    problems += [f"foreign key: {r}" for r in db.execute("PRAGMA foreign_key_check").fetchall()]
    return problems
