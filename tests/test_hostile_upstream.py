"""A hostile upstream serving VALIDLY SIGNED content: upstream values are data, never
paths or unbounded streams (issue 10).

Each archive is built with tests.support.archive, then made hostile with
tests.support.hostile (a tampered stanza, a bomb, an edited Release), listed again and
re-signed with the archive's own key, so the signature check passes and only the
content checks stand between the upstream and the host. The real CLI runs as a
subprocess against a real server on 127.0.0.1.

Every end-to-end test also checks the decoys: a `secret.txt` and a `pwned.part` in a
directory outside the root, which must be neither changed, deleted, linked into the
root nor copied into it, and nothing new may appear next to them.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler import upstream
from reconciler.debian import index
from reconciler.debian.package import BadStanza, from_stanza
from reconciler.errors import LimitError, ReconcilerError, TemporaryError, VerifyError
from reconciler.fetch import Fetcher
from reconciler.pool import BadKey, FilesystemPool
from reconciler.spec import MirrorSpec, Network
from tests.support import debs, hostile, specs
from tests.support.archive import DEFAULT_DATE, ArchiveBuilder, BuiltArchive
from tests.support.disk import small_disk  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parent.parent
SECRET = b"TOP SECRET decoy, must never leave this directory\n"
ENV_MARK = "RECONCILER_DECOY_ENV_MARK_5f3c"


# --- the rig ---------------------------------------------------------------------------


class Decoys:
    """Files outside the root that a hostile archive would like to read, link or delete."""

    def __init__(self, directory: Path, part_size: int = 0):
        self.dir = directory
        directory.mkdir()
        self.secret = directory / "secret.txt"
        self.secret.write_bytes(SECRET)
        self.part = directory / "pwned.part"
        self.part.write_bytes(b"P" * part_size)
        self.before = self._state()

    def _state(self) -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_nlink) for p in sorted(self.dir.iterdir())}

    def check(self, root: Path) -> None:
        assert self._state() == self.before, "a decoy outside the root was created, changed or deleted"
        inodes = {(p.stat().st_dev, p.stat().st_ino) for p in self.dir.iterdir()}
        for path in root.rglob("*") if root.exists() else []:
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                assert (st.st_dev, st.st_ino) not in inodes, f"{path} is a hard link to a decoy"
                if st.st_size < 50 << 20:
                    data = path.read_bytes()
                    assert SECRET not in data and ENV_MARK.encode() not in data, f"{path} holds host data"


class World:
    """One archive on a server, a root, a spec directory and the decoys beside them."""

    def __init__(self, tmp_path: Path, serve, key, builder: ArchiveBuilder | None = None):
        self.tmp, self.key = tmp_path, key
        self.root = tmp_path / "root"
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.decoys = Decoys(tmp_path / "outside")
        self.builder = builder or small_builder()
        self.archive = self.builder.build(tmp_path / "upstream", distribution="stable", sign_with=key)
        self.server = serve(self.archive.root)

    @property
    def url(self) -> str:
        return self.server.url

    def mirror(self, name: str = "m", extra: str = "", *, url: str | None = None, file: str | None = None) -> None:
        text = specs.mirror(name, url or self.url, str(self.key.public_keyring), extra=extra)
        (self.specs / f"{file or name}.yaml").write_text(text)

    def publish(self, mirror: str = "m") -> None:
        (self.specs / "publish.yaml").write_text(specs.snapshot("snap", mirror) + "---\n"
                                                 + specs.publish("pub", "snap"))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env_mark = {ENV_MARK: ENV_MARK}
        out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(self.root), *args],
                             capture_output=True, text=True, timeout=timeout, cwd=REPO,
                             env={**os.environ, **env_mark})
        assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
        return out

    def apply(self, *, expect: int, timeout: float = 120) -> str:
        out = self.cli("apply", "-f", str(self.specs), timeout=timeout)
        text = out.stdout + out.stderr
        assert out.returncode == expect, text
        return text

    def mirrors(self) -> dict[str, int]:
        import json
        out = self.cli("list", "mirrors", "--json")
        return {m["name"]: m["numPackages"] for m in json.loads(out.stdout)}

    def stanzas(self) -> list[dict[str, str]]:
        return hostile.stanzas(self.archive)

    def tamper(self, name: str, **fields: str | None) -> None:
        """Change fields of package `name` in main/binary-amd64 (None drops one); re-sign."""
        entries = self.stanzas()
        for entry in entries:
            if entry["Package"] == name:
                for key, value in fields.items():
                    if value is None:
                        entry.pop(key, None)
                    else:
                        entry[key] = value
        hostile.write_stanzas(self.archive, self.key, entries)

    def deb_size(self, name: str) -> int:
        return self.archive.path(name).stat().st_size


def small_builder() -> ArchiveBuilder:
    b = ArchiveBuilder(architectures=["amd64"], components=["main"])
    b.add("hello", "1.0-1", depends="libc")
    b.add("libc", "2.0-1", priority="required")
    return b


@pytest.fixture
def world(tmp_path, http_server, gpg_key) -> World:
    w = World(tmp_path, http_server, gpg_key)
    yield w
    w.decoys.check(w.root)


def path_to(target: Path, start: Path) -> str:
    """A relative path from `start` (need not exist) to `target`, always starting with '..'."""
    rel = os.path.relpath(target, start)
    assert rel.startswith("..")
    return rel


# --- 1. a checksum is not a path ---------------------------------------------------------


def test_sha256_that_is_a_path_to_a_host_file_is_refused(world):
    # pool.path(S) = pool/files/S[:2]/S, and S[:2] == "..": the path resolves from pool/.
    world.tamper("hello", SHA256=path_to(world.decoys.secret, world.root / "pool"), Size=str(len(SECRET)))
    world.mirror()
    world.publish()
    text = world.apply(expect=1)
    assert "package hello 1.0-1" in text and "SHA256" in text and "is not a SHA256 digest" in text
    assert world.mirrors() == {}
    assert not [r for r in world.server.requests() if r.path.endswith(".deb")]


def test_size_zero_sha256_naming_proc_environ_is_refused(world):
    world.tamper("hello", SHA256=path_to(Path("/proc/self/environ"), world.root / "pool"), Size="0")
    world.mirror()
    world.publish()
    text = world.apply(expect=1)
    assert "package hello 1.0-1" in text and "is not a SHA256 digest" in text
    assert world.mirrors() == {}


def test_truncated_body_never_writes_or_deletes_a_part_file_outside_the_root(tmp_path, http_server, gpg_key):
    w = World(tmp_path, http_server, gpg_key)
    size = w.deb_size("hello")
    w.decoys.part.write_bytes(b"P" * size)  # a *.part of matching size: today it is deleted
    w.decoys.before = w.decoys._state()
    # temp_path(S + ".part") = pool/tmp/S.part: S walks from pool/tmp to outside/pwned.
    w.tamper("hello", SHA256=path_to(w.decoys.dir / "pwned", w.root / "pool" / "tmp"))
    w.server.truncate(".deb", 10, times=None)
    w.mirror()
    text = w.apply(expect=1)
    assert "is not a SHA256 digest" in text
    w.decoys.check(w.root)


@pytest.mark.parametrize("field,value,message", [
    ("Size", "abc", "Size 'abc' is not a size"),
    ("Size", "-1", "Size '-1' is not a size"),
    ("Size", "99999999999999999999", "is not a size"),
    ("Size", "\u00b2", "is not a size"),
    ("SHA256", "ab" * 31, "is not a SHA256 digest"),
    ("SHA512", "zz" * 64, "SHA512"),
    ("MD5sum", "../../x", "MD5"),
    ("Filename", None, "lacks field Filename"),
    ("SHA256", None, "lacks field SHA256"),
], ids=["size-abc", "size-negative", "size-huge", "size-superscript", "sha256-short", "sha512-not-hex",
        "md5-path", "no-filename", "no-sha256"])
def test_malformed_values_of_a_signed_stanza_refuse_the_index(world, field, value, message):
    world.tamper("hello", **{field: value})
    world.mirror()
    text = world.apply(expect=1)
    assert "main/binary-amd64/Packages" in text and message in text, text
    assert "refusing this index" in text
    assert world.mirrors() == {}


def test_sources_checksum_line_that_is_a_path_refuses_the_index(tmp_path, http_server, gpg_key):
    b = small_builder()
    b.add_source("hello", "1.0-1", override={"Checksums-Sha256": "\n ../../../../tmp/secret.txt 51 hello.dsc"})
    w = World(tmp_path, http_server, gpg_key, b)
    w.mirror(extra="  withSources: true\n")
    text = w.apply(expect=1)
    assert "main/source/Sources" in text and "package hello 1.0-1: Checksums-Sha256" in text
    assert w.mirrors() == {}
    w.decoys.check(w.root)


def test_malformed_release_row_for_a_needed_index_is_an_error(world):
    def edit(text: str) -> str:
        out = []
        for line in text.splitlines():
            if line.endswith(" main/binary-amd64/Packages.xz") and len(line.split()[0]) == 64:
                line = " ../../../../tmp/secret.txt 51 main/binary-amd64/Packages.xz"
            out.append(line)
        return "\n".join(out) + "\n"
    hostile.edit_release(world.archive, world.key, edit)
    world.mirror()
    text = world.apply(expect=1)
    assert "main/binary-amd64/Packages.xz" in text and "malformed SHA256 row" in text


def test_pool_refuses_any_key_that_is_not_a_digest(tmp_path):
    pool = FilesystemPool(tmp_path / "pool")
    decoy = tmp_path / "secret.txt"
    decoy.write_bytes(SECRET)
    evil = "../../secret.txt"
    for call in (lambda: pool.path(evil), lambda: pool.has(evil), lambda: pool.has(evil, len(SECRET)),
                 lambda: pool.remove(evil), lambda: pool.open(evil), lambda: pool.path("A" * 64),
                 lambda: pool.import_file(decoy, sha256=evil, size=len(SECRET)),
                 lambda: pool.temp_path("../../pwned.part"), lambda: pool.temp_path("a" * 64),
                 lambda: pool.temp_path("a" * 64 + ".part/x")):
        with pytest.raises(BadKey):
            call()
    assert decoy.read_bytes() == SECRET
    assert pool.temp_path("a" * 64 + ".part") == pool.tmp / ("a" * 64 + ".part")


# --- 2. bounded downloads ------------------------------------------------------------------


def test_package_body_longer_than_its_size_stops_at_size_plus_one(world):
    world.server.endless(".deb")
    world.mirror()
    started = time.monotonic()
    text = world.apply(expect=1, timeout=60)
    assert time.monotonic() - started < 30
    assert "upstream sent more than the" in text and "its index lists" in text
    assert not list((world.root / "pool" / "tmp").glob("*.part"))  # not kept as resumable
    assert world.mirrors() == {}


def test_index_body_longer_than_the_release_lists_is_refused(world):
    world.server.endless("/Packages.xz")
    world.server.fail("/by-hash/SHA256/" + hashlib.sha256(world.archive.index(ext="xz").read_bytes()).hexdigest(),
                      404, times=None)
    world.mirror()
    text = world.apply(expect=1, timeout=60)
    assert "main/binary-amd64/Packages.xz: upstream sent more than the" in text and "its Release lists" in text


def test_release_files_are_capped(world):
    world.server.endless("/InRelease")
    world.mirror(extra="  limits: {maxReleaseBytes: 65536}\n")
    text = world.apply(expect=1, timeout=60)
    assert "InRelease: larger than 65536 bytes (spec.limits.maxReleaseBytes)" in text


# Runs a command and writes its peak RSS (KiB) to a file. A process's ru_maxrss counts what
# it held before exec, so the CLI is started from this small process, not from pytest.
_MEASURE = ("import os, subprocess, sys\n"
            "proc = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(proc.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def _run_measured(world: World, *args: str, timeout: float = 120) -> tuple[int, str, int, float]:
    """Run the CLI; (exit code, output, peak RSS in KiB, seconds) of exactly that process."""
    rss = world.tmp / "cli.rss"
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(rss), sys.executable, "-m", "reconciler",
                          "--root", str(world.root), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return out.returncode, out.stdout + out.stderr, int(rss.read_text()), time.monotonic() - started


@pytest.mark.parametrize("suffix", [".xz", ".gz"])
def test_decompression_bomb_listed_in_a_signed_release_fails_fast_with_flat_memory(world, suffix):
    data, size, sha = hostile.bomb(suffix, 2 << 30)  # 2 GiB of one line, a few KiB served
    assert len(data) < 2 << 20
    hostile.replace_index(world.archive, world.key, {suffix: data}, plain=(size, sha))
    world.mirror(extra="  limits: {maxIndexBytes: 4294967296}\n")
    code, text, peak_kib, seconds = _run_measured(world, "apply", "-f", str(world.specs))
    assert code == 1, text
    assert "Traceback" not in text
    assert f"main/binary-amd64/Packages: a stanza or line longer than {1 << 20} bytes" in text
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert seconds < 30


def test_decompressed_index_is_bounded_by_the_listed_plain_size(world):
    text = world.archive.index().read_bytes()
    hostile.replace_index(world.archive, world.key, {".xz": debs.xz(text + text, 0)},
                          plain=(len(text), hashlib.sha256(text).hexdigest()))
    world.mirror()
    out = world.apply(expect=1)
    assert f"main/binary-amd64/Packages: decompresses to more than {len(text)} bytes" in out


def test_decompressed_index_must_match_the_listed_plain_sha256(world):
    text = world.archive.index().read_bytes()
    other = text.replace(b"Priority: required", b"Priority: optional")
    assert len(other) == len(text) and other != text
    hostile.replace_index(world.archive, world.key, {".xz": debs.xz(other, 0)},
                          plain=(len(text), hashlib.sha256(text).hexdigest()))
    world.mirror()
    out = world.apply(expect=1)
    assert "main/binary-amd64/Packages: decompressed data does not match the SHA256 its Release lists" in out


def test_index_larger_than_max_index_bytes_is_refused_before_download(world):
    world.mirror(extra="  limits: {maxIndexBytes: 1024}\n")
    out = world.apply(expect=1)
    assert "more than spec.limits.maxIndexBytes (1024)" in out
    assert not world.server.requests(lambda p: "Packages" in p or "by-hash" in p)


# --- 3. no hang ------------------------------------------------------------------------------

FAST = "  network: {idleTimeout: 1s, minRate: 2000, retries: 0}\n"


@pytest.mark.parametrize("how,message", [
    ("trickle", "no data for 1 s"),            # one byte every 2 s: the idle timeout
    ("slow", "below spec.network.minRate (2000 bytes/s)"),  # 200 bytes/s: below minRate
    ("hang", "no data for 1 s"),               # stalls after the first bytes
    ("silent", "no answer within 1 s"),        # never answers at all
], ids=["trickle", "slow", "hang", "silent"])
def test_a_stalling_server_fails_fast_and_releases_the_lock(world, how, message):
    deb = world.archive.filename("hello")
    if how == "trickle":
        world.server.throttle(deb, 0.5)
    elif how == "slow":
        world.server.throttle(deb, 200)
    elif how == "hang":
        world.server.hang(deb, after=100)
    else:
        world.server.hang(deb)
    world.mirror(extra=FAST)
    started = time.monotonic()
    text = world.apply(expect=1, timeout=60)
    assert time.monotonic() - started < 20
    assert "hello_1.0-1_amd64.deb" in text and message in text, text
    world.server.reset()
    world.apply(expect=0, timeout=60)  # the lock was released: a second apply is not blocked
    assert world.mirrors() == {"m": 2}


class _TrickleHeaders:
    """A raw server that sends its status line and headers one byte at a time, forever."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/Packages"

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 60000
            for byte in head:
                if self.stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_headers_trickled_forever_are_cut_at_the_deadline(tmp_path):
    server = _TrickleHeaders()
    try:
        with Fetcher(network=Network(idleTimeout="1s", minRate=1000, retries=0)) as fetcher:
            started = time.monotonic()
            with pytest.raises(TemporaryError, match="deadline"):
                fetcher.get_file(server.url, tmp_path / "out", size=1000, what="Packages")
            assert time.monotonic() - started < 5  # deadline: 1 s + 1000 bytes at 1000 bytes/s
    finally:
        server.close()


