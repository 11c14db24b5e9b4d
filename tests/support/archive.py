"""A real, signed upstream APT archive built from Python declarations, for tests.

Tests of mirroring must run against something `apt-get` itself accepts, or they prove
nothing. `ArchiveBuilder` holds a declaration (binary and source packages, components,
architectures) and `build()` writes the whole tree the way Debian's archive looks:
`pool/`, `dists/DIST/` with per-architecture `Packages`, `Sources`, the
`debian-installer` indexes, `binary-all` plus `No-Support-for-Architecture-all`,
per-directory `Release`, `by-hash` copies, and a top `Release` signed into `InRelease`
and `Release.gpg`. Flat repositories are built when the distribution ends in `/`.

The builder is a mutable declaration on purpose: a test adds a version, removes a
package, then calls `build()` again on the same directory with a later date, and gets
the "next day" archive (new `dists/`, new pool files, old pool files kept unless
`prune=True`). Hostile archives come from the same path: `override=` changes a
stanza after it is computed (an escaping `Filename`, a wrong `Size`), `corrupt()`
damages a file after indexing, `BuiltArchive.remove_index()` drops an index the
Release still lists, and `sign_with=` takes any key or None.

`python -m tests.support.archive example DEST` builds the bundled example upstream;
`python -m tests.support.archive synthetic N DEST` a large archive for benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from tests.support import debs, layout, release
from tests.support.gpgkeys import GpgKey

DEFAULT_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)

# Order of fields in a Packages stanza, as Debian's archive writes them.
_BINARY_ORDER = ("Package", "Source", "Version", "Installed-Size", "Maintainer", "Architecture",
                 "Essential", "Provides", "Pre-Depends", "Depends", "Recommends", "Suggests",
                 "Breaks", "Conflicts", "Replaces", "Description", "Multi-Arch", "Homepage",
                 "Section", "Priority")


pool_prefix = layout.pool_prefix

@dataclass
class Binary:
    """A binary package declaration; `build()` turns it into a .deb and a stanza.

    `extra` adds control fields (they go into the .deb and the index); `override`
    replaces or (with None) removes fields of the index stanza only, after Filename,
    Size and checksums are computed: that is how tests make hostile indexes.
    """

    name: str
    version: str
    arch: str = "amd64"
    component: str = "main"
    depends: str = ""
    pre_depends: str = ""
    recommends: str = ""
    suggests: str = ""
    conflicts: str = ""
    breaks: str = ""
    replaces: str = ""
    provides: str = ""
    priority: str = "optional"
    section: str = ""
    source: str = ""  # "src" or "src (srcversion)"; empty: same as the package
    description: str = ""
    essential: bool = False
    maintainer: str = debs.MAINTAINER
    pad: int = 0  # bytes of incompressible payload, to make the file bigger
    udeb: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    override: dict[str, str | None] = field(default_factory=dict)

    @property
    def source_name(self) -> str:
        return self.source.split(" ", 1)[0] if self.source else self.name

    @property
    def file_name(self) -> str:
        return debs.deb_filename(self.name, self.version, self.arch, udeb=self.udeb)

    def control(self, files: dict[str, bytes]) -> dict[str, str]:
        """The control paragraph, in archive field order, for these payload files."""
        values = {
            "Package": self.name, "Source": self.source, "Version": self.version,
            "Installed-Size": str(debs.installed_size(files)), "Maintainer": self.maintainer,
            "Architecture": self.arch, "Essential": "yes" if self.essential else "",
            "Provides": self.provides, "Pre-Depends": self.pre_depends, "Depends": self.depends,
            "Recommends": self.recommends, "Suggests": self.suggests, "Breaks": self.breaks,
            "Conflicts": self.conflicts, "Replaces": self.replaces,
            "Description": self.description or _default_description(self.name),
            "Section": self.section or ("debian-installer" if self.udeb else "misc"),
            "Priority": self.priority,
        }
        ordered = {k: values[k] for k in _BINARY_ORDER if values.get(k)}
        return {**ordered, **self.extra}


def _default_description(name: str) -> str:
    return (f"{name} for reconciler tests\n A package built by tests.support.archive so that "
            f"mirrors, snapshots\n and publishing run against a real archive.")


@dataclass
class Source:
    """A source package declaration. `binaries` defaults to the declared binaries whose
    source is this package (or the package's own name when there are none)."""

    name: str
    version: str
    component: str = "main"
    binaries: list[str] | None = None
    architecture: str = ""  # default: "all" when every binary is, else "any"
    section: str = "misc"
    priority: str = "optional"
    build_depends: str = "debhelper-compat (= 13)"
    maintainer: str = debs.MAINTAINER
    pad: int = 0
    override: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    """Everything about one build that is not the package declaration."""

    distribution: str = "testing"
    origin: str = "Test"
    label: str = "Test"
    suite: str | None = None  # default: the distribution
    codename: str | None = None  # default: the distribution
    version: str | None = None
    description: str | None = None
    date: datetime = DEFAULT_DATE
    valid_until: datetime | None = None
    acquire_by_hash: bool = True
    sign_with: GpgKey | None = None
    flat: bool = False  # also implied by a distribution ending in "/"
    compressions: tuple[str, ...] = ("gz", "xz")
    plain: bool = True  # ship uncompressed indexes (Release lists them either way)
    all_index: bool = True  # binary-all indexes + "all" in Architectures, as Debian does
    prune: bool = False  # delete pool files no longer declared
    fast: bool = True  # fast compression of indexes; False: gzip -9 / xz -6 like dak

    @property
    def is_flat(self) -> bool:
        return self.flat or self.distribution.endswith("/")


@dataclass
class BuiltArchive:
    """What `build()` wrote, with the helpers tests need to look at or damage it."""

    root: Path
    options: BuildOptions
    dist_dir: Path
    architectures: list[str]
    components: list[str]
    files: dict[tuple[str, str, str], str]  # (name, version, arch|"source") -> Filename

    @property
    def distribution(self) -> str:
        return self.options.distribution

    @property
    def release(self) -> Path:
        return self.dist_dir / "Release"

    @property
    def inrelease(self) -> Path:
        return self.dist_dir / "InRelease"

    @property
    def release_gpg(self) -> Path:
        return self.dist_dir / "Release.gpg"

    def filename(self, name: str, version: str | None = None, arch: str | None = None) -> str:
        """The Filename (relative to the root) of one binary package, or with
        arch="source" the .dsc of a source package; KeyError unless exactly one."""
        hits = [fn for (n, v, a), fn in self.files.items() if n == name and
                version in (None, v) and (a == arch if arch else a != "source")]
        if len(hits) != 1:
            raise KeyError(f"{name} {version or ''} {arch or ''}: {len(hits)} matches")
        return hits[0]

    def path(self, name: str, version: str | None = None, arch: str | None = None) -> Path:
        return self.root / self.filename(name, version, arch)

    def index(self, component: str = "main", arch: str = "amd64", *, kind: str = "binary",
              ext: str = "") -> Path:
        """Path of an index file; kind is binary, udeb or source; ext "", "gz" or "xz"."""
        name = "Sources" if kind == "source" else "Packages"
        name += f".{ext}" if ext else ""
        if self.options.is_flat:
            return self.dist_dir / name
        sub = {"binary": f"binary-{arch}", "udeb": f"debian-installer/binary-{arch}",
               "source": "source"}[kind]
        return self.dist_dir / component / sub / name

    def remove_index(self, component: str = "main", arch: str = "amd64", *,
                     kind: str = "binary") -> None:
        """Delete an index in every compression (and its by-hash copies) while the
        Release still lists it: the 'index missing upstream' failure."""
        for ext in ("", *self.options.compressions):
            path = self.index(component, arch, kind=kind, ext=ext)
            if path.exists():
                digest = debs.Blob("", path.read_bytes()).sha256
                (path.parent / "by-hash" / "SHA256" / digest).unlink(missing_ok=True)
                path.unlink()

    def sign(self, key: GpgKey | None) -> None:
        """Re-sign the current Release (after a test edited it), or unsign with None."""
        release.sign(self.release, key)

    def sources_line(self, url: str, keyring: os.PathLike | None = None, *,
                     components: list[str] | None = None) -> str:
        """A one-line sources.list entry for this archive served at `url`."""
        opts = f"[signed-by={keyring}] " if keyring else ""
        if self.options.is_flat:
            return f"deb {opts}{url} {self.distribution}"
        return f"deb {opts}{url} {self.distribution} {' '.join(components or self.components)}"


def corrupt(path: os.PathLike, *, truncate: bool = False) -> None:
    """Damage a file after it was indexed: flip a byte in the middle (same size, so only
    the checksum catches it) or, with truncate=True, cut it to half its size."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class ArchiveBuilder:
    """Declare packages, then `build(dest, ...)` as many times as the test needs."""

    def __init__(self, *, architectures: tuple[str, ...] | list[str] = ("amd64",),
                 components: tuple[str, ...] | list[str] = ("main",)):
        self.architectures = list(architectures)
        self.components = list(components)
        self.binaries: list[Binary] = []
        self.sources: list[Source] = []

    def add(self, name: str, version: str, **fields) -> Binary:
        """Declare a binary package (fields as in `Binary`); returns it for tweaking."""
        binary = Binary(name, version, **fields)
        self.binaries.append(binary)
        return binary

    def add_source(self, name: str, version: str, **fields) -> Source:
        source = Source(name, version, **fields)
        self.sources.append(source)
        return source

    def remove(self, name: str, version: str | None = None, *, arch: str | None = None,
               sources: bool = False) -> int:
        """Drop declared binaries (and with sources=True sources) by name[, version, arch];
        return how many went."""
        def hit(p) -> bool:
            return p.name == name and version in (None, p.version) and \
                arch in (None, getattr(p, "arch", None))
        before = len(self.binaries) + len(self.sources)
        self.binaries = [b for b in self.binaries if not hit(b)]
        if sources:
            self.sources = [s for s in self.sources if not hit(s)]
        return before - len(self.binaries) - len(self.sources)

    def build(self, dest: os.PathLike, options: BuildOptions | None = None,
              **kw) -> BuiltArchive:
        """Write the archive under `dest` (options as in `BuildOptions`, by keyword)."""
        opts = replace(options or BuildOptions(), **kw)
        out = layout.write(self, Path(dest), opts)
        return BuiltArchive(Path(dest), opts, out.dist_dir, out.architectures,
                            out.components, out.files)

    def all_architectures(self) -> list[str]:
        """Declared architectures plus any a package uses, never `all`."""
        extra = sorted({b.arch for b in self.binaries} - {"all"} - set(self.architectures))
        return self.architectures + extra

    def all_components(self) -> list[str]:
        used = [p.component for p in (*self.binaries, *self.sources)]
        return list(dict.fromkeys([*self.components, *used]))

    def binaries_of(self, source: str) -> list[Binary]:
        return [b for b in self.binaries if b.source_name == source]


def make_example(dest: os.PathLike, *, keys_dir: os.PathLike | None = None) -> BuiltArchive:
    """The bundled example upstream with its keys; see `examples.make_example`."""
    from tests.support import examples  # examples builds on this module
    return examples.make_example(dest, keys_dir=keys_dir)


def synthetic(n: int, **kw) -> ArchiveBuilder:
    """A benchmark-sized declaration; see `examples.synthetic`."""
    from tests.support import examples
    return examples.synthetic(n, **kw)


def _main(argv: list[str]) -> int:
    """CLI: `example DEST` or `synthetic N DEST`; see the module docstring."""
    from tests.support import examples
    return examples.main(argv)


if __name__ == "__main__":
    import sys
    raise SystemExit(_main(sys.argv[1:]))
