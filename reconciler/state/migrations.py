"""The schema: one numbered list of migrations, for every backend.

Each entry is applied once, in order, in its own transaction; a backend records the
number of the last one applied. The SQL is written once, in the subset both engines
read; the few spellings that differ (row ids, 64-bit integers, byte strings, byte-order
text) are translated by the backend's dialect (`Dialect.ddl`), so there is no second
list to keep in step. Append only: a released migration is never edited.

Package lists are content-addressed blobs (see docs/architecture.md): a mirror or a
snapshot names the digest of its list, identical lists are stored once, listing objects
reads one small row each, and the package count is stored with the list it counts.
"""

from __future__ import annotations

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
    # 6: the lease of the `serve` that leads (reconciler/leader.py): who, since when, last
    # renewed; every replica reads it for /api/status
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        acquired_at TEXT NOT NULL,
        renewed_at TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def statements(number: int) -> list[str]:
    """The statements of migration `number` (0-based), one by one."""
    return [s.strip() for s in MIGRATIONS[number].split(";") if s.strip()]


def check(version: int) -> int:
    """`version` as recorded by a backend, refused when newer than this code knows."""
    from reconciler.errors import StateError

    if version > SCHEMA_VERSION:
        raise StateError(f"the state database has schema version {version}, newer than this "
                         f"reconciler knows ({SCHEMA_VERSION}); upgrade reconciler")
    return version
