"""Resource keys, their canonical order, and locks that hold across threads and processes.

A lock is two independent mechanisms, and a key is held only when both grant it:

- `flock(2)` on one file per key under `ROOT/locks/`. The kernel releases it when the
  holder's descriptor closes, which includes the holder being killed with SIGKILL.
  Each acquisition opens its own file description, so two threads of one process
  exclude each other exactly like two processes do. After the flock is granted, the
  path must still name the inode that was locked (else the file was unlinked while we
  waited, and the lock is taken again on the file that is there now).
- a row in the state database's `locks` table, claimed inside one BEGIN IMMEDIATE
  transaction: a key is granted only when no live holder of a conflicting claim has a
  row (for the pool key, shared claims do not conflict with each other). A holder is
  its pid plus its process identity (host and start time, so a recycled pid is not
  mistaken for it); rows of processes that are gone are deleted by the next claimant,
  so a SIGKILLed holder never leaves a key held.

The flock alone is lost when `ROOT/locks/` is removed under a running task: the next
process creates a new file and locks that. The row alone would make waiting a poll on
the database. Together a lock stays a lock whatever happens to its file.

Deadlock is avoided by order: a task names all its keys up front and they are taken in
one canonical order (`KINDS` rank, then the key text), each key by both mechanisms
before the next. The `pool` key is special: every task that adds pool files or relies
on them takes it shared; `gc` takes it exclusive, so gc can never delete a file a
running task has just imported but not yet recorded.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from reconciler import kinds
from reconciler.errors import LockTimeout
from reconciler.state import backend as statebackend

# the kinds' keys in their dependency order (kinds.all()), between the keys that go around them
KINDS = ("owner", "pool", "series", *(kind.word for kind in kinds.all()), "prefix")
POOL = "pool"


def owner(name: str) -> str:
    """Which spec source applies under an owner: claimed under this key."""
    return f"owner/{name}"


def mirror(name: str) -> str:
    return f"mirror/{name}"


def snapshot(name: str) -> str:
    return f"snapshot/{name}"


def publish(prefix: str, distribution: str) -> str:
    return f"publish/{prefix}/{distribution}"


def series(name: str) -> str:
    return f"series/{name}"


def prefix(name: str) -> str:
    """Publishes under one prefix share its pool/ directory: they serialise on this key."""
    return f"prefix/{name}"


def order(keys: Iterable[str]) -> list[str]:
    """The one canonical order every task takes its locks in."""
    def rank(key: str) -> tuple[int, str]:
        kind = key.split("/", 1)[0]
        return (KINDS.index(kind) if kind in KINDS else len(KINDS), key)
    return sorted(set(keys), key=rank)


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) a lock, written into the lock file for waiters to name."""

    description: str
    pid: int
    host: str
    identity: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def text(self) -> str:
        return f"{self.description} (pid {self.pid} on {self.host})"


def process_identity(pid: int | None = None) -> str:
    """host:start-time of a process, so a recycled pid is not mistaken for the original."""
    pid = pid or os.getpid()
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{socket.gethostname()}:{start}"


def alive(pid: int, identity: str) -> bool:
    """Is the process that recorded `identity` still running here?"""
    host = identity.split(":", 1)[0]
    if host != socket.gethostname():
        return True  # another host shares the root: we cannot tell, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process_identity(pid) == identity


# Holder ids this process holds right now: a row of this process whose id is not here
# was left by a release that could not write (a full disk) and holds nothing.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()
_OWN: dict[int, str] = {}  # this process's identity, by pid (a forked child has its own)


def _holding(pid: int, identity: str, holder: str) -> bool:
    """Is the holder of a row alive and holding? For this process: is the id active."""
    if pid == os.getpid():
        own = _OWN.get(pid) or _OWN.setdefault(pid, process_identity(pid))
        if identity == own:
            with _ACTIVE_LOCK:
                return holder in _ACTIVE
    return alive(pid, identity)


def _same_file(fd: int, path: Path) -> bool:
    """Does `path` still name the file `fd` has open (not unlinked, not replaced)?"""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _backoff(delay: float) -> float:
    time.sleep(delay)
    return min(delay * 2, 0.25)


class LockManager(Protocol):
    """What tasks need of locks, whatever the backend: take keys, name a holder, tell
    whether the process that recorded a task is still there."""

    def hold(self, keys: Iterable[str], *, timeout: float, description: str,
             shared: Iterable[str] = (), db=None, task_id: int | None = None) -> AbstractContextManager[list[str]]: ...

    def holder_of(self, key: str, db=None) -> str: ...

    def identity(self, db) -> str:
        """What a task row records of the process running it (`tasks.host`)."""
        ...

    def alive(self, db, pid: int, identity: str) -> bool:
        """Is the process that recorded (`pid`, `identity`) still running?"""
        ...


