"""Pool faults lose nothing: corrupted, quarantined and deleted pool files, end to end.

A published tree hard-links the pool, so a pool file edited in place is the published
file edited in place. Every test here builds a real signed upstream, serves it on
127.0.0.1, drives the real CLI as a subprocess over a fresh root, damages the pool the
way an operator's accident or a failing disk would, and checks what the next commands
do: a publish refuses to sign a damaged file (and quarantines it), `verify --deep`
quarantines, the next `apply` re-fetches exactly the lost files from the mirror's
upstream and links the trees again, and a file nobody can provide any more fails the
apply naming the snapshots that hold it. apt-get is the final judge of the repaired tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support import examples, specs
from tests.support.archive import DEFAULT_DATE
from tests.support.cli import reconciler

HELLO = "/pool/main/h/hello/hello_2.10-2_amd64.deb"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class World:
    """One upstream (rebuilt in place on demand), its server, specs and a root."""

    def __init__(self, tmp_path: Path, serve, key, signing_key):
        self.root = tmp_path / "root"
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.dest = tmp_path / "upstream"
        self.key, self.signing_key = key, signing_key
        self.builder = examples.example_builder()
        self.build()
        self.server = serve(self.dest)

    def build(self, day: int = 0) -> None:
        self.archive = self.builder.build(self.dest, distribution="stable", origin="Example",
                                          date=DEFAULT_DATE + timedelta(days=day), sign_with=self.key)

    def write(self, *, snapshots=("s1",), publish: str | None = "s1", origin: str = "Test") -> None:
        text = specs.mirror("up", self.server.url, str(self.key.public_armored))
        for name in snapshots:
            text += f"---\napiVersion: reconciler/v1\nkind: Snapshot\nmetadata: {{name: {name}}}\nspec: {{mirror: up}}\n"
        if publish:
            text += ("---\napiVersion: reconciler/v1\nkind: Publish\nmetadata: {name: pub}\nspec:\n"
                     f"  prefix: debian\n  distribution: stable\n  components: {{main: {publish}}}\n"
                     f"  origin: {origin}\n  signing: {{keyFile: {self.signing_key.secret_armored}}}\n"
                     "  acquireByHash: true\n")
        (self.specs / "all.yaml").write_text(text)

    def cli(self, *args: str, expect: int | None = 0):
        out = reconciler(self.root, *args)
        if expect is not None and out.returncode != expect:
            raise AssertionError(f"reconciler {' '.join(args)} exited {out.returncode}, expected {expect}:\n"
                                 f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}")
        return out

    def apply(self, expect: int | None = 0):
        return self.cli("apply", "-f", str(self.specs), expect=expect)

    def plan(self, expect: int | None = 0) -> dict:
        out = self.cli("plan", "-f", str(self.specs), "--json", expect=expect)
        return {(c["kind"], c["name"]): c for c in json.loads(out.stdout)["changes"]}

    def upstream_sha(self, path: str) -> str:
        return sha256_file(self.dest / path.lstrip("/"))

    def pool_file(self, sha: str) -> Path:
        return self.root / "pool/files" / sha[:2] / sha

    def published(self, path: str = HELLO) -> Path:
        return self.root / "public/debian" / path.lstrip("/")

    def recorded(self, sha: str) -> tuple | None:
        db = sqlite3.connect(self.root / "state.db")
        try:
            return db.execute("SELECT size, mtime_ns, ino FROM pool_files WHERE sha256 = ?", (sha,)).fetchone()
        finally:
            db.close()

    def requests(self) -> list[str]:
        return [r.path for r in self.server.requests()]


def corrupt_in_place(path: Path) -> bytes:
    """Same size, other bytes, same inode: what a bad disk or a stray `dd` does."""
    data = path.read_bytes()
    bad = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
    with open(path, "r+b") as fh:  # root ignores the 0444 mode, as root does
        fh.write(bad)
    assert path.stat().st_size == len(data)
    return bad


@pytest.fixture
def world(tmp_path, http_server, gpg_key, other_gpg_key) -> World:
    return World(tmp_path, http_server, gpg_key, other_gpg_key)


def test_a_publish_refuses_a_pool_file_corrupted_in_place_and_quarantines_it(world):
    world.write()
    world.apply()
    sha = world.upstream_sha(HELLO)
    pool_file = world.pool_file(sha)
    assert stat.S_IMODE(pool_file.stat().st_mode) == 0o444  # no other user can edit it in place
    assert world.recorded(sha)[0] == pool_file.stat().st_size
    dist = world.root / "public/debian/dists/stable"
    before = {name: (dist / name).read_bytes() for name in ("InRelease", "Release", "Release.gpg")}
    bad = corrupt_in_place(pool_file)

    world.write(origin="Edited")  # the publish must rewrite and re-sign its tree
    out = world.apply(expect=1)
    text = out.stdout + out.stderr
    assert "publish/pub: not switched" in text and "publish/pub: publish/pub" not in text, text
    assert "hello_2.10-2_amd64.deb" in text and "no longer matches its SHA-256" in text
    assert "held by snapshot/s1" in text and "mirror/up re-fetches it" in text
    # Nothing switched: the signed files are the ones from before; the damaged file is
    # evidence in quarantine, no longer in the pool nor recorded as verified.
    assert {name: (dist / name).read_bytes() for name in before} == before
    assert (world.root / "pool/quarantine" / sha).read_bytes() == bad
    assert not pool_file.exists() and world.recorded(sha) is None

    # The next apply re-fetches the file and the publish replaces the damaged link.
    world.server.clear()
    out = world.apply()
    assert "re-fetched 1 missing pool file(s)" in out.stdout, out.stdout
    assert world.requests().count(HELLO) == 1
    assert sha256_file(world.published()) == sha
    assert os.path.samestat(world.published().stat(), pool_file.stat())
    assert world.cli("verify", "--deep").returncode == 0


def test_verify_deep_quarantines_a_corrupt_pool_file_and_plain_verify_only_reports(world):
    world.write(publish=None)
    world.apply()
    sha = world.upstream_sha(HELLO)
    pool_file = world.pool_file(sha)
    bad = corrupt_in_place(pool_file)

    world.cli("verify")  # sizes only: same-size damage is for --deep, and nothing moves
    assert pool_file.exists() and world.recorded(sha) is not None

    out = world.cli("verify", "--deep", expect=1)
    quarantined = world.root / "pool/quarantine" / sha
    assert f"pool: pool/main/h/hello/hello_2.10-2_amd64.deb ({sha[:12]}) content does not match its SHA-256: " \
           f"moved to {quarantined}" in out.stdout, out.stdout
    assert quarantined.read_bytes() == bad  # kept as evidence, not deleted
    assert not pool_file.exists() and world.recorded(sha) is None

    out = world.cli("verify", expect=1)
    assert "hello_2.10-2_amd64.deb" in out.stdout and "is missing" in out.stdout
    changes = world.plan()
    assert changes[("Mirror", "up")]["op"] == "repair"
    assert changes[("Mirror", "up")]["reason"] == "1 pool file(s) missing, re-fetched from upstream"


def test_a_deleted_pool_file_is_re_fetched_by_the_next_apply_and_only_that_file(world):
    world.write(publish=None)
    world.apply()
    sha = world.upstream_sha(HELLO)
    world.pool_file(sha).unlink()

    world.server.clear()
    changes = world.plan()
    assert changes[("Mirror", "up")]["op"] == "repair"
    assert changes[("Mirror", "up")]["reason"] == "1 pool file(s) missing, re-fetched from upstream"
    assert world.requests() == ["/dists/stable/InRelease"]  # plan downloads nothing

    world.server.clear()
    out = world.apply()
    assert "mirror/up: upstream unchanged; re-fetched 1 missing pool file(s)" in out.stdout, out.stdout
    assert world.requests() == ["/dists/stable/InRelease", HELLO]
    assert sha256_file(world.pool_file(sha)) == sha
    assert world.recorded(sha) is not None
    world.cli("verify", "--deep")

    # Converged: the no-change re-run is one request again, and plan is green.
    world.server.clear()
    out = world.apply()
    assert "mirror/up: up to date" in out.stdout
    assert world.requests() == ["/dists/stable/InRelease"]
    world.cli("plan", "-f", str(world.specs), "--detailed-exitcode")


def test_a_lost_file_no_declared_mirror_lists_fails_apply_naming_its_snapshots(world):
    world.write(snapshots=("s1", "s2"), publish=None)
    world.apply()
    tinymta = "/pool/main/t/tinymta/tinymta_0.9-1_amd64.deb"
    sha = world.upstream_sha(tinymta)
    world.builder.remove("tinymta")
    world.build(day=1)  # upstream dropped it: the mirror's new list no longer has it
    world.apply()
    world.pool_file(sha).unlink()

    changes = world.plan(expect=1)
    for snap in ("s1", "s2"):
        change = changes[("Snapshot", snap)]
        assert change["op"] == "error", change
        assert "pool/main/t/tinymta/tinymta_0.9-1_amd64.deb" in change["reason"]
        assert "no declared mirror lists them" in change["reason"]

    out = world.apply(expect=1)
    assert (f"pool: pool/main/t/tinymta/tinymta_0.9-1_amd64.deb ({sha[:12]}) is missing and no declared mirror "
            "lists it; held by snapshot/s1, snapshot/s2") in out.stdout, out.stdout


def test_a_lost_file_upstream_no_longer_serves_fails_the_repair_naming_its_snapshots(world):
    world.write(publish=None)
    world.apply()
    sha = world.upstream_sha(HELLO)
    world.pool_file(sha).unlink()
    (world.dest / HELLO.lstrip("/")).unlink()  # upstream lost it too; its Release is unchanged

    out = world.apply(expect=1)
    text = out.stdout + out.stderr
    assert "FAILED mirror/up: 1 missing pool file(s) cannot be re-fetched from upstream" in text, text
    assert "HTTP 404" in text
    assert f"pool/main/h/hello/hello_2.10-2_amd64.deb ({sha[:12]}) is held by snapshot/s1" in text


def test_after_a_repair_the_published_tree_is_sound_and_apt_get_installs(world, http_server, apt_client):
    world.write()
    world.apply()
    sha = world.upstream_sha(HELLO)
    corrupt_in_place(world.pool_file(sha))  # the published file is the same inode: damaged too
    out = world.cli("verify", "--deep", expect=1)
    assert "moved to" in out.stdout and "publish/pub: pool/main/h/hello/hello_2.10-2_amd64.deb" in out.stdout

    changes = world.plan()
    assert changes[("Mirror", "up")]["op"] == "repair"
    assert changes[("Publish", "pub")]["op"] == "repair"
    assert "re-link 1 pool file(s)" in changes[("Publish", "pub")]["reason"]

    world.server.clear()
    out = world.apply()
    assert "re-fetched 1 missing pool file(s)" in out.stdout
    assert "publish/pub: re-linked 1 replaced pool file(s) of debian/stable" in out.stdout, out.stdout
    assert world.requests() == ["/dists/stable/InRelease", HELLO]
    assert sha256_file(world.published()) == sha
    world.cli("verify", "--deep")
    world.cli("plan", "-f", str(world.specs), "--detailed-exitcode")

    public = http_server(world.root / "public")
    client = apt_client(f"deb [signed-by={world.signing_key.public_keyring}] {public.url}/debian stable main")
    client.update()
    client.download("hello")
    assert "hello_2.10-2_amd64.deb" in client.downloaded()
    assert sha256_file(client.dir / "cache/archives/hello_2.10-2_amd64.deb") == sha


def test_a_pool_file_whose_identity_changed_but_content_did_not_is_hashed_linked_and_recorded(world):
    world.write()
    world.apply()
    sha = world.upstream_sha(HELLO)
    pool_file = world.pool_file(sha)
    st = pool_file.stat()
    os.utime(pool_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, not edited
    world.write(origin="Edited")
    out = world.apply()
    assert "publish/pub: switched debian/stable" in out.stdout, out.stdout
    assert "1 pool file(s) had changed on disk since they were verified: hashed again, sound" in out.stdout
    assert world.recorded(sha) == (st.st_size, st.st_mtime_ns + 10**9, st.st_ino)
    assert not (world.root / "pool/quarantine").exists()
    world.cli("verify", "--deep")

    # Rows from before identities were recorded (an upgraded root): each file is hashed
    # once at the next publish, then recorded.
    db = sqlite3.connect(world.root / "state.db")
    with db:
        db.execute("UPDATE pool_files SET mtime_ns = NULL, ino = NULL")
    db.close()
    world.write(origin="Upgraded")
    out = world.apply()
    assert "10 pool file(s) had changed on disk" in out.stdout, out.stdout
    assert world.recorded(sha) == (st.st_size, st.st_mtime_ns + 10**9, st.st_ino)
    world.write(origin="Again")
    assert "had changed on disk" not in world.apply().stdout

