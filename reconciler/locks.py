"""Resource keys, their canonical order, and locks that hold across threads and processes.

A lock is `flock(2)` on one file per key under `ROOT/locks/`. The kernel releases it when
the holder's file descriptor closes, which includes the holder being killed with
SIGKILL, so a crash can never leave a lock held. Each acquisition opens its own file
description, so two threads of one process exclude each other exactly like two
processes do.

Deadlock is avoided by order: a task names all its keys up front and they are taken in
one canonical order (`KINDS` rank, then the key text). The `pool` key is special: every
task that adds pool files or relies on them takes it shared; `gc` takes it exclusive, so
gc can never delete a file a running task has just imported but not yet recorded.

The `locks` table mirrors who holds what, for messages and the API; the flock is the
truth, and rows of processes that are gone are ignored.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import LockTimeout

KINDS = ("owner", "pool", "series", "mirror", "snapshot", "publish", "prefix")
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


class Locks:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / (urllib.parse.quote(key, safe="") + ".lock")

    def holder_of(self, key: str) -> str:
        try:
            text = self._path(key).read_text().strip()
        except OSError:
            text = ""
        return text or "another process"

    @contextmanager
    def _one(self, key: str, *, shared: bool, deadline: float, holder: Holder) -> Iterator[None]:
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"timed out waiting for lock {key}: held by {self.holder_of(key)}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25)
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.text().encode() + b"\n", 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def hold(self, keys: Iterable[str], *, timeout: float, description: str,
             shared: Iterable[str] = ()) -> Iterator[list[str]]:
        """Take every key in canonical order (shared ones shared), release all on exit."""
        holder = Holder(description, os.getpid(), socket.gethostname())
        shared = set(shared)
        ordered = order([*keys, *shared])
        deadline = time.monotonic() + timeout
        with ExitStack() as stack:
            for key in ordered:
                stack.enter_context(self._one(key, shared=key in shared, deadline=deadline, holder=holder))
            yield ordered