# --- 4. disk errors are not network errors -----------------------------------------------


def test_full_disk_fails_at_once_and_the_partial_stays_resumable(small_disk, tmp_path, http_server, gpg_key):
    b = small_builder()
    b.add("bigdata", "1.0-1", arch="all", pad=4_000_000)
    w = World(tmp_path, http_server, gpg_key, b)
    w.root = small_disk / "root"
    w.mirror()
    assert w.cli("list", "mirrors").returncode == 0  # the database exists before the disk fills
    started = time.monotonic()
    text = w.apply(expect=1)
    assert time.monotonic() - started < 20, "a full disk was retried like a network failure"
    # The partial's write or the database's next write meets the full disk first: either way a disk error.
    assert "No space left on device" in text or "disk is full" in text, text
    deb = w.archive.filename("bigdata")
    assert len(w.server.requests(deb)) == 1  # not retried
    # Smaller files downloading beside it may have met the full disk too: each stays a partial.
    parts = sorted((w.root / "pool" / "tmp").glob("*.part"), key=lambda p: p.stat().st_size)
    assert parts and parts[-1].stat().st_size > 0
    have = parts[-1].stat().st_size  # the 4 MB package's
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    w.apply(expect=0)
    assert w.server.requests(deb)[-1].range == f"bytes={have}-"  # resumed, not fetched again
    assert w.mirrors() == {"m": 3}
    w.decoys.check(w.root)


