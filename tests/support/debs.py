"""Build real Debian package files (.deb, .udeb, source packages) from Python, fast.

Calling `dpkg-deb --build` per package costs a process and a temp tree; writing the
`ar`/tar members in memory is about a hundred times faster, which is what lets a test
archive of 20,000 packages build in seconds. Every timestamp, owner and compressor
header is fixed, so the same declaration gives byte-identical files on every run:
tests can compare checksums across builds, and a "next day" archive that keeps a
package keeps its exact bytes, as a real archive does.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

# 2025-01-01T00:00:00Z: any fixed instant works; this one is plausible in listings.
MTIME = 1735689600
MAINTAINER = "Test Maintainer <maint@example.invalid>"


@dataclass(frozen=True)
class Blob:
    """One built file: its name and bytes, with the checksums indexes list."""

    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @cached_property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# -- version and stanza helpers -------------------------------------------------------


def strip_epoch(version: str) -> str:
    """File names never carry the epoch (`1:2.0-1` is shipped as `..._2.0-1_...`)."""
    return version.split(":", 1)[1] if ":" in version else version


def upstream_version(version: str) -> str:
    """The upstream part: no epoch, no Debian revision (what the .orig tarball is named by)."""
    bare = strip_epoch(version)
    return bare.rsplit("-", 1)[0] if "-" in bare else bare


def format_stanza(fields: Mapping[str, str | None]) -> str:
    """Render one deb822 paragraph; multi-line values keep their continuation lines.

    A value of None or "" leaves the field out, so callers can pass optional fields
    unconditionally. Continuation lines must already start with a space.
    """
    lines = [f"{key}: {value}" if value[:1] != "\n" else f"{key}:{value}"
             for key, value in fields.items() if value]
    return "\n".join(lines) + "\n"


def deb_filename(name: str, version: str, arch: str, *, udeb: bool = False) -> str:
    return f"{name}_{strip_epoch(version)}_{arch}.{'udeb' if udeb else 'deb'}"


def filler(seed: str, size: int) -> bytes:
    """Incompressible, deterministic bytes: padding that really makes a file bigger."""
    return random.Random(seed).randbytes(size) if size > 0 else b""


# -- containers -----------------------------------------------------------------------


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def _tar(files: Mapping[str, bytes], *, prefix: str = "./") -> bytes:
    """An uncompressed ustar archive with explicit parent directories, root-owned.

    Names are `prefix` + the given relative path; dpkg lists exactly these entries.
    Headers are written by hand: `tarfile` costs ~0.1 ms per member, which is most of
    the time of a 20,000-package build.
    """
    out: list[bytes] = []
    seen: set[str] = set()
    if prefix:
        out.append(_header(prefix, 0, directory=True))
    for rel in sorted(files):
        for parent in _parents(rel):
            if parent not in seen:
                seen.add(parent)
                out.append(_header(prefix + parent, 0, directory=True))
        data = files[rel]
        out += [_header(prefix + rel, len(data), executable="/bin/" in rel), data,
                b"\0" * (-len(data) % 512)]
    out.append(b"\0" * 1024)
    return b"".join(out)


@functools.lru_cache(maxsize=4096)  # directory headers repeat in every package
def _header(name: str, size: int, *, directory: bool = False, executable: bool = False) -> bytes:
    """One 512-byte ustar header (owner root:root, mtime MTIME)."""
    raw = name.encode()
    prefix = b""
    if len(raw) > 100:  # ustar splits long names at a slash into prefix + name
        cut = raw.rindex(b"/", 0, 156)
        prefix, raw = raw[:cut], raw[cut + 1:]
    mode = 0o755 if directory or executable else 0o644
    head = b"".join([
        raw.ljust(100, b"\0"), b"%07o\0" % mode, b"0000000\0", b"0000000\0",
        b"%011o\0" % size, b"%011o\0" % MTIME, b" " * 8, b"5" if directory else b"0",
        b"\0" * 100, b"ustar\x0000", b"root".ljust(32, b"\0"), b"root".ljust(32, b"\0"),
        b"0000000\0", b"0000000\0", prefix.ljust(155, b"\0"), b"\0" * 12])
    checksum = b"%06o\0 " % sum(head)
    return head[:148] + checksum + head[156:]


def gz(data: bytes, level: int = 1) -> bytes:
    """gzip with mtime 0 and no file name in the header: identical bytes every run."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def xz(data: bytes, preset: int = 1) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=preset)


