"""The HTTP API of `reconciler serve`, against the real process.

A real signed upstream on 127.0.0.1 is mirrored, snapshotted and published by the
server's own reconcile; the tests then read the lists and compare the counts with the
index files, refuse and force drops, check the token, race a DELETE against a
snapshot being created by a separate `reconciler apply`, and fetch the published tree
through /public/ with the real apt-get.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from reconciler import locks, tasks
from tests.support import examples, statefixtures
from tests.support.serveproc import Server
from tests.support.server import ArchiveServer
from tests.support.specs import mirror as mirror_spec

SNAPSHOT_AND_PUBLISH = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {name: snap}
spec: {mirror: up}
---
apiVersion: reconciler/v1
kind: Publish
metadata: {name: pub}
spec:
  prefix: debian
  distribution: stable
  components: {main: snap}
  signing: {skip: true}
"""
RACER = """\
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec: {{mirror: {mirror}}}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, gpg_key):
    built = examples.build_example(tmp_path_factory.mktemp("upstream"), gpg_key)
    with ArchiveServer(built.root) as server:
        yield built, server, gpg_key


def write_specs(directory: Path, upstream, *, mirrors: tuple[str, ...] = ("up",), with_users: bool = True) -> Path:
    built, server, key = upstream
    directory.mkdir(parents=True, exist_ok=True)
    text = "---\n".join(mirror_spec(m, server.url, key.public_armored) for m in mirrors)
    (directory / "all.yaml").write_text(text + (SNAPSHOT_AND_PUBLISH if with_users else ""))
    return directory


def stanzas(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith("Package: "))


@pytest.fixture
def start(tmp_path):
    """Factory: a `serve --specs DIR` process on its own root; stopped (and checked) at teardown."""
    servers = []

    def start_(specs: Path, *args: str, root: Path | None = None, ready: bool = True) -> Server:
        server = Server(root or tmp_path / "root", "--specs", specs, "--interval", "1h", *args).start()
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start_
    for server in servers:
        assert server.stop() == 0, server.output


@pytest.fixture(scope="module")
@statefixtures.shares_state
def served(tmp_path_factory, upstream):
    """One server for the tests that only read (module-scoped: it reconciles once)."""
    tmp = tmp_path_factory.mktemp("served")
    server = Server(tmp / "root", "--specs", write_specs(tmp / "specs", upstream), "--interval", "1h",
                    "--serve-public").start()
    server.root = tmp / "root"
    try:
        server.wait_ready()
    except BaseException:
        server.kill()  # never left running when it does not get ready
        raise
    yield server
    assert server.stop() == 0, server.output


def test_readyz_turns_200_only_after_the_first_reconcile(tmp_path, upstream, start):
    server = start(write_specs(tmp_path / "specs", upstream), "--suspend", ready=False)
    assert server.get("/healthz").status_code == 200
    assert server.get("/readyz").status_code == 503
    assert server.get("/api/mirrors").json() == []  # suspended: nothing reconciles by itself
    answer = server.post("/api/reconcile", params={"wait": 1})
    assert answer.status_code == 200, answer.text
    assert server.get("/readyz").status_code == 200
    assert [m["name"] for m in server.get("/api/mirrors").json()] == ["up"]


def test_lists_carry_the_real_package_counts(served, upstream):
    built = upstream[0]
    upstream_count = stanzas(built.index("main", "amd64"))
    published = stanzas(served.root / "public/debian/dists/stable/main/binary-amd64/Packages")
    mirrors = served.get("/api/mirrors").json()
    snapshots = served.get("/api/snapshots").json()
    publishes = served.get("/api/publish").json()
    assert [(m["name"], m["numPackages"]) for m in mirrors] == [("up", upstream_count)]
    assert [(s["name"], s["numPackages"]) for s in snapshots] == [("snap", upstream_count)]
    assert [(p["name"], p["numPackages"]) for p in publishes] == [("pub", published)]
    assert published == upstream_count > 0
    assert served.get("/api/mirrors/up").json() == mirrors[0]
    assert served.get("/api/snapshots/snap").json() == snapshots[0]
    assert served.get("/api/publish/debian/stable").json() == publishes[0]
    # /api/publishes is the canonical name; /api/publish stays as its alias
    assert served.get("/api/publishes").json() == publishes
    assert served.get("/api/publishes/debian/stable").json() == publishes[0]


@pytest.mark.parametrize("path", ["/api/mirrors/nope", "/api/snapshots/nope", "/api/publish/debian/nope",
                                  "/api/publish/nope", "/api/tasks/999999"])
def test_unknown_objects_are_404(served, path):
    answer = served.get(path)
    assert answer.status_code == 404
    assert answer.json()["error"] == "NotFound"


def test_tasks_status_openapi_and_metrics(served, upstream):
    tasks = served.get("/api/tasks").json()
    assert {t["name"] for t in tasks} >= {"sync mirror up", "create snapshot snap", "publish pub"}
    one = served.get(f"/api/tasks/{tasks[0]['id']}").json()
    assert one["state"] == "succeeded" and one["output"]

    status = served.status()
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert status["lastAppliedRevision"] == status["lastAttemptedRevision"]
    assert status["lastAppliedRevision"].startswith("sha256:")
    assert {(o["kind"], o["name"], o["status"]) for o in status["objects"]} == {
        ("Mirror", "up", "Current"), ("Snapshot", "snap", "Current"), ("Publish", "pub", "Current")}

    paths = set(served.get("/openapi.json").json()["paths"])
    assert paths >= {"/api/mirrors", "/api/mirrors/{name}", "/api/mirrors/{name}/update", "/api/snapshots",
                     "/api/snapshots/{name}", "/api/publishes", "/api/tasks", "/api/tasks/{task_id}",
                     "/api/reconcile", "/api/status", "/healthz", "/readyz", "/metrics"}

    text = served.get("/metrics").text
    for name in ("reconciler_reconcile_duration_seconds", "reconciler_download_bytes_total",
                 "reconciler_mirror_packages", "reconciler_task_duration_seconds",
                 "reconciler_reconcile_failures_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    count = stanzas(upstream[0].index("main", "amd64"))
    assert f'reconciler_mirror_packages{{mirror="up"}} {count}.0' in text
    downloaded = next(line for line in text.splitlines() if line.startswith("reconciler_download_bytes_total"))
    assert float(downloaded.split()[1]) > 0


def test_update_endpoint_runs_the_sync_task(served):
    answer = served.post("/api/mirrors/up/update")
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["action"] == "up-to-date"
    assert served.post("/api/mirrors/nope/update").status_code == 404


def test_public_serves_only_the_publish_root(served, apt_client):
    release = served.get("/public/debian/dists/stable/Release")
    assert release.status_code == 200
    assert release.content == (served.root / "public/debian/dists/stable/Release").read_bytes()
    (served.root / "public/escape").symlink_to(served.root / "state.db")
    assert served.get("/public/escape").status_code == 404
    raw = httpx.get(served.url + "/public/%2e%2e/state.db")
    assert raw.status_code == 404
    client = apt_client(f"deb [trusted=yes] {served.url}/public/debian stable main")
    client.update()
    client.download("hello")
    assert any(p.name.startswith("hello_") for p in (client.dir / "cache/archives").glob("*.deb"))


def test_drop_in_use_is_403_and_changes_nothing_force_keeps_the_snapshot(tmp_path, upstream, start):
    server = start(write_specs(tmp_path / "specs", upstream))
    before = [server.get(p).json() for p in ("/api/mirrors", "/api/snapshots", "/api/publish")]

    refused = server.delete("/api/mirrors/up")
    assert refused.status_code == 403
    assert refused.json()["users"] == ["snapshot/snap"]
    assert "snapshot/snap" in refused.json()["message"]
    assert "pass ?force=1 to drop it anyway" in refused.json()["message"]  # the API's words, not the CLI's
    assert [server.get(p).json() for p in ("/api/mirrors", "/api/snapshots", "/api/publish")] == before

    assert server.delete("/api/mirrors/nope").status_code == 404
    forced = server.delete("/api/mirrors/up", params={"force": 1})
    assert forced.status_code == 200, forced.text
    assert "still declared" in forced.json()["warnings"][0]
    assert server.get("/api/mirrors/up").status_code == 404
    assert server.get("/api/snapshots/snap").json()["numPackages"] == before[1][0]["numPackages"]
    verify = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(tmp_path / "root"), "verify"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_token_guards_every_mutation(tmp_path, upstream, start):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = start(write_specs(tmp_path / "specs", upstream), "--token-file", token)
    tasks_before = len(server.get("/api/tasks").json())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
        for method, path in (("DELETE", "/api/mirrors/up?force=1"), ("POST", "/api/mirrors/up/update"),
                             ("POST", "/api/reconcile")):
            answer = server.http.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
    assert len(server.get("/api/tasks").json()) == tasks_before
    assert server.get("/api/mirrors/up").status_code == 200  # reads stay open
    good = {"Authorization": "Bearer s3cret-token"}
    assert server.delete("/api/mirrors/up", params={"force": 1}, headers=good).status_code == 200
    assert server.get("/api/mirrors/up").status_code == 404


def queued(server: Server, names: set[str]) -> bool:
    return names <= {t["name"] for t in server.get("/api/tasks").json() if t["state"] == "queued"}


def test_delete_racing_a_snapshot_creation_never_strands_the_snapshot(tmp_path, upstream, start):
    """Hold the mirror's lock while a DELETE and an `apply` creating a snapshot of that
    mirror queue up behind it, then let go: whichever wins, the guard is decided inside
    the lock, so the loser either sees the user (403) or finds no mirror (apply fails)."""
    root = tmp_path / "root"
    rounds = [f"m{i}" for i in range(3)]  # a fresh, unused mirror per round
    server = start(write_specs(tmp_path / "specs", upstream, mirrors=tuple(rounds), with_users=False), root=root)
    outcomes = []
    for mirror in rounds:
        name = f"race-{mirror}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "snap.yaml").write_text(RACER.format(name=name, mirror=mirror))
        with ThreadPoolExecutor(1) as pool:
            # The root's own lock manager: flock on SQLite, an advisory lock on PostgreSQL.
            with tasks.Context(root).locks.hold([locks.mirror(mirror)], timeout=10, description="the test"):
                apply = subprocess.Popen([sys.executable, "-m", "reconciler", "--root", str(root), "apply",
                                          "-f", str(tmp_path / name), "--owner", name], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
                dropping = pool.submit(httpx.delete, f"{server.url}/api/mirrors/{mirror}", timeout=60)
                server.wait_for(lambda s: queued(s, {f"create snapshot {name}", f"drop mirror {mirror}"}),  # noqa: B023
                                timeout=30, what="both tasks waiting for the lock")
            dropped = dropping.result()
        out, _ = apply.communicate(timeout=60)
        exists = (server.get(f"/api/mirrors/{mirror}").status_code, server.get(f"/api/snapshots/{name}").status_code)
        assert dropped.status_code in (200, 403), dropped.text
        if dropped.status_code == 403:
            assert (*exists, apply.returncode) == (200, 200, 0), out
            assert dropped.json()["users"] == [f"snapshot/{name}"]
        else:
            assert (*exists, apply.returncode) == (404, 404, 1), out
            assert f"mirror {mirror!r} does not exist" in out, out
        outcomes.append(dropped.status_code)
    print("DELETE outcomes:", outcomes)
