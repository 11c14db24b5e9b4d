"""Validly signed, hostile archives: change what an archive serves, then make it vouch for it.

A signature proves who wrote a Release, not that its content is harmless. Trust tests
need content that is hostile but signed by the archive's own key, so every helper here
ends the same way: the files it changed are listed again in the top `Release` (size,
MD5, SHA1, SHA256 rewritten; `by-hash` copies added) and `InRelease` and `Release.gpg`
are signed afresh.

- `stanzas` / `write_stanzas`: read an index's stanzas, edit them as dicts, write them
  back in every form the archive ships (`Packages`, `.gz`, `.xz`).
- `replace_index`: put arbitrary bytes in place of an index's forms (a bomb) and list
  the plain form as given.
- `edit_release`: rewrite the Release text itself (Valid-Until, malformed rows), re-signed.
- `bomb`: a tiny `.gz` or `.xz` that decompresses to gigabytes of one line.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
from collections.abc import Callable
from pathlib import Path

from tests.support import debs
from tests.support.archive import BuiltArchive
from tests.support.gpgkeys import GpgKey

SECTIONS = (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"))


def _rel(archive: BuiltArchive, path: Path) -> str:
    return path.relative_to(archive.dist_dir).as_posix()


def stanzas(archive: BuiltArchive, component: str = "main", arch: str = "amd64", *,
            kind: str = "binary") -> list[dict[str, str]]:
    """The stanzas of one index as ordered dicts (values as written, continuation lines kept)."""
    text = _plain_text(archive, component, arch, kind)
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def _plain_text(archive: BuiltArchive, component: str, arch: str, kind: str) -> str:
    plain = archive.index(component, arch, kind=kind)
    if plain.exists():
        return plain.read_text()
    return gzip.decompress(archive.index(component, arch, kind=kind, ext="gz").read_bytes()).decode()


def write_stanzas(archive: BuiltArchive, key: GpgKey, entries: list[dict[str, str]],
                  component: str = "main", arch: str = "amd64", *, kind: str = "binary") -> None:
    """Write `entries` as the index in every form the archive ships, list them, re-sign."""
    text = "\n".join(debs.format_stanza(e) for e in entries).encode()
    forms = {"": text, ".gz": debs.gz(text, 1), ".xz": debs.xz(text, 0)}
    replace_index(archive, key, forms, component, arch, kind=kind)


def replace_index(archive: BuiltArchive, key: GpgKey, forms: dict[str, bytes],
                  component: str = "main", arch: str = "amd64", *, kind: str = "binary",
                  plain: tuple[int, str] | None = None) -> None:
    """Replace an index's forms (suffix "", ".gz", ".xz" -> bytes; forms not given are
    deleted), list each in the Release and re-sign. `plain` lists the uncompressed form
    as (size, sha256) without writing it, as Debian lists a plain index it does not ship."""
    base = archive.index(component, arch, kind=kind)
    listed: dict[str, tuple[int, dict[str, str]] | None] = {}
    for suffix in ("", ".gz", ".xz"):
        path = base.with_name(base.name + suffix)
        path.unlink(missing_ok=True)
        listed[_rel(archive, path)] = None
        if suffix in forms:
            data = forms[suffix]
            path.write_bytes(data)
            _by_hash(path, data)
            listed[_rel(archive, path)] = (len(data), _digests(data))
    if plain is not None:
        listed[_rel(archive, base)] = (plain[0], {"sha256": plain[1]})
    relist(archive, key, listed)


def _digests(data: bytes) -> dict[str, str]:
    return {algo: hashlib.new(algo, data).hexdigest() for _, algo in SECTIONS}


def _by_hash(path: Path, data: bytes) -> None:
    target = path.parent / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest()
    if target.parent.is_dir():
        target.write_bytes(data)


def relist(archive: BuiltArchive, key: GpgKey,
           listed: dict[str, tuple[int, dict[str, str]] | None]) -> None:
    """Rewrite the Release rows of `listed` paths (size, {algo: hex}; None: no rows); a
    section an entry has no digest for loses its row. Then re-sign."""
    def edit(text: str) -> str:
        out, section = [], None
        for line in text.splitlines():
            if not line.startswith(" "):
                if section is not None:
                    out += _rows(section, listed)
                section = next((algo for name, algo in SECTIONS if line == f"{name}:"), None)
                out.append(line)
                continue
            if section is not None and line.split()[-1] in listed:
                continue
            out.append(line)
        if section is not None:
            out += _rows(section, listed)
        return "\n".join(out) + "\n"
    edit_release(archive, key, edit)


def _rows(algo: str, listed: dict[str, tuple[int, dict[str, str]] | None]) -> list[str]:
    return [f" {entry[1][algo]} {entry[0]} {path}" for path, entry in listed.items()
            if entry is not None and algo in entry[1]]


def edit_release(archive: BuiltArchive, key: GpgKey | None, edit: Callable[[str], str]) -> None:
    """Rewrite the Release text through `edit` and sign it again with `key` (None: unsigned)."""
    archive.release.write_text(edit(archive.release.read_text()))
    archive.sign(key)


_BLOCK = 16 << 20


@functools.lru_cache(maxsize=None)
def bomb(suffix: str, nbytes: int) -> tuple[bytes, int, str]:
    """(compressed bytes, plain size, plain sha256) of `nbytes` (a multiple of 16 MiB) of
    one endless line of "A": a few KiB of concatenated gzip members or xz streams."""
    block = b"A" * _BLOCK
    member = debs.gz(block, 9) if suffix == ".gz" else lzma.compress(block, preset=9)
    count = nbytes // _BLOCK
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)
    return member * count, count * _BLOCK, digest.hexdigest()