def manager_for(backend, directory: Path) -> LockManager:
    """The lock manager for a state backend: flock plus claim rows for SQLite, advisory
    locks for PostgreSQL (whose processes may run on different hosts: no shared disk
    for flock, and a pid means nothing on another host)."""
    if backend.dialect.name == "postgresql":
        return AdvisoryLocks(backend)
    return Locks(directory)


class Locks:
    """Locks for a SQLite root: flock on ROOT/locks/ plus a claim row (see the module text)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def identity(self, db) -> str:
        return process_identity()

    def alive(self, db, pid: int, identity: str) -> bool:
        return alive(pid, identity)

    def _path(self, key: str) -> Path:
        return self.directory / (urllib.parse.quote(key, safe="") + ".lock")

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the first lock on this root, or the directory was removed
            self.directory.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def holder_of(self, key: str, db=None) -> str:
        """Who holds `key`: a live row of the table if there is one, else the lock file's text."""
        if db is not None:
            for row in _rows(db, key):
                if _holding(row["pid"], row["identity"], row["holder"]):
                    return _describe(row)
        try:
            text = self._path(key).read_text().strip()
        except OSError:
            text = ""
        return text or "another process"

    def _flock(self, key: str, *, shared: bool, deadline: float, db) -> int:
        """An open descriptor on the key's file, flocked, the file still in place."""
        path = self._path(key)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        delay = 0.01
        while True:
            fd = self._open(path)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"timed out waiting for lock {key}: held by {self.holder_of(key, db)}") from None
                delay = _backoff(delay)
                continue
            if _same_file(fd, path):
                return fd
            os.close(fd)  # unlinked while we waited: whoever comes next locks the new file

    def _claim(self, db, key: str, *, shared: bool, deadline: float, holder: Holder, task_id: int | None) -> None:
        """Insert our row for `key` once no live conflicting holder has one."""
        delay = 0.01
        while True:
            with db.transaction():
                blocking = _conflicts(db, key, shared=shared, holder=holder)
                if not blocking:
                    db.execute("INSERT INTO locks (key, holder, shared, task_id, pid, identity, description,"
                               " acquired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (key, holder.id, int(shared), task_id, holder.pid, holder.identity,
                                holder.description, datetime.now(timezone.utc).isoformat(timespec="seconds")))
                    with _ACTIVE_LOCK:
                        _ACTIVE.add(holder.id)
                    return
            if time.monotonic() >= deadline:
                raise LockTimeout(f"timed out waiting for lock {key}: held by {_describe(blocking[0])}")
            delay = _backoff(delay)

    @staticmethod
    def _release(db, key: str, holder: Holder) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(holder.id)
        try:
            db.execute("DELETE FROM locks WHERE key = ? AND holder = ?", (key, holder.id))
        except statebackend.OPERATIONAL:
            pass  # a full or read-only disk: the row names an id this process no longer holds

    @contextmanager
    def _one(self, key: str, *, shared: bool, deadline: float, holder: Holder, db,
             task_id: int | None) -> Iterator[None]:
        fd = self._flock(key, shared=shared, deadline=deadline, db=db)
        try:
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.text().encode() + b"\n", 0)
            if db is None:
                yield
                return
            self._claim(db, key, shared=shared, deadline=deadline, holder=holder, task_id=task_id)
            try:
                yield
            finally:
                self._release(db, key, holder)
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def hold(self, keys: Iterable[str], *, timeout: float, description: str,
             shared: Iterable[str] = (), db=None, task_id: int | None = None) -> Iterator[list[str]]:
        """Take every key in canonical order (shared ones shared), release all on exit.

        With `db` (a state connection outside any transaction) each key is also claimed
        in the `locks` table; without it only the flock guards the key."""
        holder = Holder(description, os.getpid(), socket.gethostname(), process_identity())
        shared = set(shared)
        ordered = order([*keys, *shared])
        deadline = time.monotonic() + timeout
        with ExitStack() as stack:
            for key in ordered:
                stack.enter_context(self._one(key, shared=key in shared, deadline=deadline, holder=holder,
                                              db=db, task_id=task_id))
            yield ordered


def _rows(db, key: str) -> list[dict]:
    return list(db.query("SELECT * FROM locks WHERE key = ?", (key,)))


