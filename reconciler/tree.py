"""Writing a published APT tree (`dists/`, `pool/`) so that clients never see half of it.

Layout under PUBLISH_ROOT/PREFIX, as apt and Debian's own archive expect it:

    pool/COMPONENT/p/source/FILE             hard links into the content-addressed pool
    dists/DIST/COMPONENT/binary-ARCH/Packages{,.gz,.xz}, Release
    dists/DIST/COMPONENT/debian-installer/binary-ARCH/Packages{,.gz,.xz}   (udebs)
    dists/DIST/COMPONENT/source/Sources{,.gz,.xz}, Release
    dists/DIST/.../by-hash/SHA256/HEX        every index again, under its digests
    dists/DIST/.../by-hash/SHA512/HEX
    dists/DIST/Release, InRelease, Release.gpg

The atomic switch. apt reads a repository in a fixed order: InRelease (or Release
and Release.gpg) first, then the indexes it lists, then the package files those
indexes name. So a publish writes in the reverse order and switches with the file
apt reads first:

1. new pool links (old ones stay, so the old indexes still resolve);
2. every index, complete, into a staging directory beside the tree, hashed while
   it is written; with Acquire-By-Hash each is also hard-linked to its
   `by-hash/SHA512/HEX` and `by-hash/SHA256/HEX` names, names no earlier
   generation can hold other bytes under; then the caller's check of the staged
   generation (treeverify.verify_staged), which refuses the switch if it fails;
3. the plain-named indexes renamed into place (`os.replace`, atomic per file);
4. Release.gpg, Release and, last, InRelease renamed into place.

A client that fetched the old InRelease before step 4 asks for indexes by-hash
(Acquire-By-Hash: yes) and finds the old generation's files: a publish keeps the
previous generation's by-hash files and deletes only older ones, so a client that
is one publish behind is always served consistent bytes. A client that fetches
InRelease after step 4 sees only new files, which were all in place before it.

Without Acquire-By-Hash apt fetches indexes by their plain names, and a rename of
Packages and a rename of InRelease cannot be one operation: between steps 3 and 4
an old InRelease can meet a new Packages and apt reports a hash mismatch (and
succeeds when run again). Step 3 renames files that are already complete, so the
window is a few renames long; turn on Acquire-By-Hash to close it.

Pool files that no publish uses any more are removed by `cleanup_pool`, which the
caller runs with the paths of *every* publish under the prefix (distributions
share a prefix's pool), holding the locks of all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

from reconciler import linkworker
from reconciler.debian.index import (
    COMPRESSED_FORMS,
    IndexWriter,
    WrittenFile,
    format_release,
    format_stanza,
    parse_release,
    rfc2822,
    write_small,
)
from reconciler.debian.package import Package, PackageFile
from reconciler.errors import Conflict, PermanentError, PoolDamaged
from reconciler.gpg import Signer
from reconciler.pool import LocalPackagePool, file_sha256
from reconciler.spec import Compression

SIGNATURE_FILES = ("Release.gpg", "Release", "InRelease")  # the order they switch in
STAGING_PREFIX = ".staging-"
# apt fetches by-hash under the strongest digest the Release lists (SHA512 here) and
# falls back to the plain name when that is missing, which would reopen the window
# by-hash closes; other clients (aptly, reprepro) ask for SHA256. Both are hard links.
BY_HASH = {"SHA256": "sha256", "SHA512": "sha512"}

_SAFE_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._~-]*(/[A-Za-z0-9][A-Za-z0-9+._~-]*)*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._~-]*$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9+._~%:-]+$")


@dataclass(frozen=True)
class TreeRequest:
    publish_root: Path  # e.g. ROOT/public
    prefix: str  # "." or "debian" or "a/b"
    distribution: str
    # component -> its packages (deb, udeb, source mixed). A list is sorted here; any
    # other iterable is read once, as a stream, and must come in `order_key` order.
    components: Mapping[str, Iterable[Package]]
    architectures: list[str]  # binary architectures to publish (not "all"/"source")
    origin: str | None
    label: str | None
    suite: str | None  # default: the distribution
    codename: str | None  # default: the distribution
    valid_for: timedelta | None  # -> Valid-Until
    acquire_by_hash: bool
    date: datetime | None = None  # default now (UTC)
    description: str | None = None
    # Package types present in any component: each of "udeb" and "source" gives every
    # component its debian-installer or source index. Read from lists when not given;
    # a streaming caller must say.
    types: Collection[str] | None = None
    # compressed index forms and their levels, {".gz": 3, ".xz": 0}
    compression: Mapping[str, int] = field(default_factory=lambda: Compression().levels())
    # sha256s -> {sha256: (size, mtime_ns, inode)} recorded when each pool file was
    # verified: a file whose identity differs is hashed again before it is linked.
    # None: link without checking (a pool with no such record).
    recorded: Callable[[Sequence[str]], Mapping[str, tuple]] | None = None


@dataclass(frozen=True)
class IndexEntry:
    """One file listed in Release: path relative to dists/DIST, size, digests by hashlib name."""

    path: str
    size: int
    digests: dict[str, str]


@dataclass(frozen=True)
class TreeResult:
    dist_dir: Path
    files: list[IndexEntry]
    counts: dict[str, int]  # index directory ("main/binary-amd64", "main/source") -> stanzas
    release_sha256: str
    pool_paths: frozenset[str]  # relative to the prefix directory, "pool/main/h/hello/..."
    signed: bool
    # pool files whose identity had changed, hashed again and found sound: their
    # identity now, {sha256: (size, mtime_ns, inode)}, for the caller to record
    confirmed: dict[str, tuple[int, int, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Paths


def prefix_dir(publish_root: Path, prefix: str) -> Path:
    if prefix not in (".", "") and not _SAFE_PATH.match(prefix):
        raise PermanentError(f"publish prefix {prefix!r} is not a safe relative path")
    return Path(publish_root) if prefix in (".", "") else Path(publish_root) / prefix


def dist_dir(publish_root: Path, prefix: str, distribution: str) -> Path:
    if not _SAFE_PATH.match(distribution):
        raise PermanentError(f"distribution {distribution!r} is not a safe relative path")
    return prefix_dir(publish_root, prefix) / "dists" / distribution


@functools.lru_cache(maxsize=1 << 16)  # asked twice per package, and by every package of a source
def pool_dir(component: str, source: str) -> str:
    """`pool/main/h/hello`, `pool/main/libf/libfoo`: Debian's split by the source's initial."""
    if not _SAFE_NAME.match(source):
        raise PermanentError(f"source package name {source!r} is not safe in a path")
    initial = source[:4] if source.startswith("lib") and len(source) > 3 else source[:1]
    return f"pool/{component}/{initial}/{source}"


def package_paths(component: str, package: Package) -> list[tuple[str, PackageFile]]:
    """Where each file of `package` lives in a published tree, relative to the prefix dir."""
    directory = pool_dir(component, package.source_name)
    out = []
    for pf in package.files:
        if not _SAFE_FILE.match(pf.basename) or pf.basename in (".", ".."):
            raise PermanentError(f"{package.ref}: file name {pf.basename!r} is not safe in a path")
        out.append((f"{directory}/{pf.basename}", pf))
    return out


def order_key(package: Package) -> tuple[str, str, str, str]:
    """The order an index lists packages in (deterministic output)."""
    return package.name, package.version, package.arch, package.type


# ---------------------------------------------------------------------------
# Publishing


def publish_tree(req: TreeRequest, pool: LocalPackagePool, signer: Signer | None, *,
                 check: Callable[[Path], None] | None = None) -> TreeResult:
    """Write (or switch) the tree for one prefix/distribution; see the module docstring.

    One pass over the packages: each is linked into the pool (by a child process, so
    the link and mkdir system calls run on another CPU while stanzas are formatted)
    and written to its indexes. Nothing is switched until every link is in place.
    `check` is given the staging directory once the generation is complete (pool
    links and by-hash copies in place, nothing switched yet); if it raises, nothing
    is switched, the by-hash copies this publish added are removed again, and the
    previous generation stays served as it was.
    """
    _check_request(req)
    root = prefix_dir(req.publish_root, req.prefix)
    target = dist_dir(req.publish_root, req.prefix, req.distribution)
    target.mkdir(parents=True, exist_ok=True)
    _remove_staging(target)
    stage = Path(tempfile.mkdtemp(dir=target, prefix=STAGING_PREFIX))
    linker = _Linker(root, pool, req.recorded)
    try:
        files, counts = _write_indexes(req, stage, linker)
        linker.close()
        release = _release_text(req, files).encode()
        (stage / "Release").write_bytes(release)
        if signer is not None:
            inrelease, detached = signer.sign(release)
            (stage / "InRelease").write_bytes(inrelease)
            (stage / "Release.gpg").write_bytes(detached)
        previous = _release_digests(target / "Release")
        added = _link_by_hash(stage, target, files) if req.acquire_by_hash else []
        if check is not None:
            try:
                check(stage)
            except BaseException:
                for path in added:
                    path.unlink(missing_ok=True)
                raise
        _switch(stage, target, files)
    finally:
        linker.stop()
        shutil.rmtree(stage, ignore_errors=True)
    current = {f.path: f.digests for f in files}
    _prune_dist(target, current, previous, signed=signer is not None)
    return TreeResult(
        dist_dir=target,
        files=files,
        counts=counts,
        release_sha256=_sha256(release),
        pool_paths=frozenset(linker.claims),
        signed=signer is not None,
        confirmed=linker.confirmed,
    )


def _check_request(req: TreeRequest) -> None:
    for comp in req.components:
        if not _SAFE_PATH.match(comp) or comp.split("/")[-1] in ("by-hash", "source"):
            raise PermanentError(f"component name {comp!r} is not safe in a path")
    for arch in req.architectures:
        if not _SAFE_NAME.match(arch) or arch in ("all", "source"):
            raise PermanentError(f"architecture {arch!r} cannot be published as binary-{arch}")
    if not req.architectures:
        raise PermanentError("a publish needs at least one binary architecture")
    for suffix, level in req.compression.items():
        if level not in COMPRESSED_FORMS.get(suffix, ()):
            raise PermanentError(f"index compression {suffix} level {level} is not supported")


@dataclass
class _Worker:
    """The link worker child and its files: its stdin takes the batches, `report` (a
    temporary file) collects one JSON line per link, `stderr` what it said on failure."""

    proc: subprocess.Popen[bytes]
    stdin: IO[bytes]
    report: IO[bytes]
    stderr: IO[bytes]


class _Linker:
    """Hard-links package files into PREFIX/pool through a child process, in batches.

    `add` runs in the publishing thread: it checks the paths and refuses two different
    files under one name (a Conflict) at once, then queues the link for the child
    (`reconciler.linkworker`), which makes it on the other CPU, each with the identity
    the pool file had when it was verified (`recorded`): the child links a file only
    while that identity holds, one stat per file. `close` waits for the child and
    settles what it reported (a file whose identity changed: hashed again, linked if
    sound, quarantined if not; a different file already in place; a file missing from
    the pool; another filesystem). Missing and damaged files are collected and raised
    together as one PoolDamaged, before anything is switched. `claims` (pool path ->
    sha256, size, package) is the one thing that grows with the publish, a short
    record per file.
    """

    BATCH = 256
    PIPE_SIZE = 1 << 20  # triples in flight, so the publishing thread rarely waits on the child

    def __init__(self, root: Path, pool: LocalPackagePool,
                 recorded: Callable[[Sequence[str]], Mapping[str, tuple]] | None = None):
        self.root = str(root)
        self.pool = pool
        self.recorded = recorded
        self.claims: dict[str, tuple[str, int, str]] = {}
        self.confirmed: dict[str, tuple[int, int, int]] = {}
        self.damaged: dict[str, tuple[str, str]] = {}  # sha256 -> (pool path, what is wrong with it)
        self._batch: list[tuple[str, str, str]] = []  # (sha256, src, dest)
        self._worker: _Worker | None = None  # started with the first batch

    def add(self, component: str, pkg: Package) -> None:
        if pkg.type != "source" and not pkg.files:
            raise PermanentError(f"{pkg.ref}: binary package without a file")
        for path, pf in package_paths(component, pkg):
            seen = self.claims.get(path)
            if seen is None:
                self.claims[path] = (pf.sha256, pf.size, pkg.ref)
                self._batch.append((pf.sha256, str(self.pool.path(pf.sha256)), f"{self.root}/{path}"))
            elif seen[0] != pf.sha256:
                raise Conflict(
                    f"{path}: claimed by {seen[2]} (size {seen[1]}, sha256 {seen[0]}) "
                    f"and by {pkg.ref} (size {pf.size}, sha256 {pf.sha256})"
                )
        if len(self._batch) >= self.BATCH:
            self._send()

    def _encoded(self) -> bytes:
        """The batch as the child reads it; each file with its recorded identity
        ("-": none asked for, "": none recorded, so it is hashed before it is linked)."""
        known = self.recorded([sha for sha, _s, _d in self._batch]) if self.recorded else None
        out = []
        for sha, src, dest in self._batch:
            if known is None:
                ident = "-"
            else:
                size, mtime, ino = known.get(sha, (None, None, None))
                ident = f"{size}:{mtime}:{ino}" if mtime is not None and ino is not None else ""
            out.append(os.fsencode(f"{src}\0{dest}\0{ident}\0"))
        return b"".join(out)

    def _send(self) -> None:
        if not self._batch:
            return
        worker = self._worker or self._start()
        try:
            worker.stdin.write(self._encoded())
            worker.stdin.flush()
        except BrokenPipeError:
            self._settle(worker)  # the child stopped early: its report says why
            raise PermanentError("pool links: the link worker stopped early") from None
        self._batch = []

    def _start(self) -> _Worker:
        report, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "reconciler.linkworker"], stdin=subprocess.PIPE,
                                stdout=report, stderr=stderr)
        assert proc.stdin is not None  # stdin=PIPE
        self._worker = _Worker(proc, proc.stdin, report, stderr)
        try:
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, self.PIPE_SIZE)
        except OSError:
            pass  # above the system's limit: a smaller pipe works, with more waiting
        return self._worker

    def close(self) -> None:
        """Wait until every link is made; raise the first thing that went wrong."""
        self._send()
        if self._worker is not None:
            self._worker.stdin.close()
            self._worker.proc.wait()
            self._settle(self._worker)

    def _settle(self, worker: _Worker) -> None:
        worker.proc.wait()
        worker.report.seek(0)
        for line in worker.report:
            report = json.loads(line)
            rel = os.path.relpath(report["dest"], self.root)
            if report["kind"] == "error":
                raise OSError(report["errno"], report["message"], report["dest"])
            sha256, size, ref = self.claims[rel]
            self._finish(report["kind"], report["src"], report["dest"], PackageFile(rel, size, sha256), ref, rel)
        if worker.proc.returncode != 0:
            worker.stderr.seek(0)
            detail = worker.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise PermanentError(f"pool links: the link worker failed ({worker.proc.returncode}): {' '.join(detail)}")
        if self.damaged:
            shown = "; ".join(f"{rel} ({sha[:12]}): {why}" for sha, (rel, why) in list(self.damaged.items())[:10])
            raise PoolDamaged(f"{len(self.damaged)} pool file(s) cannot be published: {shown}",
                              {sha: rel for sha, (rel, _why) in self.damaged.items()},
                              {sha: why for sha, (_rel, why) in self.damaged.items()})

    def _finish(self, kind: str, src: str, dest: str, pf: PackageFile, ref: str, rel: str) -> None:
        """Finish a link the worker reported: hash a file whose identity changed, copy
        across filesystems, accept an identical file already in place, replace a
        damaged one, refuse a different one."""
        if kind == "nosrc":
            self.damaged[pf.sha256] = (rel, f"missing from the pool (needed by {ref})")
            return
        if kind == "changed":
            if not self._still_sound(src, pf):
                where = self.pool.quarantine(pf.sha256)
                self.damaged[pf.sha256] = (rel, f"the pool file no longer matches its SHA-256 (needed by {ref}); "
                                                f"moved to {where}")
                return
            again = linkworker.link(src, dest)  # None: linked now
            if again is None:
                return
            kind = again
        if kind == "cross" and _copy_in(src, dest):
            return
        if _holds(dest, src, pf):
            return
        if self._damaged_copy(dest, pf.sha256):
            _replace_link(src, dest)
            return
        have, size = file_sha256(Path(dest))
        raise Conflict(
            f"{rel}: already holds a different file (size {size}, sha256 {have}); "
            f"{ref} needs size {pf.size}, sha256 {pf.sha256}"
        )

    def _still_sound(self, src: str, pf: PackageFile) -> bool:
        """Hash a pool file whose identity changed; remember its new identity if sound."""
        try:
            st = os.stat(src)
            actual, size = file_sha256(Path(src))
        except FileNotFoundError:
            return False
        if (actual, size) != (pf.sha256, pf.size):
            return False
        self.confirmed[pf.sha256] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return True

    def _damaged_copy(self, dest: str, sha256: str) -> bool:
        """Is `dest` the very inode that was quarantined as a damaged copy of this file?
        (A tree hard-links the pool: an edit in place damaged the tree too.)"""
        st = os.lstat(dest)
        return any(os.path.samestat(st, os.lstat(q)) for q in self.pool.quarantined(sha256))

    def stop(self) -> None:
        """Stop the child if it still runs (the publish failed); close its files."""
        worker = self._worker
        if worker is None:
            return
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
        try:
            worker.stdin.close()
        except BrokenPipeError:  # unsent bytes of a killed child: nothing to deliver
            pass
        worker.report.close()
        worker.stderr.close()


def _replace_link(src: str, dest: str) -> None:
    """Put a link to `src` at `dest` in one rename: a reader sees the old file or the new."""
    tmp = f"{dest}.tmp-relink"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.link(src, tmp)
    os.replace(tmp, dest)


def _copy_in(src: str, dest: str) -> bool:
    """Across filesystems: a copy beside the target, then linked, so the name appears
    only complete. False when something is already there."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.link(tmp, dest)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _holds(dest: str, src: str, pf: PackageFile) -> bool:
    st = os.lstat(dest)
    try:
        if os.path.samestat(st, os.stat(src)):
            return True
    except FileNotFoundError:
        pass
    return st.st_size == pf.size and file_sha256(Path(dest))[0] == pf.sha256


