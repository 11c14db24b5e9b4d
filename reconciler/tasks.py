"""Locked tasks: every mutation runs through `run`.

`run(ctx, name, keys, fn)` records the task, takes the locks on `keys` (canonical order,
waiting up to the context's timeout), and only then hands `fn` a `Task` with a fresh
connection to the database. Nothing loaded before the lock can leak in: `fn` receives
no objects, only the task, and loads what it needs by name (STYLE habit 2).

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
import socket
import sqlite3
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from reconciler import locks
from reconciler.errors import ReconcilerError, StorageError
from reconciler.pool import FilesystemPool
from reconciler.state import db as statedb
from reconciler.state.stores import Store, now

T = TypeVar("T")
DEFAULT_LOCK_TIMEOUT = float(os.environ.get("RECONCILER_LOCK_TIMEOUT", "1800"))


@dataclass
class Context:
    """Where the state lives and how tasks behave; small and passed explicitly."""

    root: Path
    publish_root: Path | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    echo: Callable[[str], None] | None = None
    # Builds a download progress display (fetch.Progress) for a label; None: no display.
    progress: Callable[[str], object] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.publish_root = Path(self.publish_root) if self.publish_root else self.root / "public"
        self.root.mkdir(parents=True, exist_ok=True)
        self.locks = locks.Locks(self.root / "locks")
        self.pool = FilesystemPool(self.root / "pool")
        self.gnupghome = self.root / "gnupg"
        self._db = None

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    def connect(self):
        """A new connection: each task and each reader gets its own."""
        return statedb.connect(self.db_path)

    def store(self) -> Store:
        """A store for reads outside tasks (list, show, plan); created once per context."""
        if self._db is None:
            self._db = self.connect()
            recover(self._db)
        return Store(self._db)


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
        with statedb.transaction(self.store.db):
            yield self.store


def _record(db, task_id: int, **values: object) -> None:
    """Record task progress; on a full or read-only disk the record is lost, not the error."""
    sets = ", ".join(f"{k} = ?" for k in values)
    try:
        db.execute(f"UPDATE tasks SET {sets} WHERE id = ?", [*values.values(), task_id])
    except sqlite3.OperationalError:
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
        cur = db.execute("INSERT INTO tasks (name, resources, state, pid, host, created_at) VALUES (?, ?, 'queued', ?, ?, ?)",
                         (name, json.dumps(keys), os.getpid(), locks.process_identity(), now()))
        task = Task(cur.lastrowid, name, ctx, Store(db))
        shared = [locks.POOL] if pool else []
        with ctx.locks.hold(keys, timeout=ctx.lock_timeout, description=f"task {task.id} ({name})", shared=shared):
            return _execute(task, keys, fn)
    except ReconcilerError as exc:
        if "task" in locals():
            _record(db, task.id, state="failed", ended_at=now(), error=str(exc), output="\n".join(task.output))
        raise
    except OSError as exc:  # disk full, read-only root: a domain error the caller reports
        raise storage_error(name, exc) from exc
    except sqlite3.OperationalError as exc:
        if "full" in str(exc) or "readonly" in str(exc):
            raise storage_error(name, OSError(str(exc))) from exc
        raise
    finally:
        db.conn.close()


def _execute(task: Task, keys: list[str], fn: Callable[[Task], T]) -> T:
    db = task.store.db
    _record(db, task.id, state="running", started_at=now())
    db.conn.executemany("INSERT OR REPLACE INTO locks (key, task_id, pid, host, description, acquired_at) VALUES (?, ?, ?, ?, ?, ?)",
                        [(k, task.id, os.getpid(), socket.gethostname(), task.name, now()) for k in keys])
    try:
        result = fn(task)
    except ReconcilerError:
        raise
    except Exception as exc:
        _record(db, task.id, state="failed", ended_at=now(), output="\n".join(task.output),
                error="".join(traceback.format_exception_only(exc)).strip())
        raise
    finally:
        db.execute("DELETE FROM locks WHERE task_id = ?", (task.id,))
    _record(db, task.id, state="succeeded", ended_at=now(), output="\n".join(task.output))
    return result


def recover(db) -> int:
    """Mark tasks left `running` or `queued` by a process that is gone as failed."""
    stale = [(tid, pid) for tid, pid, ident in
             db.execute("SELECT id, pid, host FROM tasks WHERE state IN ('running', 'queued')").fetchall()
             if not locks.alive(pid, ident or "")]
    try:
        for tid, pid in stale:
            _record(db, tid, state="failed", ended_at=now(), error=f"interrupted: process {pid} is gone")
            db.execute("DELETE FROM locks WHERE task_id = ?", (tid,))
    except sqlite3.OperationalError:
        return 0  # a full or read-only disk: reads still work, the next writable start recovers
    return len(stale)


def list_tasks(store: Store, *, limit: int = 50) -> list[dict]:
    rows = store.db.query("SELECT * FROM tasks ORDER BY id DESC LIMIT ?", [limit])
    return [dict(r, resources=json.loads(r["resources"])) for r in rows]


def get_task(store: Store, task_id: int) -> dict | None:
    rows = list(store.db.query("SELECT * FROM tasks WHERE id = ?", [task_id]))
    return dict(rows[0], resources=json.loads(rows[0]["resources"])) if rows else None


