"""The writing half of `ArchiveBuilder.build`: declarations -> pool files and indexes.

`archive.py` owns the declaration model and what tests call; this module owns the
directory layout (where each file goes, which index lists it) and hands the rendered
stanzas to `release.py`, which knows the file formats. Splitting it this way keeps
each module short and lets the layout rules (arch `all` in every binary-ARCH index,
empty indexes for every component x architecture, flat trees) read in one place.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import debs, release

if TYPE_CHECKING:
    from tests.support.archive import ArchiveBuilder, Binary, BuildOptions, Source

_Key = tuple[str, str, str]


@dataclass
class Written:
    """The result of one build, before `archive.py` wraps it for tests."""

    dist_dir: Path
    architectures: list[str]
    components: list[str]
    files: dict[_Key, str] = field(default_factory=dict)


class _Pool:
    """Writes package files and remembers them (for prune). Threads were tried and did
    not help: on a 20,000-package build the filesystem, not Python, is the cost."""

    def __init__(self, root: Path):
        self.root = root
        self.written: set[Path] = set()

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        self.written.add(path)
        try:
            fh = open(path, "wb")
        except FileNotFoundError:  # first file of its directory
            os.makedirs(path.parent, exist_ok=True)
            fh = open(path, "wb")
        with fh:
            fh.write(data)


def write(builder: "ArchiveBuilder", root: Path, opts: "BuildOptions") -> Written:
    flat = opts.is_flat
    if flat and any(b.udeb for b in builder.binaries):
        raise ValueError("udebs need a dists/ archive, not a flat one")
    dist_dir = root / opts.distribution if flat else root / "dists" / opts.distribution
    out = Written(dist_dir, builder.all_architectures(), builder.all_components())
    pool = _Pool(root)
    indexes: dict[str, list[tuple[_Key, str]]] = defaultdict(list)
    for binary in builder.binaries:
        key = (binary.name, binary.version, binary.arch)
        out.files[key], stanza = _binary(pool, binary, opts)
        for index in _binary_indexes(binary, out.architectures, opts):
            indexes[index].append((key, stanza))
    for source in builder.sources:
        key = (source.name, source.version, "source")
        out.files[key], stanza = _source(pool, builder, source, opts)
        indexes["Sources" if flat else f"{source.component}/source/Sources"].append(
            (key, stanza))
    release.clear_dist(dist_dir, flat=flat)
    _write_dists(dist_dir, indexes, builder, out, opts)
    if opts.prune:
        _prune(root, dist_dir, pool.written, flat=flat)
    return out


# -- package files --------------------------------------------------------------------


def pool_prefix(source: str) -> str:
    """`pool/main/h/hello`, `pool/main/libg/libgreet`: Debian's pool sharding."""
    return source[:4] if source.startswith("lib") and len(source) > 3 else source[:1]


def _pool_dir(component: str, source: str, opts: "BuildOptions") -> str:
    if opts.is_flat:
        return opts.distribution
    return f"pool/{component}/{pool_prefix(source)}/{source}/"


def _overridden(fields: dict[str, str], override: dict[str, str | None]) -> dict[str, str]:
    merged: dict[str, str | None] = {**fields, **override}
    return {k: v for k, v in merged.items() if v is not None}


def _binary(pool: _Pool, binary: "Binary", opts: "BuildOptions") -> tuple[str, str]:
    files = debs.default_files(binary.name, binary.version, pad=binary.pad)
    control = binary.control(files)
    blob = debs.Blob(binary.file_name, debs.build_deb(control, files))
    rel = _pool_dir(binary.component, binary.source_name, opts) + blob.name
    pool.put(rel, blob.data)
    fields = {**control, "Filename": rel, "Size": str(blob.size), "MD5sum": blob.md5,
              "SHA1": blob.sha1, "SHA256": blob.sha256}
    return rel, debs.format_stanza(_overridden(fields, binary.override))


def _binary_indexes(binary: "Binary", archs: list[str], opts: "BuildOptions") -> list[str]:
    """Indexes listing this binary: arch `all` goes into every binary-ARCH/Packages."""
    if opts.is_flat:
        return ["Packages"]
    base = f"{binary.component}/debian-installer" if binary.udeb else binary.component
    if binary.arch != "all":
        return [f"{base}/binary-{binary.arch}/Packages"]
    return [f"{base}/binary-{a}/Packages" for a in archs + (["all"] if opts.all_index else [])]


def _source(pool: _Pool, builder: "ArchiveBuilder", source: "Source",
            opts: "BuildOptions") -> tuple[str, str]:
    own = builder.binaries_of(source.name)
    names = source.binaries or list(dict.fromkeys(b.name for b in own)) or [source.name]
    arch = source.architecture or ("all" if own and all(b.arch == "all" for b in own)
                                   else "any")
    built = debs.build_source(source.name, source.version, binaries=names, architecture=arch,
                              maintainer=source.maintainer, section=source.section,
                              priority=source.priority, build_depends=source.build_depends,
                              pad=source.pad, udebs=[b.name for b in own if b.udeb])
    directory = _pool_dir(source.component, source.name, opts)
    for blob in built.all_files:
        pool.put(directory + blob.name, blob.data)
    return directory + built.dsc.name, debs.format_stanza(
        _overridden(_sources_fields(built, directory), source.override))


