"""Where state lives, behind one small interface: a backend opens sessions.

`open_backend(url, root)` is the one place a state URL becomes a backend:
`sqlite:///PATH` (the default: ROOT/state.db, embedded, nothing to run) or
`postgresql://...` (reconciler[postgres]: state shared by processes on several hosts).

A `Session` is one connection. The stores, tasks and locks speak to it only through
`execute`/`executemany`/`query`/`stream` and `transaction()`, with `?` placeholders and
the SQL both engines read; what is spelt differently (JSON arrays taken apart in a
query, temporary tables, column types in the schema) is asked of `session.dialect`, so
the differences live in the dialect classes and nowhere else.

Outside `transaction()` a session commits each statement on its own (autocommit):
reads between transactions see what others committed, as a task needs after it waited
for its locks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

# The exceptions a session raises when the database cannot be written (disk full, a
# read-only file, a lost connection) and for any database error. A backend module adds
# its driver's classes when it is imported; callers name these attributes at the point
# of `except` (`except backend.OPERATIONAL`), so they see every backend loaded.
OPERATIONAL: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error,)


def errors_with(*more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """Every backend's database errors plus `more`, for one `except` clause."""
    return (*more, *DATABASE_ERRORS)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Dialect:
    """SQLite's spellings of what the engines write differently; other dialects override."""

    name = "sqlite"

    def ids(self, marker: str = "?") -> str:
        """A subquery of the integers in a JSON array parameter: `id IN {ids}` takes any count."""
        return f"(SELECT value FROM json_each({marker}))"

    def texts(self, expr: str) -> str:
        """A table of the strings in JSON array `expr`, one per row, in column `value`."""
        return f"json_each({expr})"

    def elements(self, expr: str, alias: str) -> str:
        """A table `alias` of the elements of JSON array `expr` (each itself JSON)."""
        return f"json_each({expr}) {alias}"

    def element(self, alias: str, index: int, *, integer: bool = False) -> str:
        """Item `index` of element row `alias` (from `elements`), as text or integer."""
        return f"json_extract({alias}.value, '$[{index}]')"

    def json_valid(self, expr: str) -> str:
        return f"json_valid({expr})"

    def temp_table(self, name: str, columns: str) -> str:
        return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) WITHOUT ROWID"

    def ddl(self, statement: str) -> str:
        """A migration statement as this engine reads it (migrations are written for SQLite)."""
        return statement


class Session(Protocol):
    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict]: ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]: ...

    def transaction(self, *, immediate: bool = True) -> AbstractContextManager[Session]: ...

    def snapshot(self) -> AbstractContextManager[Session]:
        """Reads inside see one consistent moment of the state (nothing is written)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    url: str

    @property
    def dialect(self) -> Dialect: ...

    def describe(self) -> str:
        """The state's place for messages (a path, or the URL without its password)."""
        ...

    def exists(self) -> bool:
        """Is there a state here at all (a file with content, a schema)?"""
        ...

    def session(self, *, migrate: bool = True) -> Session:
        """A new connection; creates and upgrades the schema unless `migrate` is false."""
        ...

    def integrity_problems(self, session: Any) -> list[str]:
        """What the engine's own checks find wrong (empty when sound)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (a connection pool); sessions still work after."""
        ...


# Tables any use of a root writes to: all of them empty means a fresh database (or a lost one).
_CONTENT = ("tasks", "mirrors", "snapshots", "publishes", "packages", "pool_files")


def is_blank(session: Session) -> bool:
    """True when the state holds no row of any kind: never used, or emptied."""
    query = " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in _CONTENT)
    return not session.execute(f"SELECT {query}").fetchone()[0]


def open_backend(url: str | None, root: Path) -> Backend:
    """The backend a state URL names; no URL: SQLite at ROOT/state.db."""
    from reconciler.errors import StateError

    if not url:
        from reconciler.state.sqlite import SqliteBackend

        return SqliteBackend(Path(root) / "state.db")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from reconciler.state.sqlite import SqliteBackend

        # sqlite:///relative/path or sqlite:////absolute/path (the usual spelling)
        path = url.removeprefix("sqlite:").removeprefix("///")
        if not path or path == "/" or path == url:
            raise StateError(f"state URL {url!r} names no file: use sqlite:///PATH/state.db")
        return SqliteBackend(Path(path))
    if scheme in ("postgresql", "postgres"):
        from reconciler.state.postgres import PostgresBackend

        return PostgresBackend(url)
    raise StateError(f"state URL {redact(url)!r}: unknown scheme {scheme!r}; "
                     "use sqlite:///PATH or postgresql://USER@HOST/DATABASE")


def redact(url: str) -> str:
    """A URL fit for a message: its password replaced."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