def _conflicts(db, key: str, *, shared: bool, holder: Holder) -> list[dict]:
    """Live rows that keep `holder` from `key`; rows of holders that are gone are deleted."""
    live = []
    for row in _rows(db, key):
        if row["holder"] == holder.id or (shared and row["shared"]):
            continue
        if _holding(row["pid"], row["identity"], row["holder"]):
            live.append(row)
        else:
            db.execute("DELETE FROM locks WHERE key = ? AND holder = ?", (key, row["holder"]))
    return live


def _describe(row: dict) -> str:
    identity = row["identity"]
    host = (identity.rsplit(":", 1)[-1] if identity.startswith("pg:") else identity.split(":", 1)[0]) or "?"
    return f"{row['description']} (pid {row['pid']} on {host})"


class AdvisoryLocks:
    """Locks for PostgreSQL state: session-scoped advisory locks, on the task's own session.

    `pg_try_advisory_lock` (exclusive) or `pg_try_advisory_lock_shared` per key, in the
    same canonical order, polled with the same backoff until the deadline. The server
    releases a session's locks when its connection ends, so a SIGKILLed holder on any
    host leaves nothing held. A row in `locks` names the holder to whoever waits; a row
    whose session is gone names nobody (`PostgresSession.alive`), and the next holder of
    its key deletes it, as a SQLite claimant deletes a dead claim."""

    def __init__(self, backend):
        self.backend = backend

    def identity(self, db) -> str:
        return f"{db.identity()}:{socket.gethostname()}"

    def alive(self, db, pid: int, identity: str) -> bool:
        if identity.startswith("pg:"):
            return db.alive(identity)
        return alive(pid, identity)  # recorded by a SQLite root's process before a state copy

    def holder_of(self, key: str, db=None) -> str:
        if db is not None:
            for row in _rows(db, key):
                if self._holding(db, row, key):
                    return _describe(row)
        return "another session"

    def _holding(self, db, row: dict, key: str) -> bool:
        """Does the session that wrote `row` hold `key` now? Its session must be connected
        and hold the advisory lock: a session that is exiting has released its locks
        before it leaves pg_stat_activity."""
        if not self.alive(db, row["pid"], row["identity"]):
            return False
        if not row["identity"].startswith("pg:"):
            return True
        from reconciler.state.postgres import advisory_key

        backend_pid = int(row["identity"].split(":")[1])  # pg:PID:START:HOST (the server's pid)
        unsigned = advisory_key(key) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two oids
        return db.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = ?"
                          " AND classid = ? AND objid = ? AND objsubid = 1",
                          (backend_pid, unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone() is not None

    def _take(self, db, key: str, *, shared: bool, deadline: float) -> None:
        from reconciler.state.postgres import advisory_key

        function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        delay = 0.01
        while not db.execute(f"SELECT {function}(?)", (advisory_key(key),)).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"timed out waiting for lock {key}: held by {self.holder_of(key, db)}")
            delay = _backoff(delay)

    def _forget_gone(self, db, key: str) -> None:
        """Delete the rows of `key` whose session is gone (a holder killed before it could
        release): the key is ours now, and a waiter must not be told they hold it. A row
        with no task is removed by nothing else (tasks' rows go with their task)."""
        for row in _rows(db, key):
            if not self._holding(db, row, key):
                db.execute("DELETE FROM locks WHERE key = ? AND holder = ?", (key, row["holder"]))

    @staticmethod
    def _release(db, key: str, *, shared: bool, holder: Holder) -> None:
        from reconciler.state.postgres import advisory_key

        function = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
        try:
            db.execute("DELETE FROM locks WHERE key = ? AND holder = ?", (key, holder.id))
            db.execute(f"SELECT {function}(?)", (advisory_key(key),))
        except statebackend.OPERATIONAL:
            pass  # the connection is gone: so are its locks

    @contextmanager
    def hold(self, keys: Iterable[str], *, timeout: float, description: str,
             shared: Iterable[str] = (), db=None, task_id: int | None = None) -> Iterator[list[str]]:
        """Take every key in canonical order on `db` (a session of its own when None)."""
        with ExitStack() as stack:
            if db is None:
                db = self.backend.session()
                stack.callback(db.close)
            holder = Holder(description, os.getpid(), socket.gethostname(), self.identity(db))
            shared = set(shared)
            ordered = order([*keys, *shared])
            deadline = time.monotonic() + timeout
            for key in ordered:
                self._take(db, key, shared=key in shared, deadline=deadline)
                stack.callback(self._release, db, key, shared=key in shared, holder=holder)
                self._forget_gone(db, key)
                db.execute("INSERT INTO locks (key, holder, shared, task_id, pid, identity, description,"
                           " acquired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (key, holder.id, int(key in shared), task_id, holder.pid, holder.identity,
                            holder.description, datetime.now(timezone.utc).isoformat(timespec="seconds")))
            yield ordered
