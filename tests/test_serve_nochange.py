"""A `serve` cycle that had nothing to do says so: "no change", in /api/status and the log.

serve plans without probing upstream, so every mirror in its plan reads "update: check
upstream"; counting the plan's changes made every cycle report one change per mirror
forever. What changed is what apply's actions say they did.
"""

from __future__ import annotations

import pytest

from tests.support.serveproc import Server
from tests.support.specs import mirror, publish, snapshot


@pytest.fixture
def serving(tmp_path, http_archive):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text(
        mirror("up", http_archive.url, http_archive.key.public_armored)
        + "---\n" + snapshot("s1", "up") + "---\n" + publish("pub", "s1"))
    server = Server(tmp_path / "root", "--specs", specs, "--interval", "1h").start()
    try:
        yield server
    finally:
        server.stop()


def ready_message(server: Server) -> str:
    return server.condition("Ready")["message"]


def test_a_cycle_with_nothing_to_do_reports_no_change(serving: Server):
    serving.wait_ready()
    first = serving.status()
    changed = first["lastReport"]["changed"]  # the owner claimed; the mirror, snapshot, publish created
    assert [line.split(":")[0] for line in changed[1:]] == ["mirror/up", "snapshot/s1", "publish/pub"], changed
    assert f"({len(changed)} change(s))" in ready_message(serving)

    answer = serving.post("/api/reconcile", params={"wait": 1})
    assert answer.status_code == 200
    status = answer.json()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["message"].endswith("(no change)"), ready
    assert status["lastReport"]["changed"] == []
    assert any(line.startswith("mirror/up: up to date") for line in status["lastReport"]["lines"])
    serving.wait_line(lambda line: "ReconciliationSucceeded" in line and "(no change) (" in line, timeout=10)