# ---------------------------------------------------------------------------
# Index files


def _write_indexes(req: TreeRequest, stage: Path, linker: _Linker) -> tuple[list[IndexEntry], dict[str, int]]:
    kinds = {"deb"} | ({t for t in _types(req) if t in ("udeb", "source")})
    files: list[IndexEntry] = []
    counts: dict[str, int] = {}
    for comp, packages in req.components.items():
        writers = _open_writers(stage, comp, req.architectures, kinds, req.compression)
        try:
            for pkg, repeated in _ordered(comp, packages):
                linker.add(comp, pkg)  # a repeat too: the same name with other bytes is a Conflict
                if repeated:
                    continue
                stanza = _stanza(comp, pkg)
                for key in _targets(pkg, req.architectures):
                    if key in writers:
                        writers[key].add(stanza)
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        for (_kind, arch), writer in writers.items():
            directory = writer.path.parent
            counts[directory.relative_to(stage).as_posix()] = writer.count
            written = writer.close() + [_dir_release(req, directory, comp, arch)]
            files += [IndexEntry(w.path.relative_to(stage).as_posix(), w.size, w.digests) for w in written]
    files.sort(key=lambda f: f.path)
    return files, counts


def _types(req: TreeRequest) -> Collection[str]:
    if req.types is not None:
        return req.types
    if not all(isinstance(pkgs, Sequence) for pkgs in req.components.values()):
        raise TypeError("TreeRequest.types is required when components are streams")
    return {p.type for pkgs in req.components.values() for p in pkgs}


