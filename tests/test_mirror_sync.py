"""Mirror sync end to end: the real CLI against a real signed archive on 127.0.0.1.

Every test builds an upstream with tests.support.archive (real .debs, real gpg
signatures), serves it with tests.support.server (which logs each request and can
fail, slow, throttle or truncate on cue), and runs `python -m reconciler` as a
subprocess over a fresh root (real SQLite, real pool). The request log is the witness
for "downloads nothing it already has"; the pool is checked by re-hashing its files.

Scenarios follow an operator's week: a first sync, a no-op re-run, the next day's
upstream, a run killed with SIGKILL half-way, damaged or hostile upstreams, filters,
retries, flat repositories, spec edits and drops. The live test against the real
Debian archive is opt-in (RECONCILER_LIVE=1).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli import app
from reconciler.state import sqlite as statedb
from reconciler.state.stores import Store
from tests.support import examples
from tests.support.archive import DEFAULT_DATE, ArchiveBuilder, BuiltArchive, corrupt

DIST = "stable"
REPO = Path(__file__).resolve().parent.parent


# --- helpers -------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(root: Path, *args: str, expect: int | None = 0, real: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI and assert its exit code (unless `expect` is None).

    `real=True` runs `python -m reconciler` as a subprocess: a real process, real exit
    code, ~1 s of interpreter start-up. Otherwise the same typer app is invoked in this
    process, which keeps the file fast; the code path below the argument parser is the
    same.
    """
    if real:
        out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), *args],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    else:
        result = CliRunner().invoke(app, ["--root", str(root), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        out = subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)
    if expect is not None and out.returncode != expect:
        raise AssertionError(f"reconciler {' '.join(args)} exited {out.returncode}, expected {expect}:\n"
                             f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}")
    return out


class Rig:
    """One upstream archive (a mutable declaration rebuilt in place), its server, a root."""

    def __init__(self, tmp_path: Path, serve, key):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.dest = tmp_path / "upstream"
        self.key = key
        self.builder = examples.example_builder()
        self.archive: BuiltArchive | None = None
        self._serve = serve
        self.server = None

    # upstream

    def build(self, *, day: int = 0, distribution: str = DIST, sign_with="default", **kw) -> BuiltArchive:
        """(Re)build the declaration into the same directory, dated `day` days later."""
        key = self.key if sign_with == "default" else sign_with
        self.archive = self.builder.build(self.dest, distribution=distribution, origin="Example",
                                          date=DEFAULT_DATE + timedelta(days=day), sign_with=key, **kw)
        if self.server is None:
            self.server = self._serve(self.dest)
        return self.archive

    @property
    def url(self) -> str:
        return self.server.url

    def sha(self, name: str, version: str | None = None, arch: str | None = None) -> str:
        return sha256_file(self.archive.path(name, version, arch))

    # specs

    def mirror(self, name: str = "up", **spec) -> Path:
        body = {"url": self.url, "distribution": DIST, "keyrings": [str(self.key.public_keyring)], **spec}
        body = {k: v for k, v in body.items() if v is not None}
        return self.write(name, "Mirror", name, body)

    def snapshot(self, name: str, mirror: str = "up") -> Path:
        return self.write(f"snapshot-{name}", "Snapshot", name, {"mirror": mirror})

    def write(self, file: str, kind: str, name: str, spec: dict) -> Path:
        path = self.specs / f"{file}.yaml"
        doc = {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        path.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
        return path

    # the CLI

    def cli(self, *args: str, expect: int | None = 0, real: bool = False) -> subprocess.CompletedProcess:
        return cli(self.root, *args, expect=expect, real=real)

    def apply(self, *extra: str, expect: int | None = 0, real: bool = False) -> subprocess.CompletedProcess:
        return self.cli("apply", "-f", str(self.specs), *extra, expect=expect, real=real)

    def plan(self, *extra: str, expect: int | None = 0, real: bool = False) -> subprocess.CompletedProcess:
        return self.cli("plan", "-f", str(self.specs), *extra, expect=expect, real=real)

    def listed(self, *, real: bool = False) -> dict[str, dict]:
        out = self.cli("list", "mirrors", "--json", real=real)
        return {m["name"]: m for m in json.loads(out.stdout)}

    # state, read directly

    def packages(self, name: str = "up") -> set[str]:
        """`type:name_version_arch` of every package in the mirror's list."""
        db = statedb.connect(self.root / "state.db")
        try:
            store = Store(db)
            row = store.mirrors.get(name)
            assert row is not None, f"mirror {name} does not exist"
            return {f"{p.type}:{p.ref}" for _id, p in store.packages.load(store.lists.ids(row.list_digest))}
        finally:
            db.close()

    def state(self) -> list:
        """What users see: mirrors, snapshots and package lists (empty before the first write).

        A mirror's status, last_error and updated_at are left out: a refused or failed update
        records itself there (tests/test_convergence.py), and changes nothing else."""
        if not (self.root / "state.db").exists():
            return []
        db = sqlite3.connect(self.root / "state.db")
        mirror = ("id, name, owner, spec, protect, list_digest, update_complete, release_sha256, release_date,"
                  " upstream, last_update, created_at")
        try:
            return [db.execute(f"SELECT {cols} FROM {t} ORDER BY 1").fetchall()
                    for t, cols in (("mirrors", mirror), ("snapshots", "*"), ("package_lists", "*"))]
        finally:
            db.close()

    def pool(self) -> dict[str, Path]:
        """sha256 -> path of every file in the pool, each re-hashed: the name must be the content."""
        files = {}
        for path in sorted((self.root / "pool" / "files").glob("*/*")):
            assert path.parent.name == path.name[:2]
            assert sha256_file(path) == path.name, f"{path} does not hash to its name"
            files[path.name] = path
        return files

    def deb_requests(self) -> list[str]:
        return [r.path for r in self.server.requests(lambda p: p.endswith((".deb", ".udeb")))]


@pytest.fixture
def rig(tmp_path, http_server, gpg_key) -> Rig:
    return Rig(tmp_path, http_server, gpg_key)


def upstream_files(archive: BuiltArchive, *, debs_only: bool) -> dict[str, str]:
    """sha256 -> Filename of every package file the archive's pool holds."""
    files = {}
    for path in sorted((archive.root / "pool").rglob("*")):
        if path.is_file() and (not debs_only or path.suffix == ".deb"):
            files[sha256_file(path)] = str(path.relative_to(archive.root))
    return files


# --- 1, 2: full sync, then a no-op --------------------------------------------------------


@pytest.mark.parametrize("extras", [False, True], ids=["binaries", "with-sources-and-udebs"])
def test_full_sync_mirrors_every_package_into_the_pool(rig, extras):
    archive = rig.build()
    rig.mirror(withSources=extras or None, withUdebs=extras or None)
    out = rig.apply(real=not extras)
    assert "mirror/up: created" in out.stdout

    binaries = [b for b in rig.builder.binaries if not b.udeb]
    expected = len(binaries) + (len(rig.builder.sources) + sum(b.udeb for b in rig.builder.binaries)
                                if extras else 0)
    listed = rig.listed()["up"]
    assert listed["numPackages"] == expected == (23 if extras else 12)
    assert listed["updateComplete"] is True and listed["status"] == "ready"
    assert sorted(listed["components"]) == ["contrib", "main"]

    packages = rig.packages()
    assert {p.split(":")[0] for p in packages} == ({"deb", "udeb", "source"} if extras else {"deb"})
    assert {p for p in packages if p.startswith("deb:")} == {f"deb:{b.name}_{b.version}_{b.arch}" for b in binaries}
    # Every file upstream's pool holds (sources: .dsc, .orig.tar, .debian.tar) is in ours, by content.
    wanted = upstream_files(archive, debs_only=not extras)
    assert set(rig.pool()) == set(wanted)
    # ... each downloaded once.
    requested = [r.path.lstrip("/") for r in rig.server.requests(lambda p: p.startswith("/pool/"))]
    assert sorted(requested) == sorted(wanted.values())


def test_rerun_without_upstream_change_costs_one_request(rig):
    rig.build()
    rig.mirror()
    rig.apply()
    before, pool = rig.state(), rig.pool()
    rig.server.clear()

    out = rig.apply(real=True)
    assert "mirror/up: up to date (12 packages)" in out.stdout
    assert [(r.path, r.status) for r in rig.server.requests()] == [("/dists/stable/InRelease", 200)]

    rig.server.clear()
    out = rig.plan("--detailed-exitcode", expect=0)
    assert "up to date" in out.stdout
    assert [r.path for r in rig.server.requests()] == ["/dists/stable/InRelease"]
    assert rig.state() == before and rig.pool() == pool


# --- 3: the next day's upstream -------------------------------------------------------------


def test_next_day_update_downloads_only_new_files_and_gc_frees_old_ones(rig):
    rig.build()
    rig.mirror()
    rig.snapshot("day0")
    rig.apply()
    old = {"hello": rig.sha("hello", "2.10-1"), "tinymta": rig.sha("tinymta"),
           "libgreet1": rig.sha("libgreet1", "1.0-1")}

    b = rig.builder
    b.remove("hello", "2.10-1")
    b.add("hello", "2.10-3", section="utils", depends="libgreet1 (>= 1.1), greet-data")
    b.remove("tinymta")
    b.remove("libgreet1", "1.0-1")
    b.add("newtool", "1.0-1", section="utils", depends="basesys")
    rig.build(day=1)
    rig.server.clear()

    out = rig.plan("--detailed-exitcode", expect=2)
    assert re.search(r"update\s+mirror/up: upstream changed: \+1 ~1 -2", out.stdout), out.stdout
    assert rig.deb_requests() == []  # plan downloads no package

    out = rig.apply()
    assert "mirror/up: updated +1 ~1 -2, 2 files" in out.stdout
    assert sorted(rig.deb_requests()) == sorted(
        "/" + rig.archive.filename(n, v) for n, v in (("hello", "2.10-3"), ("newtool", "1.0-1")))
    packages = rig.packages()
    assert len(packages) == 11 == rig.listed()["up"]["numPackages"]
    assert {"deb:hello_2.10-3_amd64", "deb:newtool_1.0-1_amd64", "deb:hello_2.10-2_amd64"} <= packages
    assert not packages & {"deb:hello_2.10-1_amd64", "deb:tinymta_0.9-1_amd64", "deb:libgreet1_1.0-1_amd64"}

    # Gone upstream, kept in the pool: snapshot day0 still refers to them, gc leaves them.
    snapshots = json.loads(rig.cli("list", "snapshots", "--json").stdout)
    assert [(s["name"], s["numPackages"]) for s in snapshots] == [("day0", 12)]
    assert set(old.values()) <= set(rig.pool())
    assert "freed 0 file(s)" in rig.cli("gc").stdout
    assert set(old.values()) <= set(rig.pool())
    # Once no snapshot refers to them, gc frees exactly them.
    (rig.specs / "snapshot-day0.yaml").unlink()
    assert "snapshot/day0: dropped" in rig.apply().stdout
    keep = set(rig.pool()) - set(old.values())
    assert "freed 3 file(s)" in rig.cli("gc").stdout
    assert set(rig.pool()) == keep
    assert rig.cli("verify").returncode == 0


def test_update_removing_more_than_max_removal_percent_is_refused_without_force(rig):
    rig.build()
    rig.mirror()
    rig.apply()
    before = rig.state()
    # 3 of 12 (25% > the default 20%); two are old versions in slots that keep a newer
    # one, which the gate must count as removals too.
    rig.builder.remove("hello", "2.10-1")
    rig.builder.remove("libgreet1", "1.0-1")
    rig.builder.remove("tinymta")
    rig.build(day=1)
    out = rig.apply(expect=1)
    assert "would remove 3 of 12 packages (25%)" in out.stdout and "maxRemovalPercent" in out.stdout
    assert rig.state() == before and len(rig.deb_requests()) == 12  # the first sync only
    out = rig.apply("--force")
    assert "updated +0 ~0 -3, 0 files" in out.stdout
    assert rig.listed()["up"]["numPackages"] == 9


def test_upstream_release_older_than_the_last_one_seen_is_refused_as_a_replay(rig):
    rig.build(day=1)
    rig.mirror()
    rig.apply()
    before = rig.state()
    rig.builder.remove("tinymta")
    rig.build(day=0)  # validly signed, but dated before what the mirror already saw
    out = rig.apply(expect=1)
    assert "possible replay" in out.stdout and "--force" in out.stdout
    assert rig.state() == before
    assert "updated +0 ~0 -1" in rig.apply("--force").stdout


# --- 4, 5: killed half-way, and partial files resumed with Range ----------------------------


def big_archive_builder(small: int = 8, pad: int = 3_000_000) -> ArchiveBuilder:
    """One big padded package (sorted first, so it downloads first) and `small` small ones."""
    b = ArchiveBuilder(architectures=["amd64"], components=["main"])
    b.add("aaa-big", "1.0-1", pad=pad)
    for i in range(small):
        b.add(f"pkg{i}", "1.0-1")
    return b


def wait_until(test, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigkill_half_way_then_rerun_finishes_without_fetching_anything_twice(rig):
    rig.builder = big_archive_builder()
    archive = rig.build()
    big, big_sha = "/" + archive.filename("aaa-big"), rig.sha("aaa-big")
    big_size = archive.path("aaa-big").stat().st_size
    total = len(rig.builder.binaries)
    # The big file trickles; half of the small ones are served, the other half never
    # answered: the kill then lands with files done, one half-received, some not begun,
    # and none between "last byte sent" and "imported" (which would make the count racy).
    rig.server.throttle(big, 2_000_000)
    second_half = {"/" + archive.filename(f"pkg{i}") for i in range(4, 8)}
    rig.server.hang(lambda p: p in second_half, times=None)
    part = rig.root / "pool" / "tmp" / f"{big_sha}.part"
    first_half = {sha256_file(archive.path(f"pkg{i}")) for i in range(4)}
    rig.mirror()

    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "--root", str(rig.root), "apply", "-f",
                             str(rig.specs)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: first_half <= {p.name for p in (rig.root / "pool" / "files").glob("*/*")},
                   what="the first half of the small files in the pool")
        wait_until(lambda: part.exists() and part.stat().st_size >= 1 << 20, what="part of the big file")
        assert rig.server.count(lambda p: p in second_half) >= 1  # asked for, never answered
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # The kernel dropped the killed task's locks: each can be taken at once.
    locks = list((rig.root / "locks").glob("*.lock"))
    assert any("mirror" in lock.name for lock in locks)
    for lock in locks:
        with open(lock, "rb+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    db = sqlite3.connect(rig.root / "state.db")
    killed = db.execute("SELECT id, state FROM tasks WHERE name = 'sync mirror up'").fetchall()
    db.close()
    assert [state for _id, state in killed] == ["running"]
    assert rig.state()[0] == []  # the mirror does not exist yet
    have = part.stat().st_size
    assert 0 < have < big_size
    assert set(rig.pool()) == first_half  # imported the moment each landed

    rig.server.reset()
    out = rig.apply(real=True)
    assert f"mirror/up: created +{total} ~0 -0, {total - len(first_half)} files" in out.stdout

    # The partial file was continued from where it stopped, with a Range request.
    resumed = [r for r in rig.server.requests(big) if r.range]
    assert [(r.range, r.status, r.sent) for r in resumed] == [(f"bytes={have}-", 206, big_size - have)]
    # No file was downloaded in full twice: the first half was not asked for again.
    for path in set(rig.deb_requests()):
        full = [r for r in rig.server.requests(path) if r.range is None and r.complete]
        assert len(full) <= 1, f"{path} was downloaded {len(full)} times"
    assert all(rig.server.count("/" + archive.filename(f"pkg{i}")) == 1 for i in range(4))
    assert set(rig.pool()) == set(upstream_files(archive, debs_only=True))
    assert not list((rig.root / "pool" / "tmp").glob("*.part"))
    assert rig.listed()["up"]["numPackages"] == total

    db = sqlite3.connect(rig.root / "state.db")
    tasks = dict(db.execute("SELECT id, state FROM tasks WHERE name = 'sync mirror up'").fetchall())
    error = db.execute("SELECT error FROM tasks WHERE id = ?", (killed[0][0],)).fetchone()[0]
    held = db.execute("SELECT * FROM locks").fetchall()
    db.close()
    assert tasks[killed[0][0]] == "failed" and "interrupted" in error
    assert sorted(tasks.values()) == ["failed", "succeeded"]
    assert held == []


def test_connection_cut_mid_file_is_resumed_with_range_in_the_same_run(rig):
    rig.builder = big_archive_builder(small=1)
    archive = rig.build()
    big, size = "/" + archive.filename("aaa-big"), archive.path("aaa-big").stat().st_size
    rig.server.truncate(big, 1_500_000)  # promises the whole file, closes after 1.5 MB
    rig.mirror()
    rig.apply()
    hits = [(r.range, r.status) for r in rig.server.requests(big)]
    assert hits[0] == (None, 200) and hits[-1][1] == 206 and len(hits) == 2
    have = int(hits[-1][0].removeprefix("bytes=").rstrip("-"))
    assert 0 < have <= 1_500_000
    assert rig.server.requests(big)[-1].sent == size - have
    assert rig.sha("aaa-big") in rig.pool()


def test_partial_file_in_the_pool_tmp_is_resumed_with_range(rig):
    archive = rig.build()
    rig.mirror()
    path = archive.path("hello", "2.10-2")
    data, sha = path.read_bytes(), rig.sha("hello", "2.10-2")
    half = len(data) // 2
    part = rig.root / "pool" / "tmp" / f"{sha}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])

    rig.apply()
    hits = rig.server.requests("/" + archive.filename("hello", "2.10-2"))
    assert [(r.range, r.status, r.sent) for r in hits] == [(f"bytes={half}-", 206, len(data) - half)]
    assert rig.pool()[sha].read_bytes() == data
    assert not part.exists()


def test_complete_partial_file_is_imported_without_a_request(rig):
    """Killed after the last byte landed but before the import: nothing left to fetch."""
    archive = rig.build()
    rig.mirror()
    sha = rig.sha("hello", "2.10-2")
    part = rig.root / "pool" / "tmp" / f"{sha}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive.path("hello", "2.10-2").read_bytes())

    rig.apply()
    assert rig.server.requests("/" + archive.filename("hello", "2.10-2")) == []
    assert sha in rig.pool()


# --- 6: a damaged package file upstream -------------------------------------------------------


def test_corrupt_package_on_create_fails_and_creates_nothing(rig):
    archive = rig.build()
    good = rig.sha("hello", "2.10-2")  # what the index promises
    corrupt(archive.path("hello", "2.10-2"))  # same size: only the checksum catches it
    rig.mirror()
    out = rig.apply(expect=1)
    assert f"{archive.filename('hello', '2.10-2')}: checksum mismatch, not imported" in out.stdout
    assert rig.listed() == {}
    pool = set(rig.pool())
    assert good not in pool
    assert pool == set(upstream_files(archive, debs_only=True)) - {rig.sha("hello", "2.10-2")}  # a re-run resumes
    assert not list((rig.root / "pool" / "tmp").glob("*.part"))


def test_corrupt_package_on_update_keeps_the_previous_list(rig):
    rig.build()
    rig.mirror()
    rig.apply()
    before, listed, pool = rig.state(), rig.listed(), rig.pool()
    rig.builder.add("newtool", "1.0-1")
    archive = rig.build(day=1)
    good, size = rig.sha("newtool"), archive.path("newtool").stat().st_size
    corrupt(archive.path("newtool"), truncate=True)  # served whole, but shorter than indexed

    out = rig.apply(expect=1)
    assert (f"pool/main/n/newtool/newtool_1.0-1_amd64.deb: upstream serves {size // 2} bytes, "
            f"its index says {size}; not imported") in out.stdout
    after = rig.listed()
    assert rig.state() == before and after["up"]["status"] == "failed" and "newtool" in after["up"]["lastError"]
    shown = lambda listing: {k: {f: v for f, v in m.items() if f not in ("status", "lastError")}  # noqa: E731
                             for k, m in listing.items()}
    assert shown(after) == shown(listed)
    assert listed["up"]["numPackages"] == 12
    assert rig.pool() == pool and good not in pool
    assert not list((rig.root / "pool" / "tmp").glob("*.part"))


# --- 7: trust ----------------------------------------------------------------------------------


def test_tampered_inrelease_is_refused_and_nothing_changes(rig):
    rig.build()
    rig.mirror()
    rig.apply()
    before, pool = rig.state(), rig.pool()
    rig.builder.add("newtool", "1.0-1")
    archive = rig.build(day=1)
    text = archive.inrelease.read_bytes()
    archive.inrelease.write_bytes(text.replace(b"Origin: Example", b"Origin: Exampel", 1))
    rig.server.clear()

    out = rig.apply(expect=1, real=True)
    assert "InRelease: BAD signature" in out.stdout and "altered" in out.stdout
    assert rig.state() == before and rig.pool() == pool
    assert [r.path for r in rig.server.requests()] == ["/dists/stable/InRelease"]
    assert "cannot read upstream" in rig.plan(expect=1).stdout


def test_archive_signed_by_an_unknown_key_is_refused(rig, other_gpg_key):
    rig.build(sign_with=other_gpg_key)
    rig.mirror()
    out = rig.apply(expect=1)
    assert "unknown key NO_PUBKEY" in out.stdout
    assert other_gpg_key.fingerprint[-16:] in out.stdout  # names the key it does not know
    assert rig.listed() == {} and rig.pool() == {}
    assert rig.deb_requests() == []


def test_unsigned_archive_with_verify_signature_false_works_and_warns(rig):
    rig.build(sign_with=None)
    rig.mirror(keyrings=None, verifySignature=False)
    out = rig.apply()
    assert re.search(r"^WARNING: mirror/up: verifySignature is false", out.stdout, re.M), out.stdout
    assert rig.listed()["up"]["numPackages"] == 12
    requested = [r.path for r in rig.server.requests(lambda p: "/dists/" in p and "Release" in p)]
    assert requested[:2] == ["/dists/stable/InRelease", "/dists/stable/Release"]  # 404, then Release


def test_unsigned_archive_is_refused_when_verification_is_on(rig):
    rig.build(sign_with=None)
    rig.mirror()
    out = rig.apply(expect=1)
    assert "neither InRelease nor Release with Release.gpg" in out.stdout
    assert rig.listed() == {}


# --- 8: missing indexes -----------------------------------------------------------------------


def test_index_listed_by_release_but_missing_upstream_fails_clearly(rig):
    archive = rig.build()
    archive.remove_index("main", "amd64")
    rig.mirror()
    out = rig.apply(expect=1)
    assert "main/binary-amd64/Packages" in out.stdout and "HTTP 404" in out.stdout
    assert rig.listed() == {} and rig.pool() == {}
    assert rig.deb_requests() == []


@pytest.mark.parametrize("spec", [{"components": ["main", "non-free"]}, {"architectures": ["arm64"]}],
                         ids=["component", "architecture"])
def test_index_the_release_does_not_list_fails_clearly(rig, spec):
    rig.build()
    rig.mirror()
    rig.apply()
    before = rig.state()
    rig.mirror(**spec)
    out = rig.apply(expect=1)
    missing = "non-free/binary-amd64/Packages" if "components" in spec else "main/binary-arm64/Packages"
    assert "the Release lists none of these indexes" in out.stdout and missing in out.stdout
    assert rig.state() == before


# --- 9: hostile Filename ----------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "pool/main/../../../../etc/shadow"])
def test_hostile_filename_refuses_the_index(rig, filename):
    rig.builder.add("evil", "1.0-1", override={"Filename": filename})
    rig.build()
    rig.mirror()
    out = rig.apply(expect=1)
    assert repr(filename) in out.stdout and "hostile file path" in out.stdout
    assert rig.listed() == {} and rig.pool() == {}
    assert rig.deb_requests() == []
    assert not [r for r in rig.server.requests() if "etc" in r.path]


# --- 10: filters, udebs, sources ----------------------------------------------------------


FILTERS = {
    "required": ({"filter": "Priority (required)"},
                 {"deb:basesys_1.0-1_amd64", "deb:toolbox_1.0-1_amd64"}),
    "required-deps": ({"filter": "Priority (required)", "filterWithDeps": True},
                      {"deb:basesys_1.0-1_amd64", "deb:toolbox_1.0-1_amd64"}),
    "hello": ({"filter": "hello"}, {"deb:hello_2.10-1_amd64", "deb:hello_2.10-2_amd64"}),
    # Depends are followed at the highest satisfying version, Recommends (hello-doc) are not.
    "hello-deps": ({"filter": "hello", "filterWithDeps": True},
                   {"deb:hello_2.10-1_amd64", "deb:hello_2.10-2_amd64", "deb:libgreet1_1.1-1_amd64",
                    "deb:greet-data_1.1-1_all", "deb:basesys_1.0-1_amd64"}),
    # A virtual package behind an alternative: the provider is taken.
    "mailnotify-deps": ({"filter": "mailnotify", "filterWithDeps": True},
                        {"deb:mailnotify_1.0-1_all", "deb:tinymta_0.9-1_amd64"}),
    # Across components: contrib's package pulls its dependencies from main.
    "extras-deps": ({"filter": "greet-extras", "filterWithDeps": True},
                    {"deb:greet-extras_0.5-1_amd64", "deb:hello_2.10-2_amd64", "deb:libgreet1_1.1-1_amd64",
                     "deb:greet-data_1.1-1_all", "deb:basesys_1.0-1_amd64"}),
    "version": ({"filter": "libgreet1 (<< 1.1)", "components": ["main"]}, {"deb:libgreet1_1.0-1_amd64"}),
    "udebs": ({"filter": "libgreet1-udeb | basesys", "withUdebs": True},
              {"udeb:libgreet1-udeb_1.1-1_amd64", "deb:basesys_1.0-1_amd64"}),
}


def test_filters_select_package_by_package(rig):
    archive = rig.build()
    for name, (spec, _expected) in FILTERS.items():
        rig.mirror(name, **spec)
    out = rig.apply()
    for name, (_spec, expected) in FILTERS.items():
        assert rig.packages(name) == expected, name
        assert f"mirror/{name}: created +{len(expected)} ~0 -0" in out.stdout
    # Each file was fetched once however many mirrors share it, and only wanted files were.
    wanted = {f.split(":")[1] for _spec, exp in FILTERS.values() for f in exp}
    requested = rig.deb_requests()
    assert sorted(requested) == sorted(set(requested))
    assert {Path(p).stem for p in requested} == wanted
    assert set(rig.pool()) == {sha256_file(archive.root / p.lstrip("/")) for p in requested}


def test_sources_bring_every_file_of_each_dsc(rig):
    archive = rig.build()
    rig.mirror(filter="greet | basesys", withSources=True, components=["main"])
    rig.apply()
    assert rig.packages() == {"deb:basesys_1.0-1_amd64", "source:basesys_1.0-1_source",
                              "source:greet_1.0-1_source", "source:greet_1.1-1_source"}
    source_files = [p for p in (archive.root / "pool" / "main").rglob("*")
                    if p.is_file() and p.name.startswith(("greet_", "basesys_")) and p.suffix != ".deb"]
    assert {p.suffix for p in source_files} >= {".dsc", ".gz", ".xz"}  # .dsc, .orig.tar.gz, .debian.tar.xz
    pool = rig.pool()
    for path in source_files:
        assert sha256_file(path) in pool, f"{path.name} is not in the pool"
    assert len(pool) == len(source_files) + 1


# --- 11: retries ---------------------------------------------------------------------------


def test_server_errors_are_retried(rig):
    archive = rig.build()
    target = "/" + archive.filename("hello", "2.10-2")
    rig.server.fail(target, 500, times=2)
    rig.mirror()
    rig.apply()
    assert [r.status for r in rig.server.requests(target)] == [500, 500, 200]
    assert rig.sha("hello", "2.10-2") in rig.pool()
    assert rig.listed()["up"]["numPackages"] == 12


def test_missing_package_fails_that_file_and_a_rerun_fetches_only_it(rig):
    archive = rig.build()
    target = "/" + archive.filename("hello", "2.10-2")
    rig.server.fail(target, 404, times=None)
    rig.mirror()
    out = rig.apply(expect=1)
    assert f"{target.lstrip('/')}: HTTP 404" in out.stdout and "1 file(s) failed" in out.stdout
    assert [r.status for r in rig.server.requests(target)] == [404]  # a 404 is not retried
    assert rig.listed() == {}
    assert len(rig.pool()) == 11

    rig.server.reset()
    rig.server.clear()
    rig.apply()
    assert rig.deb_requests() == [target]
    assert rig.listed()["up"]["numPackages"] == 12


# --- 12: flat repositories -----------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["./", "flat/"])
def test_flat_repository(rig, distribution):
    b = ArchiveBuilder(architectures=["amd64"])
    b.add("alpha", "1.0-1", depends="beta")
    b.add("beta", "2.0-1", arch="all")
    b.add("gamma", "0.1-1")
    b.add_source("alpha", "1.0-1")
    rig.builder = b
    archive = rig.build(distribution=distribution)
    rig.mirror(distribution=distribution, withSources=True, filter="alpha", filterWithDeps=True)
    rig.apply()
    assert rig.packages() == {"deb:alpha_1.0-1_amd64", "deb:beta_2.0-1_all", "source:alpha_1.0-1_source"}
    wanted = {sha256_file(p) for p in archive.dist_dir.iterdir()
              if p.is_file() and not p.name.startswith(("gamma", "Packages", "Sources", "Release", "InRelease"))}
    assert set(rig.pool()) == wanted
    rig.server.clear()
    assert "up to date (3 packages)" in rig.apply().stdout
    assert len(rig.server.requests()) == 1


# --- 13: editing the spec ------------------------------------------------------------------


def test_editing_the_spec_recomputes_the_list_without_refetching(rig):
    rig.build()
    rig.mirror(components=["main"], architectures=["amd64"])
    rig.apply()
    assert rig.listed()["up"]["numPackages"] == 10
    assert len(rig.deb_requests()) == 10

    rig.server.clear()
    rig.mirror(components=["main", "contrib"], architectures=["amd64"])
    assert "edit components" in rig.plan().stdout
    out = rig.apply()
    assert "mirror/up: updated +2 ~0 -0, 2 files" in out.stdout
    assert sorted(Path(p).name for p in rig.deb_requests()) == ["fetch-fonts_1.0-1_all.deb",
                                                                 "greet-extras_0.5-1_amd64.deb"]

    rig.server.clear()
    rig.mirror(components=["main", "contrib"], architectures=["amd64"], filter="Priority (required)")
    assert re.search(r"edit filter; \+0 ~0 -10", rig.plan().stdout)
    out = rig.apply()  # a narrower filter is a spec edit: the removal gate does not apply
    assert "updated +0 ~0 -10, 0 files" in out.stdout
    assert rig.packages() == {"deb:basesys_1.0-1_amd64", "deb:toolbox_1.0-1_amd64"}

    rig.mirror(components=["main", "contrib"], architectures=["amd64"])
    out = rig.apply()  # widened again: everything is still in the pool (no gc ran)
    assert "updated +10 ~0 -0, 0 files" in out.stdout
    assert rig.deb_requests() == []
    assert rig.listed()["up"]["numPackages"] == 12


# --- 14: dropping a mirror a snapshot was taken from -----------------------------------------


def test_dropping_a_mirror_in_use_needs_force_and_the_snapshot_keeps_its_packages(rig):
    rig.build()
    rig.mirror()
    rig.snapshot("snap")
    rig.apply()
    snap_before = {s["name"]: s for s in json.loads(rig.cli("list", "snapshots", "--json").stdout)}
    assert snap_before["snap"]["numPackages"] == 12
    (rig.specs / "up.yaml").unlink()
    before, pool = rig.state(), rig.pool()

    out = rig.apply(expect=1, real=True)
    assert "mirror/up" in out.stderr and "snapshot/snap" in out.stderr and "--force" in out.stderr
    assert rig.state() == before and rig.pool() == pool

    out = rig.apply("--force")
    assert "mirror/up: dropped (snapshots snap keep their packages)" in out.stdout
    assert rig.listed() == {}
    snaps = {s["name"]: s for s in json.loads(rig.cli("list", "snapshots", "--json").stdout)}
    assert snaps["snap"]["numPackages"] == 12 and snaps["snap"]["digest"] == snap_before["snap"]["digest"]
    assert "freed 0 file(s)" in rig.cli("gc").stdout
    assert rig.pool() == pool
    assert rig.cli("verify").returncode == 0


# --- 15: the real Debian archive (opt-in) ------------------------------------------------------


def debian_uri() -> str:
    text = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    match = re.search(r"^URIs:\s*(\S+)", text, re.M)
    assert match, "no URIs: line in debian.sources"
    return match.group(1)


def apply_live(tmp_path: Path, name: str, spec: dict) -> dict:
    """Apply one live mirror (verified with Debian's keyring) into a fresh root; print the
    figures; check its pool files (each re-hashed); return its `list` row."""
    specs = tmp_path / "specs"
    specs.mkdir()
    doc = {"apiVersion": "reconciler/v1", "kind": "Mirror", "metadata": {"name": name},
           "spec": {**spec, "keyrings": ["/usr/share/keyrings/debian-archive-keyring.gpg"]}}
    (specs / "live.yaml").write_text(json.dumps(doc))
    root = tmp_path / "root"
    started = time.monotonic()
    out = cli(root, "apply", "-f", str(specs))
    took = time.monotonic() - started
    listed = json.loads(cli(root, "list", "mirrors", "--json").stdout)[0]
    files = [p for p in (root / "pool" / "files").glob("*/*")]
    size = sum(p.stat().st_size for p in files)
    print(f"\nlive {name}: {listed['numPackages']} packages, {len(files)} files, {size / 2**20:.1f} MiB "
          f"in {took:.0f}s\n{out.stdout}")
    assert len(files) == listed["numPackages"]
    assert all(sha256_file(p) == p.name for p in files)
    return listed


@pytest.mark.live
@pytest.mark.skipif(os.environ.get("RECONCILER_LIVE") != "1", reason="set RECONCILER_LIVE=1 (downloads ~40 MB)")
def test_live_debian_required_with_deps(tmp_path):
    listed = apply_live(tmp_path, "bookworm-required", {
        "url": debian_uri(), "distribution": "bookworm", "components": ["main"], "architectures": ["amd64"],
        "filter": "Priority (required)", "filterWithDeps": True})
    assert 60 <= listed["numPackages"] <= 200
    again = cli(tmp_path / "root", "apply", "-f", str(tmp_path / "specs"))
    assert "up to date" in again.stdout
