"""Checking a published APT tree the way a client would trust it, top down.

`verify_tree` walks the chain apt walks: the signature on InRelease and Release.gpg
(against the publish's public key), Release against InRelease, every index against
its Release entry (size, SHA-256, and its by-hash copy when Acquire-By-Hash is on),
and every package file against its index stanza. It returns problems instead of
raising, so `reconciler verify` can report all the drift in one run. `verify_staged`
runs the same checks on a generation a publish has staged and not switched in yet:
a publish checks itself before the switch, so a tree that would not verify is never
served (and the database, which records a publish only after its switch, never
disagrees with what is served).

Package files are hashed streaming, and each inode once: a tree is mostly hard links
(pool, `all` packages listed in every architecture, by-hash copies of indexes), and
hashing 40 GB of pool twice would double the cost of a check.
"""

from __future__ import annotations

import codecs
import hashlib
import lzma
import os
import posixpath
import re
import tempfile
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from reconciler import gpg, tree
from reconciler.debian.index import ReleaseInfo, iter_stanzas, open_index, parse_release
from reconciler.errors import VerifyError
from reconciler.plan import PublishedTree
from reconciler.pool import file_sha256

INDEX_NAMES = ("Packages", "Sources")
COMPRESSIONS = ("", ".xz", ".gz")  # the order in which an index is read for its stanzas


