"""Locked tasks: every mutation runs through `run`.

`run(ctx, name, keys, fn)` records the task, takes the locks on `keys` (canonical order,
waiting up to the context's timeout), and only then hands `fn` a `Task` with a fresh
connection to the database. Nothing loaded before the lock can leak in: `fn` receives
no objects, only the task, and loads what it needs by name (nothing loaded before the lock is used after it).

`fn` reads outside any transaction (safe: the resource locks keep other tasks off the
objects it reads) and makes its whole state change inside one `task.transaction()`, so
an exception leaves the database exactly as it was. The transaction is kept short on
purpose: SQLite has one writer at a time, and a task that held the write lock through a
download or a tree export would stall every other task, whatever its keys.

Tasks interrupted by a crash stay `running` in the table until the next `Context`
opens the root: `recover` marks those whose process is gone as failed.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from reconciler import locks
from reconciler.errors import ReconcilerError, StateError, StorageError
from reconciler.fetch import Progress
from reconciler.pool import FilesystemPool
from reconciler.state import backend as statebackend
from reconciler.state import sqlite as statesqlite
from reconciler.state.stores import Store, now

T = TypeVar("T")
DEFAULT_LOCK_TIMEOUT = float(os.environ.get("RECONCILER_LOCK_TIMEOUT", "1800"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Context:
    """Where the state lives and how tasks behave; small and passed explicitly.

    Nothing is created by making a context: a task's first connection creates the root
    and its state.db. A context with `create=False` (the read-only commands) never
    creates them: a root without state reads as empty, and the scratch directories it
    needs (pool, tmp, index cache) go to a private temporary directory instead.
    Every opening refuses a root whose state is lost (see `connect`).

    `clock` is the time every decision reads: the planner's `now` (series members,
    Valid-Until renewal), the Date and Valid-Until a publish writes, and the Valid-Until
    check of an upstream Release. Tasks record their own timestamps with the wall clock.
    """

    root: Path
    publish_root: Path | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    echo: Callable[[str], None] | None = None
    # Builds a download progress display (fetch.Progress) for a label; None: no display.
    progress: Callable[[str], Progress] | None = None
    create: bool = True
    clock: Callable[[], datetime] = utcnow
    # Where the state lives (state/backend.open_backend); None: $RECONCILER_STATE, else
    # sqlite at ROOT/state.db.
    state: str | None = None
    # The package pool (default ROOT/pool): several hosts on one PostgreSQL state share it.
    pool_root: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.pool_root = Path(self.pool_root) if self.pool_root else None
        self.publish_root = Path(self.publish_root) if self.publish_root else self.root / "public"
        self.backend = statebackend.open_backend(self.state or os.environ.get("RECONCILER_STATE"), self.root)
        self.locks = locks.manager_for(self.backend, self.root / "locks")
        # where signing keys are imported: RECONCILER_GNUPGHOME (the chart points it at a
        # memory-backed volume, so secret keys never reach a disk), else ROOT/gnupg
        self.gnupghome = Path(os.environ.get("RECONCILER_GNUPGHOME") or self.root / "gnupg")
        self._db: statebackend.Session | None = None
        self._pool: FilesystemPool | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def publish_dir(self) -> Path:
        """Where the published trees live: `publish_root` as resolved by __post_init__
        (given, else ROOT/public), typed as the Path it always is after construction."""
        return self.publish_root or self.root / "public"

    @property
    def state_name(self) -> str:
        """The state's place, for messages: the state.db path, or the database URL."""
        return self.backend.describe()

    @property
    def pool(self) -> FilesystemPool:
        if self._pool is None:
            self._pool = FilesystemPool(self.pool_root or self.local("pool"))
        return self._pool

    @pool.setter
    def pool(self, pool: FilesystemPool) -> None:
        self._pool = pool

    def local(self, name: str) -> Path:
        """ROOT/name, or for a read-only context on a root without state the same name
        in a private temporary directory (removed at exit), so reading creates nothing."""
        if self.create or self.has_state():
            return self.root / name
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="reconciler-read-")
        return Path(self._scratch.name) / name

    def has_state(self) -> bool:
        """Is there a state (a state.db with content, a database with the schema)?"""
        return self.backend.exists()

    def connect(self) -> statebackend.Session:
        """A new session (connection): each task and each reader gets its own.

        A state that is missing, empty or blank (no row in any table) beside a pool
        that holds files or a publish root that holds published trees is refused: that
        is a lost state, and treating it as a fresh root would make `list` show nothing
        and `gc` delete the pool. A read-only context gets an empty in-memory state for
        a root without one."""
        if not self.has_state():
            self._refuse_lost(self._absence())
            if not self.create:
                return statesqlite.empty()
        db = self.backend.session()
        if statebackend.is_blank(db):
            try:
                self._refuse_lost("holds no objects and no task history")
            except StateError:
                db.close()
                raise
        return db

    def _absence(self) -> str:
        path = getattr(self.backend, "path", None)
        if path is None:
            return "has no reconciler schema"
        return "is missing" if not path.exists() else "is empty (0 bytes)"

    def _what_state(self) -> str:
        return "state.db" if hasattr(self.backend, "path") else f"the database {self.state_name}"

    def _refuse_lost(self, what: str) -> None:
        found = evidence(self.pool_root or self.root / "pool", self.publish_dir)
        if found:
            raise StateError(
                f"{self.state_name} {what}, but {' and '.join(found)}: the state that describes them is lost; "
                f"nothing was changed. Restore {self._what_state()} from a backup (with every reconciler on "
                f"this root stopped); or, to start over deliberately, remove {self.pool_root or self.root / 'pool'} "
                f"and the published trees under {self.publish_root}, then apply again (everything is downloaded again)")

    def recover(self) -> int:
        """Mark the tasks of processes that are gone as failed, now (a long-lived process,
        like serve, calls it before each reconcile: a replica that died meanwhile)."""
        db = self.connect()
        try:
            return recover(db, self.locks)
        finally:
            db.close()

    def store(self) -> Store:
        """A store for reads outside tasks (list, show, plan); created once per context."""
        if self._db is None:
            self._db = self.connect()
            recover(self._db, self.locks)
        return Store(self._db)


