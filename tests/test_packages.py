"""Seeing packages: `reconciler packages` and /api/.../packages, over a real archive.

A signed upstream on 127.0.0.1 is mirrored, snapshotted (with a filter) and published
by the real CLI; the lists are then read back through the CLI and through a real
`reconciler serve` process, and compared with the upstream's own index."""

from __future__ import annotations

import json

import pytest

from tests.support import statefixtures
from tests.support.serveproc import Server
from tests.test_mirror_sync import Rig


@pytest.fixture(scope="module")
@statefixtures.shares_state
def applied(tmp_path_factory, gpg_key):
    from tests.support.server import ArchiveServer

    tmp = tmp_path_factory.mktemp("packages")
    servers = []

    def serve(root):
        servers.append(ArchiveServer(root).start())
        return servers[-1]

    rig = Rig(tmp, serve, gpg_key)
    rig.build()
    rig.mirror(components=["main", "contrib"], architectures=["amd64"])
    rig.write("snapshot-s", "Snapshot", "s", {"mirror": "up", "filter": "Name (% hello*)"})
    rig.write("publish-p", "Publish", "p", {"prefix": "debian", "distribution": "stable",
                                             "components": {"main": "s"}, "signing": {"skip": True}})
    rig.apply()
    yield rig
    for server in servers:
        server.stop()


def upstream_refs(rig: Rig) -> set[tuple[str, str, str]]:
    refs = set()
    for comp in ("main", "contrib"):
        name = version = None
        for line in rig.archive.index(comp, "amd64").read_text().splitlines():
            if line.startswith("Package: "):
                name = line.split(": ", 1)[1]
            elif line.startswith("Version: "):
                version = line.split(": ", 1)[1]
            elif line.startswith("Architecture: "):
                refs.add((name, version, line.split(": ", 1)[1]))
    return refs


def listed(rig: Rig, *args: str) -> dict:
    return json.loads(rig.cli("packages", *args, "--json").stdout)


def test_a_mirror_lists_exactly_the_upstream_packages(applied):
    found = listed(applied, "--in", "mirror/up")
    assert {(p["name"], p["version"], p["arch"]) for p in found["packages"]} == upstream_refs(applied)
    assert found["total"] == len(found["packages"]) == applied.listed()["up"]["numPackages"]
    assert set(found["packages"][0]) == {"name", "version", "arch", "type", "in", "component"}
    assert {p["in"] for p in found["packages"]} == {"mirror/up"}


def test_a_query_searches_one_object_or_every_list(applied):
    hello = listed(applied, "--in", "mirror/up", "hello")["packages"]
    assert [(p["name"], p["version"]) for p in hello] == [("hello", "2.10-1"), ("hello", "2.10-2")]
    newer = listed(applied, "--in", "mirror/up", "hello (>> 2.10-1)")["packages"]
    assert [p["version"] for p in newer] == ["2.10-2"]
    everywhere = listed(applied, "Name (hello-doc)")["packages"]
    assert [(p["in"], p["name"]) for p in everywhere] == [("mirror/up", "hello-doc"), ("snapshot/s", "hello-doc")]
    text = applied.cli("packages", "Name (hello-doc)").stdout.splitlines()
    assert text[0].split() == ["NAME", "VERSION", "ARCH", "TYPE", "IN"]
    assert text[1].split() == ["hello-doc", "2.10-2", "all", "deb", "mirror/up"]


def test_a_snapshot_and_a_publish_list_what_they_hold(applied):
    snap = listed(applied, "--in", "snapshot/s")["packages"]
    assert {p["name"] for p in snap} == {"hello", "hello-doc"}
    pub = listed(applied, "--in", "publish/p")["packages"]
    assert [(p["name"], p["version"], p["component"]) for p in pub] == \
        [(p["name"], p["version"], "main") for p in snap]
    text = applied.cli("packages", "--in", "publish/p").stdout.splitlines()
    assert text[0].split()[-1] == "COMPONENT" and text[1].split()[-1] == "main"


def test_bad_places_and_queries_are_errors_that_say_what_to_give(applied):
    assert "give mirror/NAME, snapshot/NAME or publish/NAME" in applied.cli("packages", "--in", "up",
                                                                            expect=1).stderr
    assert "mirror 'nope' does not exist" in applied.cli("packages", "--in", "mirror/nope", expect=1).stderr
    assert "error:" in applied.cli("packages", "Name (", expect=1).stderr


def test_the_api_serves_the_same_lists_with_paging(applied):
    server = Server(applied.root, "--specs", applied.specs, "--interval", "1h").start()
    try:
        server.wait_ready()
        cli_all = listed(applied, "--in", "mirror/up")
        everything = server.get("/api/mirrors/up/packages", params={"limit": 10000}).json()
        assert everything["packages"] == cli_all["packages"] and everything["total"] == cli_all["total"]
        page = server.get("/api/mirrors/up/packages", params={"limit": 3, "offset": 2}).json()
        assert page["packages"] == cli_all["packages"][2:5] and page["total"] == cli_all["total"]
        assert page["limit"] == 3 and page["offset"] == 2
        searched = server.get("/api/packages", params={"q": "Name (hello-doc)"}).json()
        assert searched["packages"] == listed(applied, "Name (hello-doc)")["packages"]
        scoped = server.get("/api/packages", params={"q": "hello", "in": "snapshot/s"}).json()
        assert scoped == server.get("/api/snapshots/s/packages", params={"q": "hello"}).json()
        assert [(p["name"], p["version"]) for p in scoped["packages"]] == [("hello", "2.10-1"), ("hello", "2.10-2")]
        pub = server.get("/api/publishes/debian/stable/packages").json()
        assert pub["packages"] == listed(applied, "--in", "publish/p")["packages"]
        assert server.get("/api/publish/debian/stable/packages").json() == pub  # the alias
        assert server.get("/api/snapshots/nope/packages").status_code == 404
        bad = server.get("/api/packages", params={"in": "up"})
        assert bad.status_code == 400 and "mirror/NAME" in bad.json()["message"]
        assert server.get("/api/packages", params={"q": "Name ("}).status_code == 422
        assert server.get("/api/packages", params={"limit": 0}).status_code == 422
        assert "/api/packages" in server.get("/openapi.json").json()["paths"]
    finally:
        assert server.stop() == 0, server.output