def _sources_fields(built: debs.SourceBuild, directory: str) -> dict[str, str]:
    f = built.fields
    blobs = built.all_files
    def block(attr: str) -> str:
        return "".join(f"\n {getattr(b, attr)} {b.size} {b.name}" for b in blobs)
    return {"Package": f["Source"], "Binary": f["Binary"], "Version": f["Version"],
            "Maintainer": f["Maintainer"], "Build-Depends": f["Build-Depends"],
            "Architecture": f["Architecture"], "Standards-Version": f["Standards-Version"],
            "Format": f["Format"], "Files": block("md5"), "Checksums-Sha1": block("sha1"),
            "Checksums-Sha256": block("sha256"), "Package-List": f["Package-List"],
            "Directory": directory.rstrip("/") or ".", "Priority": f["Priority"],
            "Section": f["Section"]}


# -- dists/ ---------------------------------------------------------------------------


def _index_paths(builder: "ArchiveBuilder", out: Written, opts: "BuildOptions") -> list[str]:
    """Every index, so empty component x architecture indexes exist too (a mirror
    asking for contrib/binary-arm64 finds an empty index, as on Debian)."""
    if opts.is_flat:
        return ["Packages"] + (["Sources"] if builder.sources else [])
    archs = out.architectures + (["all"] if opts.all_index else [])
    paths = []
    for comp in out.components:
        paths += [f"{comp}/binary-{a}/Packages" for a in archs]
        if any(b.udeb for b in builder.binaries):
            paths += [f"{comp}/debian-installer/binary-{a}/Packages" for a in archs]
        if builder.sources:
            paths.append(f"{comp}/source/Sources")
    return paths


def _write_dists(dist_dir: Path, indexes: dict[str, list[tuple[_Key, str]]],
                 builder: "ArchiveBuilder", out: Written, opts: "BuildOptions") -> None:
    entries: list[release.Entry] = []
    by_hash = opts.acquire_by_hash and not opts.is_flat
    for path in _index_paths(builder, out, opts):
        rel, _, name = path.rpartition("/")
        stanzas = [text for _, text in sorted(indexes.get(path, []))]
        entries += release.write_index(dist_dir, rel, name, stanzas, plain=opts.plain,
                                       compressions=opts.compressions, fast=opts.fast,
                                       by_hash=by_hash)
        if rel and "/debian-installer/" not in rel:
            entries.append(release.write_sub_release(dist_dir, rel, _sub_fields(rel, opts)))
    text = release.release_text(_release_fields(out, opts), entries)
    (dist_dir / "Release").write_text(text)
    release.sign(dist_dir / "Release", opts.sign_with)


def _sub_fields(rel: str, opts: "BuildOptions") -> dict[str, str | None]:
    component, _, last = rel.partition("/")
    return {"Archive": opts.suite or opts.distribution, "Origin": opts.origin,
            "Label": opts.label, "Version": opts.version,
            "Acquire-By-Hash": "yes" if opts.acquire_by_hash else None,
            "Component": component, "Architecture": last.removeprefix("binary-")}


def _release_fields(out: Written, opts: "BuildOptions") -> dict[str, str | None]:
    flat = opts.is_flat
    archs = (["all"] if opts.all_index and not flat else []) + out.architectures
    return {
        "Origin": opts.origin, "Label": opts.label,
        "Suite": opts.suite or (None if flat else opts.distribution),
        "Version": opts.version,
        "Codename": opts.codename or (None if flat else opts.distribution),
        "Date": release.rfc2822(opts.date),
        "Valid-Until": release.rfc2822(opts.valid_until) if opts.valid_until else None,
        "Acquire-By-Hash": "yes" if opts.acquire_by_hash and not flat else None,
        "No-Support-for-Architecture-all":
            "Packages" if opts.all_index and not flat else None,
        "Architectures": " ".join(archs),
        "Components": None if flat else " ".join(out.components),
        "Description": opts.description or f"{opts.label} test archive",
    }


def _prune(root: Path, dist_dir: Path, keep: set[Path], *, flat: bool) -> None:
    """Delete package files this build did not write (the declaration dropped them)."""
    base = dist_dir if flat else root / "pool"
    paths = base.iterdir() if flat else base.rglob("*")
    for path in sorted(paths, reverse=True):
        if path.is_file() and path not in keep and (
                not flat or path.suffix in (".deb", ".udeb", ".dsc", ".gz", ".xz")
                and not path.name.startswith(("Packages", "Sources"))):
            path.unlink()
        elif path.is_dir() and not flat and not any(path.iterdir()):
            path.rmdir()
