"""The PostgreSQL server of the `reconciler-pg` column: the tests' throwaway server, not its settings.

`tests.support.postgres.PostgresServer` starts Debian's PostgreSQL 15 in a temp directory,
on a unix socket only, and stops it with the benchmark. The tests run it with durability
off (fsync, synchronous_commit and full_page_writes off, wal_level minimal): that would
flatter PostgreSQL here, since SQLite's column commits to disk as it always does. So the
benchmark passes its own settings: the server's defaults (fsync on, synchronous_commit on,
full_page_writes on, wal_level replica, shared_buffers 128MB, autovacuum on) except what
only changes where it listens and what it logs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import postgres

SETTINGS = {
    "listen_addresses": "''",          # unix socket in the server's temp directory only
    "log_min_messages": "warning",
}


def settings(log_statements_ms: int | None) -> dict[str, str]:
    """SETTINGS, plus `log_min_duration_statement` to find where a slow step's time goes."""
    if log_statements_ms is None:
        return dict(SETTINGS)
    return {**SETTINGS, "log_min_duration_statement": str(log_statements_ms)}


def start(log_statements_ms: int | None) -> postgres.PostgresServer:
    reason = postgres.missing()
    if reason:
        raise SystemExit(f"reconciler-pg needs a PostgreSQL server: {reason}; "
                         f"or leave it out with --tools reconciler,aptly,reprepro")
    return postgres.PostgresServer(settings(log_statements_ms)).start()


def version() -> str:
    out = subprocess.run([str(postgres.BIN / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def keep_log(server: postgres.PostgresServer, into: Path) -> None:
    """Copy the server's log (statement durations, if asked for) before the server's
    directory is removed."""
    log = server.dir / "server.log" if server.dir else None
    if log is not None and log.is_file():
        into.write_bytes(log.read_bytes())