def _open_writers(stage: Path, comp: str, archs: list[str], kinds: set[str],
                  compression: Mapping[str, int]) -> dict:
    layout = {}
    for arch in archs:
        layout[("deb", arch)] = f"{comp}/binary-{arch}/Packages"
        if "udeb" in kinds:
            layout[("udeb", arch)] = f"{comp}/debian-installer/binary-{arch}/Packages"
    if "source" in kinds:
        layout[("source", "source")] = f"{comp}/source/Sources"
    writers = {}
    try:
        for key, rel in layout.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            writers[key] = IndexWriter(stage / rel, levels=compression)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return writers


def _ordered(component: str, packages: Iterable[Package]) -> Iterator[tuple[Package, bool]]:
    """(package, repeated) in `order_key` order: a list is sorted, a stream is checked.

    `repeated` marks a package whose type and ref the one before it had: an index
    lists each once.
    """
    if isinstance(packages, Sequence):
        packages = sorted(packages, key=order_key)
    last: Package | None = None
    for pkg in packages:
        if last is not None and order_key(pkg) < order_key(last):
            raise PermanentError(f"component {component}: {pkg.ref} came after {last.ref}; "
                                 "a stream of packages must be sorted")
        yield pkg, last is not None and (last.type, last.ref) == (pkg.type, pkg.ref)
        last = pkg


