"""Which state backend the suite runs on: SQLite under the root (default) or PostgreSQL.

`pytest --state=postgres` or `RECONCILER_TEST_STATE=postgres` starts one PostgreSQL server
for the session and gives every test a fresh database through `RECONCILER_STATE`, so each
Context and each CLI subprocess the test starts uses it. Tests marked
`@pytest.mark.sqlite_only` (they damage state.db's bytes, read it with sqlite3, ...) are
skipped on that leg. A module-scoped fixture that starts processes on a root (a root
applied once per module, a served API) declares so with `@shares_state` under its
`@pytest.fixture`: a test that uses it shares the module's database with it, since the
fixture's processes were started with it. Every other test, including one that uses other
module-scoped fixtures (a built upstream archive, keys), gets a database of its own.

On PostgreSQL the state is not per root: every root a test makes uses the one database in
`RECONCILER_STATE` (several hosts share one database on purpose). A test that wants two
independent states gives the second root its own database (`postgres_server.new_database`).

`pg_url` gives any test a database URL of its own on either leg; it skips only when the
PostgreSQL binaries are absent, and fails instead when `RECONCILER_REQUIRE_POSTGRES=1` (CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import postgres

__all__ = ["pytest_addoption", "pytest_configure", "pytest_collection_modifyitems",
           "postgres_server", "pg_url", "_state_for_module", "_state_for_test", "shares_state"]

STATE_ENV = "RECONCILER_STATE"          # what the code reads (sqlite:///PATH | postgresql://...)
MODE_ENV = "RECONCILER_TEST_STATE"      # which leg the suite runs: sqlite | postgres
REQUIRE_ENV = "RECONCILER_REQUIRE_POSTGRES"
_SHARES = "_reconciler_shares_state"


def shares_state(fixture):
    """Mark a module- or class-scoped fixture whose processes use the module's state: the
    tests that use it run on the module's database on the PostgreSQL leg. Put it below
    `@pytest.fixture(scope=...)`."""
    setattr(fixture, _SHARES, True)
    return fixture


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--state", choices=("sqlite", "postgres"), default=None,
                     help=f"state backend the tests run on (default: ${MODE_ENV} or sqlite)")


def state_mode(config: pytest.Config) -> str:
    mode = config.getoption("--state") or os.environ.get(MODE_ENV) or "sqlite"
    if mode not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"{MODE_ENV}={mode!r}: expected 'sqlite' or 'postgres'")
    return mode


def pytest_configure(config: pytest.Config) -> None:
    if state_mode(config) == "postgres" and (reason := postgres.missing()):
        raise pytest.UsageError(f"--state=postgres: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if state_mode(config) != "postgres":
        return
    skip = pytest.mark.skip(reason="sqlite_only: checks SQLite's own files; not run on the PostgreSQL leg")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[postgres.PostgresServer]:
    """The session's PostgreSQL server (started on first use, stopped at session end)."""
    if reason := postgres.missing():
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    server = postgres.PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: postgres.PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server: its `postgresql://` URL."""
    return postgres_server.new_database(request.node.name)


@pytest.fixture(scope="module", autouse=True)
def _state_for_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """On the PostgreSQL leg, module-scoped fixtures get a database of their module's."""
    with pytest.MonkeyPatch.context() as patch:
        if state_mode(request.config) == "postgres":
            server = request.getfixturevalue("postgres_server")
            patch.setenv(STATE_ENV, server.new_database(request.module.__name__.rsplit(".", 1)[-1]))
        else:
            patch.delenv(STATE_ENV, raising=False)      # the default leg tests the default
        yield


@pytest.fixture(autouse=True)
def _state_for_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the PostgreSQL leg, a fresh database per test unless it shares a fixture's state."""
    if state_mode(request.config) != "postgres" or _uses_shared_state(request):
        return
    server = request.getfixturevalue("postgres_server")
    monkeypatch.setenv(STATE_ENV, server.new_database(request.node.name))


def _uses_shared_state(request: pytest.FixtureRequest) -> bool:
    """Whether the test depends on a fixture marked `@shares_state`."""
    return any(defs and getattr(defs[-1].func, _SHARES, False)
               for defs in request.node._fixtureinfo.name2fixturedefs.values())
