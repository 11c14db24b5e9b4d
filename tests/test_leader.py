"""Leadership among `serve` replicas: one leads, the others stand by, a successor takes over.

On a SQLite root the lock is a flock; on PostgreSQL a session advisory lock. Both are
released by the system when the holder goes, which the process tests check with SIGKILL.
"""

from __future__ import annotations

import pytest

from reconciler import leader, tasks


@pytest.fixture(params=["sqlite", "postgres"])
def state(request, tmp_path) -> str | None:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared' / 'state.db'}"
    return request.getfixturevalue("pg_url")


def _replica(tmp_path, state: str | None, name: str) -> leader.Leadership:
    # one root per replica; on SQLite they must share the root's lock directory, so the
    # state file and the lock live under one shared root
    root = tmp_path / ("shared" if state.startswith("sqlite") else name)
    return leader.for_context(tasks.Context(root, state=state), renew=0.0)


def test_one_replica_leads_and_the_other_stands_by_until_it_is_released(tmp_path, state):
    first, second = _replica(tmp_path, state, "a"), _replica(tmp_path, state, "b")
    first.identity, second.identity = "replica a", "replica b"
    assert first.poll() is True
    assert second.poll() is False
    assert first.poll() is True  # renewing keeps it
    seen = second.status()
    assert seen["role"] == "standby"
    assert seen["lease"]["holder"] == "replica a"
    first.release()
    assert second.poll() is True
    assert first.poll() is False
    assert first.status()["lease"]["holder"] == "replica b"
    second.release()


def test_a_leader_whose_connection_is_gone_stops_leading(tmp_path, pg_url):
    first, second = _replica(tmp_path, pg_url, "a"), _replica(tmp_path, pg_url, "b")
    assert first.poll()
    first._session.conn.close()  # the server-side session ends, and the lock with it
    assert first.poll() is False
    assert second.poll() is True
    assert first.poll() is False  # it tries again, and finds the lock taken
    second.release()