class _Hasher:
    """SHA-256 of files, each inode hashed once per check."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = file_sha256(path)[0]
        return self._cache[key]


def verify_tree(
    publish_root: Path, prefix: str, distribution: str, *, keyring: Path | None, deep: bool = True
) -> list[str]:
    """Every problem found in the published prefix/distribution; an empty list means sound.

    Without `keyring` the signatures are not checked, only that InRelease says what
    Release says. `deep=False` checks package files by existence and size only:
    enough right after a publish that hard-linked them from the verified pool, where
    hashing a Debian-sized pool again would cost minutes.
    """
    target = tree.dist_dir(publish_root, prefix, distribution)
    return _verify_dist(tree.prefix_dir(publish_root, prefix), target, target, keyring=keyring, deep=deep,
                        label=f"dists/{distribution}")


def verify_staged(publish_root: Path, prefix: str, distribution: str, stage: Path, *, keyring: Path | None,
                  deep: bool = False) -> list[str]:
    """Every problem of a generation staged in `stage` and not switched in yet: what a
    client would find once it is.

    Release, its signatures and the plain-named indexes are read from the staging
    directory; the by-hash copies (already linked under the tree's own names, which
    no earlier generation can hold other bytes under) and the package files (the
    prefix's pool/, linked before anything switches) from the tree itself."""
    target = tree.dist_dir(publish_root, prefix, distribution)
    return _verify_dist(tree.prefix_dir(publish_root, prefix), stage, target, keyring=keyring, deep=deep,
                        label=f"dists/{distribution} (staged)")


def _verify_dist(root: Path, dist: Path, hashed: Path, *, keyring: Path | None, deep: bool,
                 label: str) -> list[str]:
    """Check the Release and indexes under `dist`, their by-hash copies under `hashed`,
    and the package files under `root`."""
    try:
        release = (dist / "Release").read_bytes()
    except FileNotFoundError:
        return [f"{label}/Release: missing"]
    problems = _check_signatures(dist, release, keyring, label)
    info = parse_release(release.decode("utf-8", "replace"))
    problems += _check_validity(info, label)
    hasher = _Hasher()
    found, sound = _check_indexes(dist, hashed, info, hasher, label)
    problems += found
    problems += _check_packages(root, dist, sound, hasher if deep else None, label)
    return problems


# ---------------------------------------------------------------------------
# Release, InRelease, Release.gpg


def _check_signatures(target: Path, release: bytes, keyring: Path | None, label: str) -> list[str]:
    inrelease = _read(target / "InRelease")
    detached = _read(target / "Release.gpg")
    if keyring is None:
        if inrelease is not None and _unverified_body(inrelease) != release:
            return [f"{label}/InRelease: does not say what {label}/Release says"]
        return []
    if inrelease is None and detached is None:
        return [f"{label}: not signed (neither InRelease nor Release.gpg exists)"]
    problems = []
    with tempfile.TemporaryDirectory(prefix="reconciler-verify-") as work:
        if inrelease is None:
            problems.append(f"{label}/InRelease: missing")
        else:
            problems += _verify(f"{label}/InRelease", release, Path(work), keyring, inrelease=inrelease)
        if detached is None:
            problems.append(f"{label}/Release.gpg: missing")
        else:
            problems += _verify(f"{label}/Release.gpg", release, Path(work), keyring, release_gpg=detached)
    return problems


def _verify(what: str, release: bytes, work: Path, keyring: Path, *, inrelease=None, release_gpg=None) -> list[str]:
    try:
        signed = gpg.verify_release(
            inrelease=inrelease,
            release=release if release_gpg is not None else None,
            release_gpg=release_gpg,
            keyrings=[keyring],
            workdir=work,
        )
    except VerifyError as exc:
        return [f"{what}: {exc}"]
    if signed != release:
        return [f"{what}: the signed text differs from Release"]
    return []


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unverified_body(inrelease: bytes) -> bytes:
    """The text of a clearsigned message, for comparing only: it is never trusted."""
    lines = inrelease.split(b"\n")
    try:
        start = lines.index(b"", 1) + 1
        end = lines.index(b"-----BEGIN PGP SIGNATURE-----", start)
    except ValueError:
        return b""
    body = [line[2:] if line.startswith(b"- ") else line for line in lines[start:end]]
    return b"\n".join(body) + b"\n"


def _check_validity(info: ReleaseInfo, label: str) -> list[str]:
    text = info.get("Valid-Until")
    if not text:
        return []
    until = _date(text)
    if until is None:
        return [f"{label}/Release: Valid-Until {text!r} is not a date"]
    if until < datetime.now(timezone.utc):
        return [f"{label}/Release: expired (Valid-Until {text}); publish again to renew it"]
    return []


def _date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def published(publish_root: Path, prefix: str, distribution: str) -> PublishedTree:
    """A published tree as it is on disk now, for plans, the publish task's repair check
    and metrics: its Release, whether the signatures are there, and which of the files
    the Release lists are missing or differ from it (the indexes are hashed: ~30 ms for
    a 20,000-package tree; the package files are not, `verify` does that)."""
    target = tree.dist_dir(publish_root, prefix, distribution)
    try:
        data = (target / "Release").read_bytes()
    except OSError:
        return PublishedTree(None)
    info = parse_release(data.decode("utf-8", "replace"))
    text = info.get("Valid-Until")
    hasher = _Hasher()
    damaged = tuple(path for path, (size, digests) in sorted(info.files.items())
                    if _check_file(target / path, path, size, digests.get("sha256"), hasher))
    signatures = (target / "InRelease").exists() and (target / "Release.gpg").exists()
    return PublishedTree(hashlib.sha256(data).hexdigest(), _date(text) if text else None, damaged, signatures)


# ---------------------------------------------------------------------------
# Index files


def _check_indexes(target: Path, hashed: Path, info: ReleaseInfo, hasher: _Hasher,
                   label: str) -> tuple[list[str], set[str]]:
    """Problems with the files Release lists (under `target`, their by-hash copies under
    `hashed`), and the set of those that match it."""
    problems, sound = [], set()
    for path, (size, digests) in sorted(info.files.items()):
        found = _check_file(target / path, f"{label}/{path}", size, digests.get("sha256"), hasher)
        problems += found
        if not found:
            sound.add(path)
        if info.acquire_by_hash:
            problems += _check_by_hash(hashed, path, size, digests, hasher, label)
    return problems, sound


def _check_by_hash(target: Path, path: str, size: int, digests: dict[str, str], hasher: _Hasher,
                   label: str) -> list[str]:
    """apt asks for the strongest digest listed, so each listed SHA-2 needs its by-hash copy."""
    problems = []
    for name, algo in (("SHA256", "sha256"), ("SHA512", "sha512")):
        if algo in digests:
            hashed = f"{posixpath.dirname(path)}/by-hash/{name}/{digests[algo]}"
            found = _check_file(target / hashed, f"{label}/{hashed}", size, digests.get("sha256"), hasher)
            problems += [f"{p} (by-hash copy of {path})" for p in found]
    return problems


def _check_file(path: Path, name: str, size: int | None, sha256: str | None, hasher: _Hasher | None,
                *, needed_by: str = "") -> list[str]:
    why = f" (needed by {needed_by})" if needed_by else ""
    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return [f"{name}: missing{why}"]
    if size is not None and actual != size:
        return [f"{name}: size {actual}, expected {size}{why}"]
    if sha256 and hasher is not None and hasher.sha256(path) != sha256.lower():  # (a shallow check has none)
        return [f"{name}: SHA256 {hasher.sha256(path)}, expected {sha256}{why}"]
    return []


def _readable_indexes(target: Path, sound: set[str]) -> Iterator[tuple[str, Path]]:
    """One form of each Packages/Sources index that matched the Release (plain if it did)."""
    bases = {
        p.rsplit(".", 1)[0] if p.endswith((".gz", ".xz")) else p
        for p in sound
        if posixpath.basename(p).split(".")[0] in INDEX_NAMES
    }
    for base in sorted(bases):
        suffix = next(s for s in COMPRESSIONS if base + s in sound)
        yield base, target / (base + suffix)


# ---------------------------------------------------------------------------
# Package files


def _check_packages(root: Path, target: Path, sound: set[str], hasher: _Hasher | None, label: str) -> list[str]:
    problems: list[str] = []
    checked: set[str] = set()
    for base, path in _readable_indexes(target, sound):
        try:
            with open_index(path) as fh:
                binary = posixpath.basename(base) == "Packages"
                for stanza in _binary_stanzas(fh, quick=(root, checked) if hasher is None else None) \
                        if binary else iter_stanzas(fh):
                    for rel, size, sha256, who in _stanza_files(stanza, base):
                        if rel not in checked:
                            checked.add(rel)
                            problems += _check_pool_file(root, rel, size, sha256, who, hasher)
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:  # damaged stream
            problems.append(f"{label}/{base}: unreadable ({exc})")
    return problems


# The fields of a Packages stanza this check reads. A continuation line starts with
# white space, so a match at the start of a line is always a field of its own.
_BINARY_FIELDS = re.compile(r"^(Package|Version|Architecture|Filename|Size|SHA256):[ \t]*([^\n]*)", re.M)
_SEPARATOR = re.compile(r"\n[ \t\r]*\n")
_BLOCK = 1 << 20


def _binary_stanzas(fh, *, quick: tuple[Path, set[str]] | None = None) -> Iterator[dict[str, str]]:
    """The fields above of each stanza of a Packages file, read a block at a time.

    Regular expressions over whole stanzas instead of a Python loop per line: this is
    what a check after every publish spends its time on (65,000 stanzas in Debian's
    main), and it holds one block, not the index. With `quick` (root, checked), a
    stanza whose Filename is under root at its Size is only added to checked, not yielded.
    """
    for part in _stanza_texts(fh):
        if quick is not None:
            root, checked = quick
            if _present(root, {"Filename": _field(part, "Filename"), "Size": _field(part, "Size")}, checked):
                continue
        yield {k: v.rstrip() for k, v in _BINARY_FIELDS.findall(part)}


def _field(stanza: str, name: str) -> str:
    """One field's first line, found with str.find (C speed); "" when absent."""
    start = stanza.find(f"\n{name}:")
    if start < 0:
        if not stanza.startswith(f"{name}:"):
            return ""
        start = -1
    start += len(name) + 2
    end = stanza.find("\n", start)
    return stanza[start:end if end >= 0 else None].strip()


def _stanza_texts(fh) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    tail = ""
    while block := fh.read(_BLOCK):
        parts = _SEPARATOR.split(tail + decoder.decode(block))
        tail = parts.pop()  # perhaps cut short by the block's end: completed by the next
        yield from (part for part in parts if part.strip())
    tail += decoder.decode(b"", final=True)
    if tail.strip():
        yield tail


def _present(root: Path, stanza: dict[str, str], checked: set[str]) -> bool:
    """The common case of a shallow check, cheaply: the Filename is there, at its Size."""
    rel, size = stanza.get("Filename", ""), stanza.get("Size", "")
    if rel in checked or not size.isdigit() or not _inside(rel):
        return rel in checked
    try:
        if os.stat(os.path.join(root, rel)).st_size != int(size):
            return False
    except OSError:
        return False
    checked.add(rel)
    return True


def _stanza_files(stanza: dict[str, str], base: str) -> Iterator[tuple[str, int | None, str | None, str]]:
    """(path, size, sha256, package) of each file a Packages or Sources stanza names."""
    name, version = stanza.get("Package", "?"), stanza.get("Version", "?")
    if posixpath.basename(base) == "Packages":
        size = stanza.get("Size", "")
        who = f"{name}_{version}_{stanza.get('Architecture', '?')}"
        yield stanza.get("Filename", ""), int(size) if size.isdigit() else None, stanza.get("SHA256"), who
        return
    directory = stanza.get("Directory", "").strip("/")
    rows = stanza.get("Checksums-Sha256") or stanza.get("Files", "")
    has_sha256 = "Checksums-Sha256" in stanza
    for line in rows.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            yield f"{directory}/{parts[2]}", int(parts[1]), parts[0] if has_sha256 else None, f"{name}_{version}_source"


def _check_pool_file(root: Path, rel: str, size, sha256, who: str, hasher: _Hasher | None) -> list[str]:
    if not _inside(rel):
        return [f"{rel!r}: path leaves the tree (listed for {who})"]
    return _check_file(Path(root, rel), rel, size, sha256 if hasher else None, hasher, needed_by=who)


def _inside(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\x00" not in rel and ".." not in parts and "" not in parts
