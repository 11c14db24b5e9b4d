"""The PostgreSQL backend's own guarantees, on a real server: pooled sessions come back
clean, text sorts by bytes whatever the database's locale, placeholders survive quotes."""

from __future__ import annotations

import psycopg

from reconciler.state import backend as statebackend
from reconciler.state.postgres import advisory_key, translate


def test_a_pooled_session_goes_back_without_its_advisory_locks_or_temp_tables(pg_url, tmp_path):
    state = statebackend.open_backend(pg_url, tmp_path)
    state.session().close()  # creates the schema; sessions are pooled from now on
    state.use_pool(min_size=1, max_size=1)
    session = state.session()
    assert session.execute("SELECT pg_try_advisory_lock(?)", (advisory_key("mirror/up"),)).fetchone()[0]
    session.execute(session.dialect.temp_table("live", "sha256 TEXT PRIMARY KEY"))
    session.close()  # a task that forgot to unlock (it never does: this is the guard)
    other = psycopg.connect(pg_url, autocommit=True)
    try:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key("mirror/up"),)).fetchone()[0]
    finally:
        other.close()
    again = state.session()  # the same connection (max_size 1), reset
    try:
        assert again.execute("SELECT to_regclass('pg_temp.live')").fetchone()[0] is None
    finally:
        again.close()
        state.close()


def test_text_sorts_by_bytes_as_published_indexes_need(pg_url, tmp_path):
    session = statebackend.open_backend(pg_url, tmp_path).session()
    try:
        names = ["b", "B", "a-1", "a+1", "a.1", "Z", "é", "_x", "a"]
        with session.transaction():
            for index, name in enumerate(names):
                session.execute("INSERT INTO owners (owner, source, applied_at) VALUES (?, ?, ?)",
                                (name, "s", str(index)))
        stored = [r[0] for r in session.execute("SELECT owner FROM owners ORDER BY owner").fetchall()]
        assert stored == sorted(names)  # Python compares code points = UTF-8 byte order
    finally:
        session.close()


def test_question_marks_inside_quotes_are_not_placeholders():
    assert translate("SELECT '?', x FROM t WHERE a = ? AND b LIKE '%?%'") == \
        "SELECT '?', x FROM t WHERE a = %s AND b LIKE '%%?%%'"