def _targets(pkg: Package, archs: list[str]) -> list[tuple[str, str]]:
    if pkg.type == "source":
        return [("source", "source")]
    return [(pkg.type, a) for a in archs] if pkg.arch == "all" else [(pkg.type, pkg.arch)]


def _stanza(comp: str, pkg: Package) -> dict[str, str]:
    """The package's own stanza with Filename/Directory pointing into this tree's pool."""
    directory = pool_dir(comp, pkg.source_name)
    fields = dict(pkg.fields)
    if pkg.type == "source":
        fields["Directory"] = directory
        return fields if "Package" in fields else {"Package": pkg.name, **fields}
    first = pkg.files[0]
    fields["Filename"] = f"{directory}/{first.basename}"
    fields.setdefault("Size", str(first.size))
    fields.setdefault("SHA256", first.sha256)
    return fields


def _dir_release(req: TreeRequest, directory: Path, comp: str, arch: str) -> WrittenFile:
    """The small per-directory Release (`main/binary-amd64/Release`) apt also accepts."""
    fields = {"Archive": req.suite or req.distribution, "Origin": req.origin, "Label": req.label,
              "Acquire-By-Hash": "yes" if req.acquire_by_hash else None,
              "Component": comp, "Architecture": arch}
    return write_small(directory / "Release", format_stanza({k: v for k, v in fields.items() if v}))


