"""Two `apply` processes and a `serve` on three "hosts" at once, sharing only the
PostgreSQL state, the pool directory and the publish root.

Every race guarantee of one root must hold across hosts: each change is made once (the
others find it done inside their locks), nothing fails for having raced, the published
tree is whole and signed as declared, and a fourth host then plans nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.serveproc import Server
from tests.test_failover import _spec_dir


def test_two_applies_and_a_serve_on_three_hosts_make_each_change_once(tmp_path, http_archive, pg_url):
    shared = tmp_path / "shared"
    env = {**os.environ, "RECONCILER_STATE": pg_url, "RECONCILER_POOL": str(shared / "pool"),
           "RECONCILER_PUBLISH_ROOT": str(shared / "public")}
    spec_dir = _spec_dir(tmp_path / "specs", http_archive)
    http_archive.server.slow(".deb", 0.05)  # long enough that the three overlap

    def host(name: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", "--root", str(tmp_path / f"host-{name}"), *args]

    serve = Server(tmp_path / "host-c", "--specs", str(spec_dir), "--interval", "1h", env=env).start()
    try:
        applies = [subprocess.Popen(host(n, "apply", "-f", str(spec_dir)), env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in ("a", "b")]
        outputs = [p.communicate(timeout=120) for p in applies]
        for process, (out, err) in zip(applies, outputs):
            assert process.returncode == 0, out + err
            assert "Traceback" not in out + err
        serve.wait_for(lambda s: s.status()["lastAppliedRevision"], timeout=120, what="serve applied")
        assert serve.condition("Ready")["status"] == "True", serve.status()
        tasks = serve.get("/api/tasks", params={"limit": 200}).json()
    finally:
        serve.stop()

    succeeded = [t["name"] for t in tasks if t["state"] == "succeeded"]
    assert succeeded.count("create snapshot snap") == 1, succeeded
    assert not [t for t in tasks if t["state"] in ("running", "queued")], tasks
    failed = [t for t in tasks if t["state"] == "failed"]
    assert not failed, failed

    verify = subprocess.run(host("d", "verify"), env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    plan = subprocess.run(host("d", "plan", "-f", str(spec_dir), "--json", "--detailed-exitcode"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert {c["op"] for c in json.loads(plan.stdout)["changes"]} <= {"noop", "update"}