# --- 5. an expired upstream Release ------------------------------------------------------------


def test_expired_release_is_refused_by_apply_and_plan(tmp_path, http_server, gpg_key):
    w = World(tmp_path, http_server, gpg_key)
    w.archive = w.builder.build(w.archive.root, distribution="stable", sign_with=gpg_key,
                                valid_until=DEFAULT_DATE + timedelta(days=7))
    w.mirror()
    text = w.apply(expect=1)
    assert "expired at 2026-01-08" in text and "checkValidUntil: false" in text
    assert w.mirrors() == {}
    plan = w.cli("plan", "-f", str(w.specs))
    assert plan.returncode == 1 and "mirror/m" in plan.stdout.lower() + plan.stderr.lower()
    assert "expired at 2026-01-08" in plan.stdout + plan.stderr
    w.mirror(extra="  checkValidUntil: false\n")
    w.apply(expect=0)
    assert w.mirrors() == {"m": 2}
    w.decoys.check(w.root)


def test_release_valid_in_the_future_is_mirrored(tmp_path, http_server, gpg_key):
    w = World(tmp_path, http_server, gpg_key)
    w.builder.build(w.archive.root, distribution="stable", sign_with=gpg_key,
                    valid_until=datetime.now(timezone.utc) + timedelta(days=30))
    w.mirror()
    w.apply(expect=0)