def ar(members: list[tuple[str, bytes]]) -> bytes:
    """A System V `ar` archive, the outer container of a .deb (as dpkg-deb writes it)."""
    out = [b"!<arch>\n"]
    for name, data in members:
        header = (f"{name:<16}{MTIME:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n")
        out += [header.encode("ascii"), data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


# -- binary packages ------------------------------------------------------------------


def default_files(name: str, version: str, *, pad: int = 0) -> dict[str, bytes]:
    """A small, plausible payload: a README and copyright file, optional padding."""
    doc = f"usr/share/doc/{name}/"
    files = {
        doc + "README": f"{name} {version}\n\nBuilt for reconciler tests.\n".encode(),
        doc + "copyright": b"Format: https://www.debian.org/doc/packaging-manuals/"
                           b"copyright-format/1.0/\nLicense: Apache-2.0\n",
    }
    if pad > 0:
        files[f"usr/share/{name}/padding.bin"] = filler(f"{name}/{version}", pad)
    return files


def installed_size(files: Mapping[str, bytes]) -> int:
    """Installed-Size in KiB, as dpkg-gencontrol rounds it (each file up to 1 KiB)."""
    return sum(-(-len(data) // 1024) for data in files.values()) or 1


def build_deb(control: Mapping[str, str | None], files: Mapping[str, bytes], *,
              control_extra: Mapping[str, bytes] | None = None, level: int = 1) -> bytes:
    """The bytes of a .deb/.udeb whose `control` member is `control` and payload `files`.

    `files` maps paths relative to the root (`usr/share/doc/x/README`) to contents; an
    `md5sums` control member is added the way dpkg-deb packages carry one.
    """
    md5sums = "".join(f"{hashlib.md5(data).hexdigest()}  {path}\n"
                      for path, data in sorted(files.items()))
    members = {"control": format_stanza(control).encode(), "md5sums": md5sums.encode()}
    members.update(control_extra or {})
    return ar([
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", gz(_tar(members), level)),
        ("data.tar.gz", gz(_tar(files), level)),
    ])


# -- source packages ------------------------------------------------------------------


@dataclass(frozen=True)
class SourceBuild:
    """A built source package: the .dsc and the files it lists, plus its index fields."""

    dsc: Blob
    files: tuple[Blob, ...]
    fields: dict[str, str]  # the .dsc paragraph, which Sources stanzas start from

    @property
    def all_files(self) -> tuple[Blob, ...]:
        return (self.dsc, *self.files)


def _debian_dir(name: str, version: str, fields: Mapping[str, str], fmt: str) -> dict[str, bytes]:
    control = {"Source": name, "Maintainer": fields["Maintainer"], "Section": fields.get("Section"),
               "Priority": fields.get("Priority"), "Build-Depends": fields.get("Build-Depends")}
    binaries = [b.strip() for b in fields["Binary"].split(",")]
    stanzas = [format_stanza(control)] + [
        format_stanza({"Package": b, "Architecture": fields["Architecture"],
                       "Description": f"{b} from {name}"}) for b in binaries]
    changelog = (f"{name} ({version}) unstable; urgency=medium\n\n  * Test build.\n\n"
                 f" -- {fields['Maintainer']}  Wed, 01 Jan 2025 00:00:00 +0000\n")
    return {"debian/control": "\n".join(stanzas).encode(), "debian/changelog": changelog.encode(),
            "debian/rules": b"#!/usr/bin/make -f\n%:\n\tdh $@\n",
            "debian/source/format": f"{fmt}\n".encode()}


def _checksum_fields(blobs: tuple[Blob, ...]) -> dict[str, str]:
    def block(attr: str) -> str:
        return "".join(f"\n {getattr(b, attr)} {b.size} {b.name}" for b in blobs)
    return {"Checksums-Sha1": block("sha1"), "Checksums-Sha256": block("sha256"),
            "Files": block("md5")}


def _source_tarballs(name: str, version: str, fields: Mapping[str, str], *,
                     pad: int) -> tuple[Blob, ...]:
    """(native): one NAME_VER.tar.xz; (quilt): NAME_UP.orig.tar.gz + NAME_VER.debian.tar.xz."""
    bare, up = strip_epoch(version), upstream_version(version)
    upstream = {"README": f"{name} {up}\n".encode()}
    if pad > 0:
        upstream["padding.bin"] = filler(f"{name}/{version}/src", pad)
    debian = _debian_dir(name, version, fields, fields["Format"])
    if fields["Format"] == "3.0 (native)":
        return (Blob(f"{name}_{bare}.tar.xz",
                     xz(_tar({**upstream, **debian}, prefix=f"{name}-{bare}/"))),)
    return (Blob(f"{name}_{up}.orig.tar.gz", gz(_tar(upstream, prefix=f"{name}-{up}/"))),
            Blob(f"{name}_{bare}.debian.tar.xz", xz(_tar(debian, prefix=""))))


def build_source(name: str, version: str, *, binaries: list[str], architecture: str = "any",
                 maintainer: str = MAINTAINER, section: str = "misc", priority: str = "optional",
                 build_depends: str = "debhelper-compat (= 13)", pad: int = 0,
                 udebs: tuple[str, ...] | list[str] = ()) -> SourceBuild:
    """A Format 3.0 source package: (quilt) with orig + debian tarballs when the version
    has a Debian revision, (native) with a single tarball when it has none."""
    bare = strip_epoch(version)
    fmt = "3.0 (quilt)" if "-" in bare else "3.0 (native)"
    fields = {"Format": fmt, "Source": name, "Binary": ", ".join(binaries),
              "Architecture": architecture, "Version": version, "Maintainer": maintainer,
              "Standards-Version": "4.6.2", "Build-Depends": build_depends,
              "Section": section, "Priority": priority}
    blobs = _source_tarballs(name, version, fields, pad=pad)
    package_list = "".join(
        f"\n {b} {'udeb' if b in udebs else 'deb'} {section} {priority} arch={architecture}"
        for b in binaries)
    dsc_fields = {**fields, "Package-List": package_list, **_checksum_fields(blobs)}
    dsc_fields.pop("Section"), dsc_fields.pop("Priority")
    dsc = Blob(f"{name}_{bare}.dsc", format_stanza(dsc_fields).encode())
    return SourceBuild(dsc=dsc, files=blobs, fields={**dsc_fields, "Section": section,
                                                     "Priority": priority})
