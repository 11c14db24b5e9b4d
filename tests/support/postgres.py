"""A real, throwaway PostgreSQL server for the tests: one per session, a database per test.

The server is Debian's (`/usr/lib/postgresql/15/bin`, or `RECONCILER_PG_BIN`). It listens on
a unix socket in a private directory only (`listen_addresses=''`), with durability turned off
for speed (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`): a test database is
worth nothing after the run. PostgreSQL refuses to run as root, so when the tests run as root
the postmaster runs as the `postgres` user; the test process and every CLI subprocess it
starts connect over the socket as the trusted superuser `recon`.

The postmaster is a direct child of the test process, started with a parent-death signal, so
it stops with the session: at teardown (also after Ctrl-C, which pytest turns into teardown),
at interpreter exit (`atexit`), and even when the test process is SIGKILLed (the kernel sends
the postmaster SIGINT, a fast shutdown).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

BIN = Path(os.environ.get("RECONCILER_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "recon"
RUN_AS = "postgres"                 # the account the postmaster uses when the tests run as root

# Speed over durability: nothing in a test database must survive a crash of the machine.
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "200",       # race tests run several CLI processes, each with its connections
    "shared_buffers": "32MB",
    "autovacuum": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",   # refused statements are what many tests provoke
}

_PR_SET_PDEATHSIG = 1


def missing() -> str | None:
    """Why a server cannot be started here, or None when the binaries are present."""
    for tool in ("initdb", "postgres"):
        if not (BIN / tool).is_file():
            return (f"PostgreSQL server binaries not found: {BIN / tool} is missing "
                    f"(apt-get install postgresql, or point RECONCILER_PG_BIN at the bin directory)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root, but there is no {RUN_AS!r} user to run the PostgreSQL server as"
    return None


def _free_port() -> int:
    # Only a socket file's name uses the port (no TCP listener), but a free one keeps a
    # server started by hand on the same machine from ever being confused with ours.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user():
    """preexec_fn: drop to `postgres` when root, then ask for SIGINT when the parent dies.

    The parent-death signal is set after the uid change, which would otherwise clear it.
    """
    target = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
    libc = ctypes.CDLL(None, use_errno=True)

    def child() -> None:
        os.setsid()                 # Ctrl-C in the terminal reaches pytest, which stops us in order
        if target is not None:
            os.setgroups([])
            os.setgid(target.pw_gid)
            os.setuid(target.pw_uid)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
    return child, target


class PostgresServer:
    """`start()` → a running server in a fresh directory; `new_database(name)` → URL; `stop()`."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        """`settings`: the server's `-c` options (default SETTINGS: durability off, for tests)."""
        self.settings = SETTINGS if settings is None else settings
        self.dir: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self._names: set[str] = set()
        self._admin = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> PostgresServer:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        began = time.monotonic()
        # Not under pytest's basetemp: that is 0700 root, which the postgres user cannot enter.
        self.dir = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
        self.dir.chmod(0o755)       # the socket lives here; the test process connects through it
        preexec, owner = _as_server_user()
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        data, log = self.dir / "data", self.dir / "server.log"
        init = subprocess.run([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER,
                               "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                              capture_output=True, text=True, preexec_fn=preexec, cwd=self.dir, timeout=timeout)
        if init.returncode != 0:
            self._remove_dir()
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        self.port = _free_port()
        options = [f"-c{key}={value.strip(chr(39))}" for key, value in self.settings.items()]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(data), "-p", str(self.port),
                 f"-cunix_socket_directories={self.dir}", *options],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=preexec, cwd=self.dir)
        atexit.register(self.stop)
        self._wait_ready(data / "postmaster.pid", log, timeout)
        self.start_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, pidfile: Path, log: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = log.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"postgres exited {self.process.returncode} while starting:\n{text}")
            try:
                # postmaster.pid line 8 is the postmaster's status; "ready" once it accepts connections
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"postgres not ready after {timeout}s; log:\n{log.read_text(errors='replace')}")

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (clients are disconnected), then remove the directory. Idempotent."""
        atexit.unregister(self.stop)
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    @property
    def pidfile(self) -> Path:
        return self.dir / "data" / "postmaster.pid"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL psycopg 3 accepts: the socket directory is the `host` parameter."""
        return (f"postgresql://{SUPERUSER}@/{quote(database, safe='')}"
                f"?host={quote(str(self.dir), safe='/')}&port={self.port}")

    def connect(self, database: str = "postgres", **kwargs):
        import psycopg
        return psycopg.connect(self.url(database), **kwargs)

    def new_database(self, name: str, template: str = "template1") -> str:
        """CREATE DATABASE (a fresh one, unique even for a repeated name) → its URL.

        `name` is a hint, made a valid identifier (a test's node name is fine). The database
        is a FILE_COPY of `template` (with fsync off that is faster than WAL_LOG): pass a
        database already migrated to the schema to skip migrations in every test; nothing
        may be connected to it while it is copied.
        """
        database = self._unique(name)
        if self._admin is None or self._admin.closed:
            self._admin = self.connect(autocommit=True)
        self._admin.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(database)

    def _unique(self, name: str) -> str:
        base = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:50] or "db"
        database, n = base, 1
        while database in self._names or database in ("postgres", "template0", "template1"):
            n += 1
            database = f"{base}_{n}"
        self._names.add(database)
        return database