def _release_text(req: TreeRequest, files: list[IndexEntry]) -> str:
    date = req.date or datetime.now(timezone.utc)
    fields = {"Origin": req.origin, "Label": req.label, "Suite": req.suite or req.distribution,
              "Codename": req.codename or req.distribution, "Date": rfc2822(date),
              "Valid-Until": rfc2822(date + req.valid_for) if req.valid_for else None,
              "Architectures": " ".join(dict.fromkeys(req.architectures)),
              "Components": " ".join(req.components),
              "Acquire-By-Hash": "yes" if req.acquire_by_hash else None, "Description": req.description}
    listed = [(f.path, f.size, f.digests) for f in files]
    return format_release({k: v for k, v in fields.items() if v}, listed)


# ---------------------------------------------------------------------------
# Switching and pruning


def _link_by_hash(stage: Path, target: Path, files: list[IndexEntry]) -> list[Path]:
    """Link each staged index under its by-hash names; return the names that are new."""
    added = []
    for f in files:
        for dest in _by_hash_paths(target, f.path, f.digests):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(stage / f.path, dest)
                added.append(dest)
            except FileExistsError:
                # The same name holds the same bytes, unless it was damaged (an edit in
                # place of a published index edits its by-hash links too, even at the same
                # size): replace it atomically with the staged file, which costs no hash
                # and gives a reader either the old inode or the new one.
                tmp = dest.with_name(f".tmp-{dest.name}")
                tmp.unlink(missing_ok=True)
                os.link(stage / f.path, tmp)
                os.replace(tmp, dest)
    return added


