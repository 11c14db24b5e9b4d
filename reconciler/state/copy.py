"""`reconciler state copy`: move a state from one backend to another, and prove it arrived.

The source is read inside one snapshot (a consistent moment, while reconcilers may still
run against it); the destination is written in one transaction, so a failed copy leaves
it as empty as it was. Rows keep their ids (package lists name packages by id). What
only means something to running processes (lock claims, lists held by a running task,
the serve lease) is not copied. Afterwards both sides are read again and compared: the
objects, their digests and the counts must be the same, or the copy is reported failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import StateError
from reconciler.state import backend as statebackend
from reconciler.state.backend import Backend, Session

# Parents before children (foreign keys hold at every insert).
TABLES = ("package_lists", "packages", "pool_files", "mirrors", "snapshots", "publishes",
          "publish_sources", "owners", "tasks")
WITH_IDS = ("packages", "mirrors", "snapshots", "publishes", "tasks")
BATCH = 2000


@dataclass
class CopyReport:
    rows: dict[str, int]
    fingerprint: dict[str, list]

    def line(self, source: str, destination: str) -> str:
        counts = ", ".join(f"{n} {t}" for t, n in self.rows.items() if n)
        return f"state copy: {source} -> {destination}: {counts or 'nothing'}; both sides list the same objects"


def fingerprint(session: Session) -> dict[str, list]:
    """What must be equal on both sides: every object with its digests, and the counts."""
    def rows(sql: str) -> list:
        return [list(r) for r in session.execute(sql).fetchall()]

    return {
        "mirrors": rows("SELECT name, owner, list_digest, release_sha256, status FROM mirrors ORDER BY name"),
        "snapshots": rows("SELECT name, owner, list_digest, source_mirror FROM snapshots ORDER BY name"),
        "publishes": rows("SELECT name, owner, prefix, distribution, inputs_digest, release_sha256"
                          " FROM publishes ORDER BY name"),
        "lists": rows("SELECT digest, count FROM package_lists ORDER BY digest"),
        "counts": rows("SELECT (SELECT COUNT(*) FROM packages), (SELECT COUNT(*) FROM pool_files),"
                       " (SELECT COUNT(*) FROM publish_sources), (SELECT COUNT(*) FROM owners)"),
    }


def copy(source: Backend, destination: Backend) -> CopyReport:
    """Copy every row of `source` into `destination`, which must hold no state yet."""
    if source.url == destination.url:
        raise StateError("state copy: the source and the destination are the same state")
    if not source.exists():
        raise StateError(f"state copy: {source.describe()} holds no reconciler state; nothing was copied")
    src = source.session()
    try:
        dst = destination.session()
        try:
            if not statebackend.is_blank(dst):
                raise StateError(f"state copy: {destination.describe()} already holds state; nothing was copied. "
                                 "Copy into an empty database (or a new file)")
            with src.snapshot():
                running = src.execute("SELECT COUNT(*) FROM tasks WHERE state IN ('queued', 'running')").fetchone()[0]
                if running:
                    raise StateError(f"state copy: {running} task(s) are running on {source.describe()}; "
                                     "stop every reconciler using it, then copy")
                counts: dict[str, int] = {}
                with dst.transaction():
                    for table in TABLES:
                        counts[table] = _copy_table(src, dst, table)
                    for table in WITH_IDS:
                        restart = getattr(dst, "restart_ids", None)
                        if restart:
                            restart(table)
                expected = fingerprint(src)
            arrived = fingerprint(dst)
            if arrived != expected:
                differing = sorted(k for k in expected if expected[k] != arrived.get(k))
                raise StateError(f"state copy: {destination.describe()} differs from the source after the copy "
                                 f"({', '.join(differing)}); do not use it")
            return CopyReport(counts, expected)
        finally:
            dst.close()
    finally:
        src.close()


def _copy_table(src: Session, dst: Session, table: str) -> int:
    first = next(iter(src.query(f"SELECT * FROM {table} LIMIT 1")), None)
    if first is None:
        return 0
    columns = list(first)
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    select = f"SELECT {', '.join(columns)} FROM {table}"
    rows = src.stream(select)
    total, batch = 0, []
    for row in rows:
        batch.append(tuple(row))
        if len(batch) >= BATCH:
            dst.executemany(insert, batch)
            total, batch = total + len(batch), []
    if batch:
        dst.executemany(insert, batch)
        total += len(batch)
    return total