def evidence(pool: Path, publish_root: Path) -> list[str]:
    """What shows that a root was used: files in its pool, published trees (a few named)."""
    found = []
    if _any_entry(pool / "files"):
        found.append(f"the pool {pool} holds package files")
    trees = published_releases(publish_root, limit=3)
    if trees:
        found.append(f"published trees exist ({', '.join(map(str, trees))})")
    return found


def _any_entry(files: Path) -> bool:
    try:
        with os.scandir(files) as buckets:
            for bucket in buckets:
                if bucket.is_dir(follow_symlinks=False):
                    with os.scandir(bucket.path) as entries:
                        if any(True for _ in entries):
                            return True
    except OSError:
        pass
    return False


def published_releases(directory: Path, *, limit: int, depth: int = 6) -> list[Path]:
    """`PREFIX/dists/DIST/Release` (or InRelease) files under a publish root, up to `limit`.

    A tree's own `dists/` and `pool/` are not descended into, so the walk stays small
    however many packages are published."""
    found: list[Path] = []
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
    except OSError:
        return found
    if "dists" in names:
        try:
            dists = sorted((directory / "dists").iterdir())
        except OSError:
            dists = []
        for dist in dists:
            if (dist / "Release").is_file() or (dist / "InRelease").is_file():
                found.append(dist / "Release")
    if depth > 0:
        for name in names:
            if name not in ("dists", "pool") and len(found) < limit:
                found += published_releases(directory / name, limit=limit - len(found), depth=depth - 1)
    return found[:limit]


@dataclass
class Task:
    id: int
    name: str
    ctx: Context
    store: Store
    output: list[str] = field(default_factory=list)

    @property
    def pool(self) -> FilesystemPool:
        return self.ctx.pool

    def log(self, message: str) -> None:
        self.output.append(message)
        if self.ctx.echo:
            self.ctx.echo(message)

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        with self.store.db.transaction():
            yield self.store


def _record(db, task_id: int, **values: object) -> None:
    """Record task progress; on a full or read-only disk the record is lost, not the error."""
    sets = ", ".join(f"{k} = ?" for k in values)
    try:
        db.execute(f"UPDATE tasks SET {sets} WHERE id = ?", [*values.values(), task_id])
    except statebackend.OPERATIONAL:
        if values.get("state") != "failed":
            raise


def storage_error(name: str, exc: OSError) -> StorageError:
    where = f" ({exc.filename})" if exc.filename else ""
    return StorageError(f"{name}: {exc.strerror or exc}{where}; the database keeps its state from before this "
                        "task and partial downloads stay resumable")