def _by_hash_paths(target: Path, rel: str, digests: dict[str, str]) -> list[Path]:
    directory = target / posixpath.dirname(rel) / "by-hash"
    return [directory / name / digests[algo] for name, algo in BY_HASH.items() if algo in digests]


def _switch(stage: Path, target: Path, files: list[IndexEntry]) -> None:
    """Indexes first, then the signature files, InRelease last: each an atomic rename."""
    for f in files:
        dest = target / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / f.path, dest)
    for name in SIGNATURE_FILES:
        if (stage / name).exists():
            os.replace(stage / name, target / name)


def _release_digests(release: Path) -> dict[str, dict[str, str]]:
    """path -> digests of what the current Release lists: the generation clients may still use."""
    try:
        info = parse_release(release.read_text(errors="replace"))
    except FileNotFoundError:
        return {}
    return {path: digests for path, (_, digests) in info.files.items()}


def _prune_dist(target: Path, current: dict, previous: dict, *, signed: bool) -> None:
    """Delete what neither this generation nor (by-hash) the previous one lists."""
    keep_hashed = {
        hashed
        for generation in (current, previous)
        for path, digests in generation.items()
        for hashed in _by_hash_paths(target, path, digests)
    }
    keep_plain = {target / path for path in current}
    if not signed:
        for name in ("InRelease", "Release.gpg"):
            (target / name).unlink(missing_ok=True)
    for child in _own_subdirs(target):
        for dirpath, _dirnames, filenames in os.walk(child, topdown=False):
            for name in filenames:
                path = Path(dirpath) / name
                if path not in keep_plain and path not in keep_hashed:
                    path.unlink()
            _rmdir_if_empty(dirpath)


