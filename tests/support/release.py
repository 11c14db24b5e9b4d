"""Index files and the Release file of a test archive: what `apt-ftparchive` would write.

Kept apart from the package model in `archive.py` because this part is format only:
given rendered stanzas per index directory, write `Packages`/`Sources` in each
compression, the per-directory `Release`, the `by-hash` copies, and the top `Release`
whose checksums everything else is verified against. Like Debian's own archive, the
top `Release` lists the checksum of the uncompressed index even when the plain file is
not shipped (clients verify what they decompress).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tests.support import debs

HASHES = (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"))


@dataclass(frozen=True)
class Entry:
    """One file the top Release lists: path relative to the Release file's directory."""

    path: str
    size: int
    md5: str
    sha1: str
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> "Entry":
        return cls(path, len(data), hashlib.md5(data).hexdigest(),
                   hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest())


def rfc2822(when: datetime) -> str:
    """The Date format apt parses: always UTC, English names, no locale."""
    when = when.astimezone(timezone.utc)
    days, months = "Mon Tue Wed Thu Fri Sat Sun".split(), \
        "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return (f"{days[when.weekday()]}, {when.day:02d} {months[when.month - 1]} {when.year} "
            f"{when:%H:%M:%S} UTC")


def clear_dist(dist_dir: Path, *, flat: bool) -> None:
    """Remove the previous build's indexes but keep `by-hash` copies, as Debian keeps
    superseded by-hash files for a while so clients mid-update still find them.

    A flat directory also holds package files, so there only index names go.
    """
    if not dist_dir.exists():
        return
    if flat:
        for name in ("Release", "InRelease", "Release.gpg", "Packages", "Packages.gz",
                     "Packages.xz", "Sources", "Sources.gz", "Sources.xz"):
            (dist_dir / name).unlink(missing_ok=True)
        return
    for path in sorted(dist_dir.rglob("*"), reverse=True):
        if "by-hash" in path.relative_to(dist_dir).parts:
            continue
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink()


def write_index(dist_dir: Path, rel_dir: str, name: str, stanzas: Iterable[str], *,
                compressions: tuple[str, ...], plain: bool, fast: bool,
                by_hash: bool) -> list[Entry]:
    """Write one index (`Packages` or `Sources`) in every compression; return its entries.

    The plain entry is always returned, shipped or not (see the module docstring).
    """
    directory = dist_dir / rel_dir if rel_dir else dist_dir
    directory.mkdir(parents=True, exist_ok=True)
    text = "\n".join(stanzas).encode()
    prefix = f"{rel_dir}/" if rel_dir else ""
    variants = {name: text}
    for ext in compressions:
        variants[f"{name}.{ext}"] = _compress(ext, text, fast=fast)
    entries = []
    for fname, data in variants.items():
        entries.append(Entry.of(prefix + fname, data))
        if fname == name and not plain:
            continue
        (directory / fname).write_bytes(data)
        if by_hash:
            _write_by_hash(directory, data)
    return entries


def _compress(ext: str, data: bytes, *, fast: bool) -> bytes:
    if ext == "gz":
        return debs.gz(data, 1 if fast else 9)
    if ext == "xz":
        return debs.xz(data, 0 if fast else 6)
    raise ValueError(f"unsupported compression {ext!r}")


def _write_by_hash(directory: Path, data: bytes) -> None:
    target = directory / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def write_sub_release(dist_dir: Path, rel_dir: str, fields: Mapping[str, str]) -> Entry:
    """The small per-directory Release (`main/binary-amd64/Release`) Debian ships."""
    data = debs.format_stanza(fields).encode()
    (dist_dir / rel_dir / "Release").write_bytes(data)
    return Entry.of(f"{rel_dir}/Release", data)


def release_text(fields: Mapping[str, str | None], entries: Iterable[Entry]) -> str:
    """Top Release: the header fields, then MD5Sum/SHA1/SHA256 blocks sorted by path."""
    entries = sorted(entries, key=lambda e: e.path)
    width = max((len(str(e.size)) for e in entries), default=1)
    blocks = {label: "".join(f"\n {getattr(e, attr)} {e.size:>{width}} {e.path}"
                             for e in entries) for label, attr in HASHES}
    return debs.format_stanza({**fields, **blocks})


def sign(release: Path, key) -> None:
    """InRelease (clearsigned) and Release.gpg (detached, armored) next to `release`;
    with no key, remove both so the archive is honestly unsigned."""
    inrelease, detached = release.with_name("InRelease"), release.with_name("Release.gpg")
    if key is None:
        inrelease.unlink(missing_ok=True)
        detached.unlink(missing_ok=True)
        return
    key.sign_clear(release, inrelease)
    key.sign_detached(release, detached)
