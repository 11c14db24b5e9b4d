"""Read and poke a root's state with SQL on either backend, as tests that inspect rows do.

Tests today open `root / "state.db"` with sqlite3; on the PostgreSQL leg the state is in the
database `RECONCILER_STATE` names instead. `query(root, sql, params)` goes to whichever the
code under test uses, so a rig's `rows()` / `query()` / `sql()` helper can call it and run
on both legs. Placeholders are written `?` (SQLite's style) and rewritten to `%s` for
psycopg as the backend does (not inside quoted literals, so `'?'` stays a question mark);
the SQL itself must be valid on both (no `json_set`, no `rowid`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

STATE_ENV = "RECONCILER_STATE"


def url(root: Path) -> str:
    """The state URL the code under test uses for `root` (the env, else SQLite under the root)."""
    return os.environ.get(STATE_ENV) or f"sqlite:///{Path(root) / 'state.db'}"


def session(root: Path):
    """A session on `root`'s state as the code under test opens it (schema migrated)."""
    from reconciler.state import backend

    return backend.open_backend(url(root), Path(root)).session()


def query(root: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement in its own transaction (committed); the rows it returns, if any."""
    state = url(root)
    if state.startswith("sqlite:///"):
        db = sqlite3.connect(state.removeprefix("sqlite:///"))
        try:
            with db:
                return db.execute(sql, params).fetchall()
        finally:
            db.close()
    if state.startswith(("postgresql://", "postgres://")):
        import psycopg

        from reconciler.state.postgres import translate
        with psycopg.connect(state) as db:
            cursor = db.execute(translate(sql), params)
            return cursor.fetchall() if cursor.description else []
    raise ValueError(f"{STATE_ENV}={state!r}: expected sqlite:///PATH or postgresql://...")
