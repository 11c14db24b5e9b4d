"""The PostgreSQL backend's sessions commit without waiting for the WAL flush, as SQLite's
WAL at synchronous=NORMAL does (reconciler/state/postgres.py), unless the state URL or
PGOPTIONS says otherwise; and the benchmark's server keeps PostgreSQL's own durability.

These run on the benchmark's server (bench/pgserver.py): the tests' own server has
synchronous_commit off for the whole server, which would hide what a session sets."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from bench import pgserver
from reconciler.state import postgres as pgstate
from tests.support import postgres

pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.PostgresServer]:
    if reason := postgres.missing():
        pytest.skip(reason)
    started = pgserver.start(None)
    yield started
    started.stop()


def _setting(url: str, name: str) -> str:
    session = pgstate.PostgresBackend(url).session()
    try:
        return session.execute(f"SHOW {name}").fetchone()[0]
    finally:
        session.close()


def test_the_bench_server_keeps_postgresql_durability_defaults(server):
    with server.connect() as db:
        shown = {name: db.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_level")}
    assert shown == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "wal_level": "replica"}


def test_sessions_do_not_wait_for_the_wal_flush(server, monkeypatch):
    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert _setting(server.new_database("async"), "synchronous_commit") == "off"


def test_a_url_that_sets_synchronous_commit_is_obeyed(server, monkeypatch):
    monkeypatch.delenv("PGOPTIONS", raising=False)
    url = server.new_database("sync") + "&options=" + quote("-c synchronous_commit=on")
    assert _setting(url, "synchronous_commit") == "on"


def test_pgoptions_are_kept_beside_it(server, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=7MB")
    url = server.new_database("pgoptions")
    assert _setting(url, "work_mem") == "7MB"
    assert _setting(url, "synchronous_commit") == "off"
