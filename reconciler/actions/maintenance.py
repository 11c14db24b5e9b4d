"""gc and verify: whole-root maintenance tasks.

gc takes the pool lock exclusively: every task that imports or relies on pool files
holds it shared, so gc can never delete a file imported a moment ago and not yet
named by a list. The live set goes into a temporary SQLite table rather than a Python
set, so gc's memory does not grow with the size of the pool.

gc deletes only what the database can account for: files it recorded in `pool_files`
that no list names. A file it never recorded may belong to a state that was lost or
restored from an older backup, so it stays unless asked for (an update killed before
its last batch was recorded leaves such files too; the next update of a mirror that
wants them records them). A database that names no mirror and no snapshot beside a
pool with files is refused outright. With the pool held exclusively no task is building
a list, so gc also sweeps every package row no list holds (the per-update prune is
incremental and leaves rows of an update killed before it stored its list).

verify changes nothing (a damaged pool file it finds is quarantined by a task of its
own); it reads under locks as a holder without a task row, so a publish switching or gc
collecting meanwhile is waited for, not reported as drift.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from reconciler import locks, tasks, tree
from reconciler.errors import ReconcilerError, Refused
from reconciler.pool import file_sha256
from reconciler.state.stores import Store


@dataclass
class GcReport:
    files: int = 0
    bytes: int = 0
    lists: int = 0
    packages: int = 0  # package rows no list held any more
    unrecorded: int = 0
    unrecorded_bytes: int = 0
    paths: list[str] = field(default_factory=list)

    def line(self, dry_run: bool) -> str:
        verb = "would free" if dry_run else "freed"
        text = f"gc: {verb} {self.files} file(s), {self.bytes / 1e6:.1f} MB"
        if self.unrecorded:
            text += (f"; left {self.unrecorded} file(s), {self.unrecorded_bytes / 1e6:.1f} MB, that state.db never "
                     "recorded and no list names (from a lost or older state.db, or an update killed before it "
                     "recorded them): if state.db is right, `reconciler gc --include-unrecorded` deletes them")
        return text


def _live_lists(db) -> list[str]:
    rows = db.execute("SELECT list_digest FROM mirrors WHERE list_digest IS NOT NULL"
                      " UNION SELECT list_digest FROM snapshots").fetchall()
    return [r[0] for r in rows]


def _refuse_without_objects(task: tasks.Task) -> None:
    """A database naming no mirror and no snapshot beside a pool with files is more likely
    lost or wrong than deliberately emptied: gc would delete the whole pool."""
    db = task.store.db
    if db.execute("SELECT EXISTS (SELECT 1 FROM mirrors) OR EXISTS (SELECT 1 FROM snapshots)").fetchone()[0]:
        return
    if next(iter(task.pool.walk()), None) is not None:
        raise Refused(f"gc: the state ({task.ctx.state_name}) names no mirror and no snapshot, yet the pool {task.pool.root} holds "
                      "files; nothing was deleted. If state.db was lost or replaced, restore it from a backup; "
                      "if everything was dropped on purpose, remove the pool directory yourself")


def gc(ctx: tasks.Context, *, dry_run: bool = False, include_unrecorded: bool = False) -> GcReport:
    """Delete pool files that state.db recorded (`pool_files`) and no mirror or snapshot
    list names; files it never recorded stay unless `include_unrecorded`."""

    def body(task: tasks.Task) -> GcReport:
        store = task.store
        db = store.db
        _refuse_without_objects(task)
        report = GcReport()
        if not dry_run:
            with task.transaction() as tx:
                report.lists = tx.lists.prune()
                # Holding the pool exclusively, no task is building a list it has not stored.
                report.packages = tx.packages.prune_unlisted(tx.lists.held())
        db.execute(db.dialect.temp_table("live", "sha256 TEXT PRIMARY KEY"))
        db.execute("DELETE FROM live")
        for digest in _live_lists(db):
            ids = store.lists.ids(digest)
            db.executemany("INSERT INTO live VALUES (?) ON CONFLICT DO NOTHING",
                                ((sha,) for sha, _size, _path in store.packages.files(ids)))
        for sha, size in task.pool.walk():
            if db.execute("SELECT 1 FROM live WHERE sha256 = ?", (sha,)).fetchone():
                continue
            if not include_unrecorded and not db.execute("SELECT 1 FROM pool_files WHERE sha256 = ?",
                                                         (sha,)).fetchone():
                report.unrecorded += 1
                report.unrecorded_bytes += size
                continue
            report.files += 1
            report.bytes += size
            if dry_run:
                report.paths.append(str(task.pool.path(sha)))
            else:
                task.pool.remove(sha)
                db.execute("DELETE FROM pool_files WHERE sha256 = ?", (sha,))
        db.execute("DROP TABLE live")
        task.log(report.line(dry_run))
        return report

    return tasks.run(ctx, "gc", [locks.POOL], body, pool=False)


def _quarantine(ctx: tasks.Context, sha: str) -> str | None:
    """Move a pool file that failed its hash to quarantine and forget it, as a task
    holding the pool lock shared like any import (hashed again inside: it may have
    been repaired meanwhile)."""
    def body(task: tasks.Task) -> str | None:
        path = task.pool.path(sha)
        try:
            if file_sha256(path)[0] == sha:
                return None
        except FileNotFoundError:
            return None
        where = task.pool.quarantine(sha)
        with task.transaction() as tx:
            tx.forget_pool_file(sha)
        task.log(f"pool: {sha} quarantined to {where}")
        return where

    return tasks.run(ctx, f"quarantine pool file {sha[:12]}", [], body)


def verify(ctx: tasks.Context, *, deep: bool = False) -> list[str]:
    """Everything wrong with the root: database, pool files of every list, published trees.

    With `deep`, a pool file whose content no longer matches its SHA-256 is moved to
    `pool/quarantine/` (kept as evidence) and forgotten, so the next apply re-fetches it.

    It reads under locks, so a publish switching or gc collecting while it runs is
    waited for, never reported as drift: the pool key shared throughout (gc deletes
    nothing meanwhile), and each publish's key while its tree is checked (a switch
    renames files and then records the new row, both inside that lock)."""
    db = ctx.connect()
    try:
        with _reading(ctx, db, shared=[locks.POOL]):
            problems = _verify_state(ctx, db, deep)
            for (name,) in db.execute("SELECT name FROM publishes ORDER BY prefix, distribution").fetchall():
                problems += _verify_publish(ctx, db, name, deep)
    finally:
        db.close()
    return problems


@contextmanager
def _reading(ctx: tasks.Context, db, keys: Iterable[str] = (), *, shared: Iterable[str] = ()) -> Iterator[None]:
    """Hold `keys` (and `shared` shared) for a read-only check: a lock holder with no task
    row. verify changes nothing (quarantine is a task of its own), and a task row per
    tree checked would push the history of real changes out of the task table; the
    `locks` row still names verify to whoever waits. A root without state has nothing
    to wait for, and one this process cannot write (a read-only mount) is read unlocked."""
    with ExitStack() as stack:
        if ctx.has_state():
            try:
                stack.enter_context(ctx.locks.hold(keys, shared=shared, timeout=ctx.lock_timeout,
                                                   description="verify (read-only)", db=db))
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
        yield


def _verify_state(ctx: tasks.Context, db, deep: bool) -> list[str]:
    """The database itself, and the pool files of every list."""
    problems = [f"state: {p}" for p in ctx.backend.integrity_problems(db)]
    store = Store(db)
    problems += [f"state: {p}" for p in store.problems()]
    seen: set[str] = set()
    for digest in _live_lists(db):
        for sha, size, path in store.packages.files(store.lists.ids(digest)):
            if sha in seen:
                continue
            seen.add(sha)
            if not ctx.pool.has(sha, size):
                problems.append(f"pool: {path} ({sha[:12]}) is missing or has the wrong size")
            elif deep and file_sha256(ctx.pool.path(sha))[0] != sha:
                where = _quarantine(ctx, sha)
                moved = f": moved to {where}; the next apply re-fetches it from its mirror" if where else ""
                problems.append(f"pool: {path} ({sha[:12]}) content does not match its SHA-256{moved}")
    return problems


def _verify_publish(ctx: tasks.Context, db, name: str, deep: bool) -> list[str]:
    """One published tree against its row, both read inside the publish's lock (the row
    read again there: the place it names may have moved while we waited)."""
    store = Store(db)
    for _ in range(3):
        row = store.publishes.get(name)
        if row is None:
            return []  # dropped meanwhile
        with _reading(ctx, db, [locks.publish(row.prefix, row.distribution)]):
            fresh = store.publishes.get(name)
            if fresh is None:
                return []
            if (fresh.prefix, fresh.distribution) == (row.prefix, row.distribution):
                return _check_tree(ctx, fresh, deep)
    return [f"publish/{name}: moved while verify waited for it, three times; run verify again"]


def _check_tree(ctx: tasks.Context, row, deep: bool) -> list[str]:
    from reconciler import treeverify
    from reconciler.actions.publish import _keyring, signer_for
    from reconciler.fetch import sha256_bytes
    from reconciler.spec import PublishDoc

    problems = []
    keyring = None
    doc = PublishDoc.model_validate({"apiVersion": "reconciler/v1", "kind": "Publish",
                                     "metadata": {"name": row.name}, "spec": row.spec})
    try:
        signer = signer_for(ctx, doc)
        if signer:
            with signer:
                keyring = _keyring(ctx, signer)
    except ReconcilerError as exc:  # a missing key file must not hide the tree check
        problems.append(f"publish/{row.name}: cannot load the signing key to check signatures: {exc}")
    found = treeverify.verify_tree(ctx.publish_dir, row.prefix, row.distribution, keyring=keyring, deep=deep)
    problems += [f"publish/{row.name}: {p}" for p in found]
    release = tree.dist_dir(ctx.publish_dir, row.prefix, row.distribution) / "Release"
    if release.exists() and row.release_sha256:
        if sha256_bytes(release.read_bytes()) != row.release_sha256:
            problems.append(f"publish/{row.name}: Release on disk differs from the one published (drift)")
    return problems
