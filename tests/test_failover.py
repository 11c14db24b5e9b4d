"""Active/standby `serve`: several replicas on one PostgreSQL state, exactly one reconciles.

Real processes on different "hosts": each replica has its own root and shares only the
PostgreSQL state, the pool directory and the publish root (RECONCILER_STATE,
RECONCILER_POOL, RECONCILER_PUBLISH_ROOT, as the chart sets them). The leader is
SIGKILLed; the standby must take over within a bounded time, recover the task the
leader was running, and finish the work without running anything twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import specs
from tests.support.serveproc import Server

LEADER_POLL = "1s"
FAILOVER_BOUND = 5.0  # seconds from SIGKILL to the standby leading (--leader-poll 1s)


def _spec_dir(where: Path, http_archive) -> Path:
    (where / "keys").mkdir(parents=True)
    (where / "specs").mkdir()
    (where / "keys" / "upstream.asc").write_text(http_archive.key.public_armored.read_text())
    (where / "specs" / "all.yaml").write_text(
        specs.mirror("up", http_archive.url, "../keys/upstream.asc") + "---\n"
        + specs.snapshot("snap", "up") + "---\n" + specs.publish("pub", "snap"))
    return where / "specs"


@pytest.fixture
def replicas(tmp_path, pg_url):
    shared = tmp_path / "shared"
    env = {"RECONCILER_STATE": pg_url, "RECONCILER_POOL": str(shared / "pool"),
           "RECONCILER_PUBLISH_ROOT": str(shared / "public")}
    started: list[Server] = []

    def start(name: str, spec_dir: Path) -> Server:
        server = Server(tmp_path / f"host-{name}", "--specs", str(spec_dir), "--interval", "1h",
                        "--leader-poll", LEADER_POLL, env=env).start()
        started.append(server)
        return server

    start.shared = shared
    yield start
    for server in started:
        server.kill()


def _role(server: Server) -> str:
    return server.status()["leadership"]["role"]


def _tasks(server: Server) -> list[dict]:
    return server.get("/api/tasks", params={"limit": 200}).json()


def test_one_replica_reconciles_and_a_standby_takes_over_when_it_is_killed(tmp_path, http_archive, replicas):
    spec_dir = _spec_dir(tmp_path / "specs", http_archive)
    first = replicas("a", spec_dir)
    first.wait_for(lambda s: _role(s) == "leader" and s.status()["lastAppliedRevision"], timeout=60,
                   what="the first replica leading and applied")
    second = replicas("b", spec_dir)
    second.wait_ready()
    status = second.status()
    assert status["leadership"]["role"] == "standby"
    assert status["leadership"]["lease"]["holder"] == first.status()["leadership"]["identity"]
    assert second.get("/readyz").json() == {"ready": True, "role": "standby"}
    refused = second.post("/api/reconcile")
    assert refused.status_code == 409 and "stands by" in refused.json()["message"], refused.text
    assert second.get("/api/mirrors").json()[0]["numPackages"] > 0  # reads are served
    assert "reconciler_leader 0.0" in second.get("/metrics").text
    assert (replicas.shared / "public" / "dists" / "stable" / "Release").is_file()
    done_before = sorted(t["name"] for t in _tasks(first) if t["state"] == "succeeded")

    first.kill()
    killed = time.monotonic()
    second.wait_for(lambda s: _role(s) == "leader", timeout=FAILOVER_BOUND, what="the standby leading")
    failover = time.monotonic() - killed
    print(f"failover: the standby led {failover:.2f} s after the leader's SIGKILL")
    second.wait_for(lambda s: s.status()["lastAppliedRevision"], timeout=60, what="the new leader applied")
    assert "no change" in second.condition("Ready")["message"], second.status()  # nothing done twice
    created = [t["name"] for t in _tasks(second) if t["state"] == "succeeded" and t["name"].startswith("create")]
    assert created == [n for n in done_before if n.startswith("create")] and created, (created, done_before)
    assert "reconciler_leader 1.0" in second.get("/metrics").text


def test_a_task_the_killed_leader_was_running_is_recovered_and_finished_once(tmp_path, http_archive, replicas):
    http_archive.server.hang(".deb", times=4)  # the first leader's downloads never finish
    spec_dir = _spec_dir(tmp_path / "specs", http_archive)
    first = replicas("a", spec_dir)
    first.wait_for(lambda s: _role(s) == "leader", timeout=30, what="the first replica leading")
    assert http_archive.server.wait_for(".deb", 1, timeout=30), first.output
    second = replicas("b", spec_dir)
    second.wait_ready()
    assert _role(second) == "standby"
    running = [t for t in _tasks(second) if t["state"] == "running"]
    assert [t["name"] for t in running] and all("mirror" in t["name"] for t in running), running

    first.kill()
    second.wait_for(lambda s: _role(s) == "leader", timeout=FAILOVER_BOUND, what="the standby leading")
    second.wait_for(lambda s: s.status()["lastAppliedRevision"], timeout=60, what="the new leader applied")
    tasks = {t["id"]: t for t in _tasks(second)}
    for task in running:  # the dead leader's task: failed as interrupted, not left running
        assert tasks[task["id"]]["state"] == "failed", tasks[task["id"]]
        assert "interrupted" in tasks[task["id"]]["error"], tasks[task["id"]]
    names = [t["name"] for t in tasks.values() if t["state"] == "succeeded"]
    assert len(names) == len(set(names)), names  # each change succeeded exactly once
    assert any(n.startswith("create") for n in names), names
    assert second.get("/api/mirrors").json()[0]["numPackages"] > 0
    assert (replicas.shared / "public" / "dists" / "stable" / "Release").is_file()


def test_two_serve_on_one_sqlite_root_lead_one_at_a_time(tmp_path, http_archive, monkeypatch):
    """SQLite state is one host by construction; a second serve on the same root stands by
    (flock on ROOT/locks/leader.lock) instead of reconciling beside the first."""
    monkeypatch.delenv("RECONCILER_STATE", raising=False)
    spec_dir = _spec_dir(tmp_path / "specs", http_archive)
    root = tmp_path / "root"
    servers = [Server(root, "--specs", str(spec_dir), "--interval", "1h", "--leader-poll", LEADER_POLL).start()]
    try:
        servers[0].wait_for(lambda s: _role(s) == "leader" and s.status()["lastAppliedRevision"], timeout=60,
                            what="the first serve leading and applied")
        servers.append(Server(root, "--specs", str(spec_dir), "--interval", "1h",
                              "--leader-poll", LEADER_POLL).start())
        servers[1].wait_ready()
        assert _role(servers[1]) == "standby"
        servers[0].kill()
        servers[1].wait_for(lambda s: _role(s) == "leader", timeout=FAILOVER_BOUND, what="the second leading")
        servers[1].wait_for(lambda s: "no change" in s.condition("Ready")["message"], timeout=60,
                            what="the second applied, changing nothing")
    finally:
        for server in servers:
            server.kill()
