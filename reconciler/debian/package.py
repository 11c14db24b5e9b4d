"""One package as an index describes it: a binary (.deb/.udeb) or a source package.

The stanza is kept whole (field order and all) because publishing writes it back out;
the handful of values the rest of the code needs are lifted into attributes once.

Upstream values are data: `from_stanza` is where they enter, so it checks every value
that later names a file or bounds a download. A SHA256 is exactly 64 hex digits (it
becomes a pool file name), SHA512 128 and MD5 32 when present, a Size a plain decimal
integer no larger than `MAX_FILE_SIZE`, a source file name one path component. Anything
else is a `BadStanza` naming the package and the field; a compiled `fullmatch` per value
keeps this cheap on a 60,000-package index.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

PACKAGE_TYPES = ("deb", "udeb", "source")
MAX_FILE_SIZE = 1 << 40  # 1 TiB: far above any real package file, far below anything absurd

_HEX = {"SHA256": re.compile(r"[0-9a-fA-F]{64}"), "SHA512": re.compile(r"[0-9a-fA-F]{128}"),
        "MD5": re.compile(r"[0-9a-fA-F]{32}"), "SHA1": re.compile(r"[0-9a-fA-F]{40}")}
_SIZE = re.compile(r"[0-9]{1,13}")
# Optional digest fields of a Packages stanza, and the form each must have.
_BINARY_DIGESTS = {"MD5sum": "MD5", "SHA1": "SHA1", "SHA512": "SHA512"}
# Checksum blocks of a Sources stanza: field -> form; Checksums-Sha256 is required.
_SOURCE_DIGESTS = {"Files": "MD5", "Checksums-Sha1": "SHA1", "Checksums-Sha256": "SHA256",
                   "Checksums-Sha512": "SHA512"}


class BadStanza(ValueError):
    """An index stanza with a missing or malformed value; the message names package and field."""


@dataclass(frozen=True)
class PackageFile:
    """A file a package consists of, as the index names it (path relative to the archive root)."""

    path: str
    size: int
    sha256: str

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class Package:
    type: str  # "deb" | "udeb" | "source"
    name: str
    version: str
    arch: str  # "source" for source packages
    fields: dict[str, str] = field(compare=False, hash=False)
    files: tuple[PackageFile, ...] = ()

    @property
    def ref(self) -> str:
        """aptly-style reference `name_version_arch`, what queries and diffs print."""
        return f"{self.name}_{self.version}_{self.arch}"

    @property
    def key(self) -> str:
        """Identity of one distinct package file: two archives serving the same bytes agree."""
        digest = self.files[0].sha256 if self.files else ""
        return f"{self.type}:{self.ref}:{digest}"

    @property
    def source_name(self) -> str:
        if self.type == "source":
            return self.name
        src = self.fields.get("Source", "").strip()
        return src.split(" ", 1)[0] if src else self.name

    @property
    def source_version(self) -> str:
        if self.type == "source":
            return self.version
        src = self.fields.get("Source", "").strip()
        if "(" in src and src.endswith(")"):
            return src[src.index("(") + 1 : -1].strip()
        return self.version

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


def digest(value: str, form: str, *, what: str) -> str:
    """`value` as a lowercase hex digest of `form` (SHA256, SHA512, MD5, SHA1), or BadStanza."""
    if not _HEX[form].fullmatch(value):
        raise BadStanza(f"{what}: {form} {_shown(value)} is not a {form} digest")
    return value.lower()


def size(value: str, *, what: str) -> int:
    """`value` as a file size: plain decimal digits, at most MAX_FILE_SIZE; else BadStanza."""
    if not _SIZE.fullmatch(value) or int(value) > MAX_FILE_SIZE:
        raise BadStanza(f"{what}: Size {_shown(value)} is not a size in bytes (0 to {MAX_FILE_SIZE})")
    return int(value)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _checksum_lines(text: str, form: str, *, what: str) -> list[tuple[str, int, str]]:
    """Rows `DIGEST SIZE NAME` of a Sources checksum block; a malformed row is BadStanza."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or "/" in parts[2] or parts[2] in (".", ".."):
            raise BadStanza(f"{what}: malformed checksum line {_shown(line.strip())}")
        rows.append((digest(parts[0], form, what=what), size(parts[1], what=what), parts[2]))
    return rows


def from_stanza(fields: dict[str, str], type: str) -> Package:
    """A Package from an index stanza: Packages (deb/udeb) or Sources (source).

    Raises BadStanza (a ValueError) when a required field is missing or any value that
    names a file or bounds a download is malformed.
    """
    try:
        name, version = fields["Package"], fields["Version"]
        what = f"package {name} {version}"
        if type == "source":
            return _source(fields, name, version, what)
        for key, form in _BINARY_DIGESTS.items():
            if key in fields:
                digest(fields[key], form, what=f"{what}: {key}")
        sha256 = digest(fields["SHA256"], "SHA256", what=what)
        files = (PackageFile(fields["Filename"], size(fields["Size"], what=what), sha256),)
        return Package(type, name, version, fields["Architecture"], fields, files)
    except KeyError as exc:
        raise BadStanza(f"stanza of {fields.get('Package', '?')} lacks field {exc.args[0]}") from None


def _source(fields: dict[str, str], name: str, version: str, what: str) -> Package:
    rows = {key: _checksum_lines(fields[key], form, what=f"{what}: {key}")
            for key, form in _SOURCE_DIGESTS.items() if key in fields or key == "Checksums-Sha256"}
    sha256 = rows["Checksums-Sha256"]
    if not sha256:
        raise BadStanza(f"{what}: Checksums-Sha256 lists no file")
    directory = fields.get("Directory", ".").strip("/")
    files = tuple(PackageFile(f"{directory}/{fname}", n, sha) for sha, n, fname in sha256)
    return Package("source", name, version, "source", fields, files)
