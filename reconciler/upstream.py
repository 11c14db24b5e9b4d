"""Reading an upstream APT archive: the signed Release, then the indexes it vouches for.

Trust flows down one chain (DESIGN rule 5): the Release is verified with gpgv against
the spec's keyrings; each index is checked for size and SHA-256 against the Release;
each package file will later be checked against its index stanza. A `Filename` that
would leave the archive root refuses the whole index: an archive that serves one
hostile path is not trusted for the rest either.

Indexes are cached under `ROOT/cache/indexes/<sha256>`, so `plan` followed by `apply`
reads each index from upstream once.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from reconciler import gpg
from reconciler.debian import deps, index, query
from reconciler.debian.package import Package, from_stanza
from reconciler.errors import PermanentError, VerifyError
from reconciler.fetch import Fetcher, join, sha256_bytes
from reconciler.spec import MirrorSpec

COMPRESSIONS = (".xz", ".gz", "")


@dataclass(frozen=True)
class Release:
    base: str  # URL that index paths are relative to (dists/DIST, or the flat directory)
    root: str  # URL that package Filenames are relative to
    sha256: str  # of the raw InRelease (or Release) as served: "unchanged" means equal
    info: index.ReleaseInfo
    verified: bool

    @property
    def date(self) -> datetime | None:
        text = self.info.get("Date")
        try:
            return parsedate_to_datetime(text) if text else None
        except (TypeError, ValueError):
            return None


def locations(spec: MirrorSpec) -> tuple[str, str]:
    """(base of the Release and indexes, root of package Filenames).

    In a flat repository (`deb URL subdir/`) the indexes live in URL/subdir but, as in
    apt, Filenames stay relative to URL itself (`Filename: subdir/foo.deb`).
    """
    url = spec.url.rstrip("/")
    if spec.distribution.endswith("/"):
        flat = join(url, spec.distribution.rstrip("/")) if spec.distribution.strip("/") else url
        return flat, url
    return join(url, f"dists/{spec.distribution}"), url


def read_release(fetcher: Fetcher, spec: MirrorSpec, *, workdir: Path) -> Release:
    """Fetch InRelease (falling back to Release + Release.gpg) and verify it."""
    base, root = locations(spec)
    inrelease = fetcher.get(join(base, "InRelease"), missing_ok=True)
    release = release_gpg = None
    if inrelease is None:
        release = fetcher.get(join(base, "Release"))
        release_gpg = fetcher.get(join(base, "Release.gpg"), missing_ok=True)
    raw = inrelease if inrelease is not None else release
    if spec.verifySignature:
        text = gpg.verify_release(inrelease=inrelease, release=release, release_gpg=release_gpg,
                                  keyrings=[Path(k) for k in spec.keyrings], workdir=workdir)
    else:
        text = _strip_clearsign(raw) if inrelease is not None else raw
    info = index.parse_release(text.decode("utf-8", "replace"))
    return Release(base, root, sha256_bytes(raw), info, spec.verifySignature)


def _strip_clearsign(raw: bytes) -> bytes:
    """The signed text of an unverified InRelease (only when verifySignature is false)."""
    lines = raw.decode("utf-8", "replace").splitlines(keepends=True)
    if not lines or not lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE"):
        return raw
    start = next(i for i, line in enumerate(lines) if not line.strip()) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP SIGNATURE"))
    body = [line[2:] if line.startswith("- ") else line for line in lines[start:end]]
    return "".join(body).encode()


@dataclass(frozen=True)
class IndexRef:
    path: str  # without compression suffix, relative to the Release base
    type: str  # deb | udeb | source
    component: str


def wanted_indexes(release: Release, spec: MirrorSpec) -> list[IndexRef]:
    if spec.distribution.endswith("/"):
        refs = [IndexRef("Packages", "deb", "")]
        if spec.withSources:
            refs.append(IndexRef("Sources", "source", ""))
        return refs
    components = spec.components or release.info.components
    archs = architectures(release, spec)
    refs = []
    for comp in components:
        for arch in archs + (["all"] if _has(release, f"{comp}/binary-all/Packages") else []):
            refs.append(IndexRef(f"{comp}/binary-{arch}/Packages", "deb", comp))
            if spec.withUdebs:
                refs.append(IndexRef(f"{comp}/debian-installer/binary-{arch}/Packages", "udeb", comp))
        if spec.withSources:
            refs.append(IndexRef(f"{comp}/source/Sources", "source", comp))
    return refs


def architectures(release: Release, spec: MirrorSpec) -> list[str]:
    archs = spec.architectures or [a for a in release.info.architectures if a not in ("all", "source")]
    return list(archs)


def _has(release: Release, path: str) -> bool:
    return any(path + suffix in release.info.files for suffix in COMPRESSIONS)


def fetch_index(fetcher: Fetcher, release: Release, ref: IndexRef, *, cache: Path) -> Path | None:
    """Download one index (best compression listed), verified against the Release; cached."""
    for suffix in COMPRESSIONS:
        path = ref.path + suffix
        if path not in release.info.files:
            continue
        size, digests = release.info.files[path]
        sha = digests.get("sha256")
        if not sha:
            raise VerifyError(f"Release lists {path} without a SHA256 checksum")
        cached = cache / (sha + suffix)
        if cached.exists() and cached.stat().st_size == size:
            return cached
        data = None
        if release.info.acquire_by_hash:
            data = fetcher.get(join(release.base, f"{posixpath.dirname(path)}/by-hash/SHA256/{sha}"), missing_ok=True)
        if data is None:
            data = fetcher.get(join(release.base, path))
        if len(data) != size or sha256_bytes(data) != sha:
            raise VerifyError(f"{path}: size or SHA256 does not match the Release")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).rename(cached)
        return cached
    return None


def safe_path(path: str) -> bool:
    """Does a Filename stay inside the archive root?"""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(part not in ("..", "") for part in parts)


def iter_packages(path: Path, ref: IndexRef) -> Iterator[Package]:
    with index.open_index(path) as fh:
        for stanza in index.iter_stanzas(fh):
            try:
                pkg = from_stanza(stanza, ref.type)
            except ValueError as exc:
                raise PermanentError(f"{ref.path}: {exc}") from None
            for f in pkg.files:
                if not safe_path(f.path):
                    raise VerifyError(f"{ref.path}: package {pkg.ref} has a hostile file path {f.path!r}"
                                      " (absolute or with '..'); refusing this index")
            yield pkg


def read_packages(fetcher: Fetcher, release: Release, spec: MirrorSpec, *, cache: Path) -> list[Package]:
    """Every package of the mirror as the spec selects it, deduplicated, filtered."""
    seen: dict[str, Package] = {}
    missing = []
    for ref in wanted_indexes(release, spec):
        path = fetch_index(fetcher, release, ref, cache=cache)
        if path is None:
            if ref.type == "deb":
                missing.append(ref.path)
            continue
        for pkg in iter_packages(path, ref):
            seen.setdefault(pkg.key, pkg)
    if missing:
        raise PermanentError("the Release lists none of these indexes: " + ", ".join(missing))
    return select(list(seen.values()), spec.filter, spec.filterWithDeps, architectures(release, spec))


def select_stored(packages: list[Package], text: str | None, with_deps: bool | str) -> list[Package]:
    """`select` over packages already stored: the architectures are those they have."""
    archs = sorted({p.arch for p in packages if p.arch not in ("all", "source")})
    return select(packages, text, with_deps, archs)


def select(packages: list[Package], text: str | None, with_deps: bool | str, archs: list[str]) -> list[Package]:
    """Apply a spec's filter (and dependency closure) to a package list."""
    if not text:
        return packages
    q = query.parse(text)
    chosen = [p for p in packages if q.matches(p)]
    if with_deps:
        rule = "minimal" if with_deps == "minimal" else "aptly"
        chosen = deps.closure(chosen, packages, architectures=archs, rule=rule)
    return chosen