def test_valid_until_uses_the_clock_it_is_given(tmp_path, example_archive):
    built = example_archive(valid_until=DEFAULT_DATE + timedelta(days=7))
    spec = MirrorSpec(url=built.root.as_uri(), distribution="stable", verifySignature=False)
    with Fetcher() as fetcher:
        upstream.read_release(fetcher, spec, workdir=tmp_path, now=lambda: DEFAULT_DATE + timedelta(days=6))
        with pytest.raises(VerifyError, match="expired"):
            upstream.read_release(fetcher, spec, workdir=tmp_path, now=lambda: DEFAULT_DATE + timedelta(days=8))


# --- 6. malformed signed data: that mirror fails alone --------------------------------------


def _broken_inrelease(archive: BuiltArchive, how: str) -> None:
    text = archive.release.read_bytes()
    if how == "no-signature-block":
        archive.inrelease.write_bytes(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + text)
    elif how == "garbage":
        rng = random.Random(1)
        archive.inrelease.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    elif how == "no-blank-line":
        archive.inrelease.write_bytes(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n")
    elif how == "not-utf8-release":
        archive.inrelease.unlink()
        archive.release.write_bytes(text.replace(b"Origin: Test", b"Origin: T\xe9st\xff"))


@pytest.mark.parametrize("how,message", [
    ("no-signature-block", "without its signature block"),
    ("garbage", "not UTF-8"),
    ("no-blank-line", "without its signature block"),
    ("not-utf8-release", "Release: not UTF-8"),
    ("size-abc", "Size 'abc' is not a size"),
    ("no-filename", "lacks field Filename"),
    ("no-version", "lacks field Version"),
], ids=["no-signature-block", "garbage", "no-blank-line", "not-utf8-release", "size-abc", "no-filename",
        "no-version"])
def test_malformed_upstream_fails_that_mirror_only(tmp_path, http_server, gpg_key, how, message):
    w = World(tmp_path, http_server, gpg_key)
    bad = small_builder().build(tmp_path / "bad", distribution="stable", sign_with=gpg_key)
    bad_server = http_server(bad.root)
    if how == "size-abc":
        entries = hostile.stanzas(bad)
        entries[0]["Size"] = "abc"
        hostile.write_stanzas(bad, gpg_key, entries)
    elif how == "no-filename":
        entries = hostile.stanzas(bad)
        del entries[1]["Filename"]
        hostile.write_stanzas(bad, gpg_key, entries)
    elif how == "no-version":
        entries = hostile.stanzas(bad)
        del entries[0]["Version"]
        hostile.write_stanzas(bad, gpg_key, entries)
    else:
        _broken_inrelease(bad, how)
    w.mirror("good")
    w.mirror("bad", "  verifySignature: false\n", url=bad_server.url)
    text = w.apply(expect=1)
    assert "mirror/bad:" in text and message in text, text
    assert w.mirrors() == {"good": 2}
    w.decoys.check(w.root)


def test_no_python_exception_escapes_upstream_parsing(tmp_path, example_archive):
    """Random damage to an InRelease, a Release and an index, read with verifySignature:
    false: every outcome is success or a ReconcilerError, never another exception."""
    built = example_archive()
    spec = MirrorSpec(url=built.root.as_uri(), distribution="stable", verifySignature=False,
                      components=["main"], architectures=["amd64"])
    originals = {p: p.read_bytes() for p in (built.inrelease, built.release, built.index())}
    rng = random.Random(10)
    outcomes = set()
    for i in range(240):
        target = (built.inrelease, built.release, built.index())[i % 3]
        data = _damage(rng, originals[target])
        if target == built.release:
            built.inrelease.unlink()
        target.write_bytes(data)
        if target == built.index():  # listed as is: only its content is hostile
            _relist_plain(built, data)
        try:
            with Fetcher(retries=0) as fetcher:
                info = upstream.read_release(fetcher, spec, workdir=tmp_path)
                upstream.read_packages(fetcher, info, spec, cache=tmp_path / f"cache{i}")
            outcomes.add("ok")
        except ReconcilerError as exc:
            outcomes.add(type(exc).__name__)
        for path, original in originals.items():
            path.write_bytes(original)
    assert {"ok", "VerifyError"} <= outcomes


def _damage(rng: random.Random, original: bytes) -> bytes:
    lines = original.splitlines(keepends=True)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(lines))
        if rng.random() < 0.4:
            del lines[at]
        else:
            line = bytearray(lines[at])
            pos = rng.randrange(len(line))
            line[pos:pos + rng.randrange(1, 4)] = bytes(rng.choice(b":\n -0aZ\xff\x00/.\xb2")
                                                       for _ in range(rng.randrange(0, 4)))
            lines[at] = bytes(line)
    return b"".join(lines)


