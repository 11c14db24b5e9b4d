"""Leadership: of several `serve` processes on one state, exactly one reconciles.

The leader holds a lock that is released by the system, not by the leader, when the
leader goes away, so a SIGKILLed or lost leader never blocks its successor:

- on a SQLite root, `flock` on ROOT/locks/leader.lock (the kernel drops it with the
  process; SQLite state is one host by construction);
- on PostgreSQL, a session advisory lock on a connection of its own (the server drops it
  when the connection ends: at once when the process dies, after the TCP keepalive
  settings below when its host vanishes).

Standbys try to take the lock every `poll` seconds, so a standby leads within about
`poll` seconds of the leader's death (measured in tests/test_leader.py). The leader
writes a lease row (`leases`: holder, since, renewed) when it takes the lock and every
`renew` seconds while it holds it; every replica shows that row in /api/status, so an
operator sees who leads from any of them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from reconciler import tasks
from reconciler.state import backend as statebackend

LEASE = "serve"
# Server-side keepalives of the leader's connection: a leader whose host vanishes
# (no FIN, no RST) loses the lock after about idle + interval * count seconds.
KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Leadership:
    """Take, keep and report leadership; `poll()` is called from the reconcile loop."""

    def __init__(self, ctx: tasks.Context, *, renew: float = 5.0):
        self.ctx = ctx
        self.renew = renew
        self.identity = f"serve pid {os.getpid()} on {socket.gethostname()}"
        self.leading = False
        self.since: str | None = None
        self._renewed = 0.0
        self._reader: statebackend.Session | None = None  # for the lease: one session, kept

    def _state(self) -> statebackend.Session:
        """The session the lease is read and written on: opened once, not every poll."""
        if self._reader is None:
            self._reader = self.ctx.connect()
        return self._reader

    def _forget_state(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except statebackend.errors_with(OSError):
                pass

    # -- the lock, per backend ----------------------------------------------------------

    def _acquire(self) -> bool:
        raise NotImplementedError

    def _still_held(self) -> bool:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    # -- what serve uses ----------------------------------------------------------------

    def poll(self) -> bool:
        """True while this process leads: takes the lock when free, renews the lease."""
        try:
            if self.leading and not self._still_held():
                self._lost()
            if not self.leading and self._acquire():
                self.leading, self.since = True, _now()
                self._renewed = 0.0
            if self.leading and time.monotonic() - self._renewed >= self.renew:
                self._write_lease()
        except statebackend.DATABASE_ERRORS:
            self._lost()
        return self.leading

    def _lost(self) -> None:
        self.leading, self.since = False, None
        try:
            self._drop()
        except statebackend.errors_with(OSError):
            pass

    def release(self) -> None:
        """Give leadership up (shutdown): a standby takes over at its next poll."""
        if self.leading:
            try:
                self._state().execute("DELETE FROM leases WHERE name = ? AND holder = ?", (LEASE, self.identity))
            except statebackend.errors_with(OSError, *_state_errors()):
                pass
        self._lost()
        self._forget_state()

    def _write_lease(self) -> None:
        stamp = _now()
        try:
            self._state().execute(
                "INSERT INTO leases (name, holder, acquired_at, renewed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at",
                (LEASE, self.identity, self.since or stamp, stamp))
        except statebackend.DATABASE_ERRORS:
            self._forget_state()  # a lost connection: the next poll opens another
            raise
        self._renewed = time.monotonic()

    def status(self, *, read: bool = True) -> dict:
        """role, this replica's identity, and the lease as recorded (by whichever replica
        leads); `readable` says the state could be read. `read=False` reads nothing."""
        lease, readable = None, False
        if read:
            try:
                row = self._state().execute("SELECT holder, acquired_at, renewed_at FROM leases WHERE name = ?",
                                            (LEASE,)).fetchone()
                readable = True
                if row:
                    lease = {"holder": row[0], "acquiredAt": row[1], "renewedAt": row[2]}
            except statebackend.errors_with(OSError, *_state_errors()):
                self._forget_state()
        return {"role": "leader" if self.leading else "standby", "identity": self.identity,
                "lease": lease, "renewSeconds": self.renew, "readable": readable}


def _state_errors() -> tuple[type[BaseException], ...]:
    from reconciler.errors import StateError

    return (StateError,)


class FileLeadership(Leadership):
    """A SQLite root's leader: flock on ROOT/locks/leader.lock."""

    def __init__(self, ctx: tasks.Context, **kwargs):
        super().__init__(ctx, **kwargs)
        self.path = Path(ctx.root) / "locks" / "leader.lock"
        self._fd: int | None = None

    def _acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.identity}\n".encode(), 0)
        self._fd = fd
        return True

    def _still_held(self) -> bool:
        return self._fd is not None

    def _drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AdvisoryLeadership(Leadership):
    """A PostgreSQL state's leader: a session advisory lock on a connection of its own."""

    def __init__(self, ctx: tasks.Context, **kwargs):
        super().__init__(ctx, **kwargs)
        self._session: statebackend.Session | None = None

    def _acquire(self) -> bool:
        from reconciler.state.postgres import advisory_key

        if self._session is None:
            self._session = session = self.ctx.backend.session()
            for name, value in KEEPALIVE.items():
                session.execute(f"SET {name} = {int(value)}")
        return bool(self._session.execute("SELECT pg_try_advisory_lock(?)",
                                          (advisory_key("reconciler:leader"),)).fetchone()[0])

    def _still_held(self) -> bool:
        """The lock lives as long as its session (it is never unlocked): a round trip on
        the session says both. A lost connection raises, and `poll` drops leadership."""
        if self._session is None:
            return False
        self._session.execute("SELECT 1").fetchone()
        return True

    def _drop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            try:  # unlocked now: the server ends a closed session's locks a moment later
                session.execute("SELECT pg_advisory_unlock_all()")
            finally:
                session.close()


def for_context(ctx: tasks.Context, **kwargs) -> Leadership:
    if ctx.backend.dialect.name == "postgresql":
        return AdvisoryLeadership(ctx, **kwargs)
    return FileLeadership(ctx, **kwargs)
