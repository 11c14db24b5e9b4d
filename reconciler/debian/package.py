"""One package as an index describes it: a binary (.deb/.udeb) or a source package.

The stanza is kept whole (field order and all) because publishing writes it back out;
the handful of values the rest of the code needs are lifted into attributes once.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

PACKAGE_TYPES = ("deb", "udeb", "source")


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


def _checksum_lines(text: str) -> list[tuple[str, int, str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((parts[0].lower(), int(parts[1]), parts[2]))
    return rows


def from_stanza(fields: dict[str, str], type: str) -> Package:
    """A Package from an index stanza: Packages (deb/udeb) or Sources (source).

    Raises ValueError when a field the package cannot do without is missing.
    """
    try:
        name, version = fields["Package"], fields["Version"]
        if type == "source":
            directory = fields.get("Directory", ".").strip("/")
            files = tuple(PackageFile(f"{directory}/{fname}", size, sha)
                          for sha, size, fname in _checksum_lines(fields["Checksums-Sha256"]))
            return Package(type, name, version, "source", fields, files)
        files = (PackageFile(fields["Filename"], int(fields["Size"]), fields["SHA256"].lower()),)
        return Package(type, name, version, fields["Architecture"], fields, files)
    except KeyError as exc:
        raise ValueError(f"stanza of {fields.get('Package', '?')} lacks field {exc.args[0]}") from None