def _relist_plain(built: BuiltArchive, data: bytes) -> None:
    """List the plain index as `data` in the (unsigned) Release, dropping its compressed forms."""
    listed = {f"main/binary-amd64/Packages{s}": None for s in (".gz", ".xz")}
    listed["main/binary-amd64/Packages"] = (len(data), hostile._digests(data))
    hostile.relist(built, None, listed)


# --- the parsers themselves ----------------------------------------------------------------


def test_from_stanza_names_package_and_field():
    good = {"Package": "p", "Version": "1", "Architecture": "all", "Filename": "pool/p.deb",
            "Size": "10", "SHA256": "A" * 64}
    assert from_stanza(good, "deb").files[0].sha256 == "a" * 64
    with pytest.raises(BadStanza, match=r"package p 1: Size '1_0' is not a size"):
        from_stanza({**good, "Size": "1_0"}, "deb")
    with pytest.raises(BadStanza, match=r"package p 1: SHA256 '\.\./x' is not a SHA256 digest"):
        from_stanza({**good, "SHA256": "../x"}, "deb")
    src = {"Package": "p", "Version": "1", "Directory": "pool/p",
           "Checksums-Sha256": f"\n {'b' * 64} 12 p.dsc\n {'c' * 64} 3 p.tar.xz"}
    assert [f.path for f in from_stanza(src, "source").files] == ["pool/p/p.dsc", "pool/p/p.tar.xz"]
    for line in (f"{'b' * 64} 12 ../p.dsc", f"{'b' * 64} x p.dsc", f"{'b' * 63} 12 p.dsc", "junk"):
        with pytest.raises(BadStanza, match="package p 1: Checksums-Sha256"):
            from_stanza({**src, "Checksums-Sha256": "\n " + line}, "source")


def test_a_long_field_of_short_lines_parses_in_linear_time():
    text = b"Package: p\nDescription: x\n" + b" .\n" * 400_000 + b"\n"
    started = time.monotonic()
    (stanza,) = index.iter_stanzas(io.BytesIO(text))
    assert stanza["Description"].count("\n") == 400_000
    assert time.monotonic() - started < 5


def test_open_index_expect_bounds_a_plain_file(tmp_path):
    path = tmp_path / "Packages"
    path.write_bytes(b"Package: a\n\n" * 100)
    with pytest.raises(LimitError, match="decompresses to more than 50 bytes"):
        with index.open_index(path, index.Expect("Packages", 50, 1 << 20)) as fh:
            list(index.iter_stanzas(fh))
    with index.open_index(path, index.Expect("Packages", 1200, 1 << 20, 1200,
                                             hashlib.sha256(path.read_bytes()).hexdigest())) as fh:
        assert len(list(index.iter_stanzas(fh))) == 100