def _own_subdirs(target: Path) -> list[Path]:
    """Children of dists/DIST except staging dirs and nested distributions (`stable/updates`)."""
    out = []
    for child in sorted(target.iterdir()):
        if not child.is_dir() or child.is_symlink() or child.name.startswith(STAGING_PREFIX):
            continue
        if (child / "Release").exists() or (child / "InRelease").exists():
            continue
        out.append(child)
    return out


def _remove_staging(target: Path) -> None:
    """Staging dirs left by a publish that crashed: never visible to apt, safe to drop.

    The caller's lock on publish/PREFIX/DIST means no other publish of this
    distribution is writing one right now.
    """
    for child in target.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(child, ignore_errors=True)


def _rmdir_if_empty(path: str | Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Removal


def cleanup_pool(publish_root: Path, prefix: str, referenced: Collection[str] | Callable[[str], bool]) -> int:
    """Delete files under PREFIX/pool that `referenced` does not name; return how many.

    `referenced` must cover every publish under the prefix (each one's
    `TreeResult.pool_paths`, or `actions.publish.referenced_paths` from the state),
    and the caller must hold the locks of all of them: distributions share the pool,
    and a concurrent publish could be linking a file right now.
    """
    keep = referenced if callable(referenced) else referenced.__contains__
    pool = os.path.join(str(prefix_dir(publish_root, prefix)), "pool")
    if not os.path.isdir(pool):
        return 0
    removed, empty = _sweep(pool, "pool", keep)
    if empty:
        _rmdir_if_empty(pool)
    return removed


def _sweep(directory: str, rel: str, keep: Callable[[str], bool]) -> tuple[int, bool]:
    """Remove the files below `directory` that `keep` refuses, and directories left empty;
    return (files removed, whether `directory` is empty now). Plain strings and scandir:
    this visits every published file (20,000+) and every source directory."""
    removed, left = 0, 0
    with os.scandir(directory) as entries:
        for entry in entries:
            name = f"{rel}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                count, empty = _sweep(entry.path, name, keep)
                removed += count
                if empty:
                    _rmdir_if_empty(entry.path)
                else:
                    left += 1
            elif keep(name):
                left += 1
            else:
                os.unlink(entry.path)
                removed += 1
    return removed, left == 0


def remove_tree(publish_root: Path, prefix: str, distribution: str) -> bool:
    """Drop dists/DIST: signature files first (apt then sees no repository), then the rest.

    Pool files stay; run `cleanup_pool` afterwards with the remaining publishes' paths.
    Returns False when there was nothing to remove.
    """
    target = dist_dir(publish_root, prefix, distribution)
    if not target.is_dir():
        return False
    for name in reversed(SIGNATURE_FILES):
        (target / name).unlink(missing_ok=True)
    _remove_staging(target)
    for child in _own_subdirs(target):
        shutil.rmtree(child)
    for child in target.iterdir():
        if child.is_file() or child.is_symlink():
            child.unlink()
    dists = prefix_dir(publish_root, prefix) / "dists"
    while target != dists and target.is_dir() and not any(target.iterdir()):
        target.rmdir()
        target = target.parent
    return True