def run(ctx: Context, name: str, keys: Iterable[str], fn: Callable[[Task], T], *,
        pool: bool = True) -> T:
    """Run `fn` as a task holding `keys` (and the pool key shared unless `pool=False`)."""
    keys = locks.order(keys)
    db = ctx.connect()
    try:
        task_id = db.execute("INSERT INTO tasks (name, resources, state, pid, host, created_at)"
                             " VALUES (?, ?, 'queued', ?, ?, ?) RETURNING id",
                             (name, json.dumps(keys), os.getpid(), ctx.locks.identity(db), now())).fetchone()[0]
        task = Task(task_id, name, ctx, Store(db))
        task.store.prune_tasks()
        shared = [locks.POOL] if pool else []
        with _bound(task.id), ctx.locks.hold(keys, timeout=ctx.lock_timeout, description=f"task {task.id} ({name})",
                                             shared=shared, db=db, task_id=task.id):
            return _execute(task, fn)
    except ReconcilerError as exc:
        if "task" in locals():
            _record(db, task.id, state="failed", ended_at=now(), error=str(exc), output="\n".join(task.output))
        raise
    except OSError as exc:  # disk full, read-only root: a domain error the caller reports
        raise storage_error(name, exc) from exc
    except statebackend.OPERATIONAL as exc:
        if "full" in str(exc) or "readonly" in str(exc):
            raise storage_error(name, OSError(str(exc))) from exc
        raise
    finally:
        db.close()


def _execute(task: Task, fn: Callable[[Task], T]) -> T:
    db = task.store.db
    _record(db, task.id, state="running", started_at=now())
    try:
        result = fn(task)
    except ReconcilerError:
        raise
    except Exception as exc:
        _record(db, task.id, state="failed", ended_at=now(), output="\n".join(task.output),
                error="".join(traceback.format_exception_only(exc)).strip())
        raise
    _record(db, task.id, state="succeeded", ended_at=now(), output="\n".join(task.output))
    return result


def recover(db, manager: locks.LockManager) -> int:
    """Mark tasks left `running` or `queued` by a process that is gone as failed."""
    stale = [(tid, pid) for tid, pid, ident in
             db.execute("SELECT id, pid, host FROM tasks WHERE state IN ('running', 'queued')").fetchall()
             if not manager.alive(db, pid, ident or "")]
    try:
        for tid, pid in stale:
            _record(db, tid, state="failed", ended_at=now(), error=f"interrupted: process {pid} is gone")
            db.execute("DELETE FROM locks WHERE task_id = ?", (tid,))
    except statebackend.OPERATIONAL:
        return 0  # a full or read-only disk: reads still work, the next writable start recovers
    return len(stale)


def list_tasks(store: Store, *, limit: int = 50) -> list[dict]:
    rows = store.db.query("SELECT * FROM tasks ORDER BY id DESC LIMIT ?", [limit])
    return [dict(r, resources=json.loads(r["resources"])) for r in rows]


def get_task(store: Store, task_id: int) -> dict | None:
    rows = list(store.db.query("SELECT * FROM tasks WHERE id = ?", [task_id]))
    return dict(rows[0], resources=json.loads(rows[0]["resources"])) if rows else None




# The id of the task running in this thread, for log records (logfmt adds it as `task`),
# so no caller has to pass it along. `scope` keeps the id of the last task that ran in
# it, so a line reporting a task after it ended (reconcile.apply's per-change line)
# carries it too. Context variables: each thread (and each API request) sees its own.
_running: ContextVar[int | None] = ContextVar("reconciler_task", default=None)
_ran: ContextVar[list[int] | None] = ContextVar("reconciler_task_scope", default=None)


def current() -> int | None:
    """The running task's id; outside a task but inside `scope`, the last one's; else None."""
    running = _running.get()
    if running is not None:
        return running
    ran = _ran.get()
    return ran[-1] if ran else None


@contextmanager
def scope() -> Iterator[None]:
    """Within this block, records after a task ended still carry its id (see `current`)."""
    token = _ran.set([])
    try:
        yield
    finally:
        _ran.reset(token)


@contextmanager
def _bound(task_id: int) -> Iterator[None]:
    token = _running.set(task_id)
    ran = _ran.get()
    if ran is not None:
        ran.append(task_id)
    try:
        yield
    finally:
        _running.reset(token)
