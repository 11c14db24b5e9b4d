"""Reading an upstream APT archive: the signed Release, then the indexes it vouches for.

Trust flows down one chain: the Release is verified with gpgv against
the spec's keyrings; each index is checked for size and SHA-256 against the Release;
each package file will later be checked against its index stanza. A `Filename` that
would leave the archive root refuses the whole index: an archive that serves one
hostile path is not trusted for the rest either.

A valid signature does not make the content harmless, so upstream values are data:

- A Release past its `Valid-Until` is refused (as apt's Check-Valid-Until does) unless
  the spec says `checkValidUntil: false`; the clock is the `now` the caller passes.
- The Release must be UTF-8; a malformed row for an index we need refuses that index.
- An index is downloaded at most to the size the Release lists (and
  `limits.maxIndexBytes`), and decompressed as a stream bounded by the plain form's
  listed size, `limits.maxIndexBytes` and `limits.maxStanzaBytes`, and checked against
  the plain form's SHA256 when the Release lists it: a gzip or xz bomb fails at its
  first byte past a bound, with memory flat.
- Every checksum, size and file name of a stanza is checked in `package.from_stanza`.

Whatever upstream serves, only ReconcilerError subclasses leave this module, so one
hostile mirror fails alone and the others in the same run carry on.

Indexes are cached under `ROOT/cache/indexes/<sha256>`, so `plan` followed by `apply`
reads each index from upstream once.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from reconciler import gpg
from reconciler.debian import deps, index, query
from reconciler.debian.package import BadStanza, Package, from_stanza
from reconciler.errors import LimitError, PermanentError, VerifyError
from reconciler.fetch import Fetcher, join, sha256_bytes
from reconciler.spec import Limits, MirrorSpec

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
        return _date(self.info.get("Date"))


def _date(text: str | None) -> datetime | None:
    """A Release date (RFC 2822, UTC when no zone is given); None when absent or unparseable."""
    try:
        moment = parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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


def read_release(fetcher: Fetcher, spec: MirrorSpec, *, workdir: Path,
                 now: Callable[[], datetime] = utcnow) -> Release:
    """Fetch InRelease (falling back to Release + Release.gpg), verify and check it."""
    base, root = locations(spec)
    inrelease = fetcher.get(join(base, "InRelease"), missing_ok=True)
    release = release_gpg = None
    if inrelease is None:
        raw = release = fetcher.get(join(base, "Release"))
        release_gpg = fetcher.get(join(base, "Release.gpg"), missing_ok=True)
    else:
        raw = inrelease
    if spec.verifySignature:
        text = gpg.verify_release(inrelease=inrelease, release=release, release_gpg=release_gpg,
                                  keyrings=[Path(k) for k in spec.keyrings], workdir=workdir)
    else:
        text = _strip_clearsign(raw) if inrelease is not None else raw
    name = "InRelease" if inrelease is not None else "Release"
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerifyError(f"{join(base, name)}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "not a Release file") from None
    info = index.parse_release(decoded)
    if spec.checkValidUntil:
        _check_valid_until(info, join(base, name), now())
    return Release(base, root, sha256_bytes(raw), info, spec.verifySignature)


def _check_valid_until(info: index.ReleaseInfo, where: str, now: datetime) -> None:
    """Refuse a Release past its Valid-Until, as apt does: an archive frozen (or replayed)
    by an attacker would otherwise be mirrored and re-signed as fresh."""
    text = info.get("Valid-Until")
    if not text:
        return
    until = _date(text)
    if until is None:
        raise VerifyError(f"{where}: Valid-Until {text!r} is not a date")
    if until < now:
        raise VerifyError(f"{where}: expired at {until.isoformat()} (its Valid-Until); upstream may be frozen "
                          "or replaying an old archive. Set checkValidUntil: false in the mirror spec to "
                          "mirror it anyway")


def _strip_clearsign(raw: bytes) -> bytes:
    """The signed text of an unverified InRelease (only when verifySignature is false)."""
    lines = raw.splitlines(keepends=True)
    if not lines or not lines[0].startswith(b"-----BEGIN PGP SIGNED MESSAGE"):
        return raw
    blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
    end = next((i for i, line in enumerate(lines) if line.startswith(b"-----BEGIN PGP SIGNATURE")), None)
    if blank is None or end is None or end < blank:
        raise VerifyError("InRelease: a clearsigned message without its signature block; not a Release file")
    body = [line[2:] if line.startswith(b"- ") else line for line in lines[blank + 1:end]]
    return b"".join(body)


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
        for arch in archs + (["all"] if _reads_all(release, comp) else []):
            refs.append(IndexRef(f"{comp}/binary-{arch}/Packages", "deb", comp))
            if spec.withUdebs:
                refs.append(IndexRef(f"{comp}/debian-installer/binary-{arch}/Packages", "udeb", comp))
        if spec.withSources:
            refs.append(IndexRef(f"{comp}/source/Sources", "source", comp))
    return refs


def architectures(release: Release, spec: MirrorSpec) -> list[str]:
    archs = spec.architectures or [a for a in release.info.architectures if a not in ("all", "source")]
    return list(archs)


def _reads_all(release: Release, component: str) -> bool:
    """Is `COMP/binary-all/Packages` an index to read? apt's rule (debReleaseIndex::
    IsArchitectureAllSupportedFor): only when the Release's `Architectures` is absent or
    lists `all`, and its `No-Support-for-Architecture-all` does not name `Packages`;
    and only when the Release lists the file. Otherwise the per-architecture indexes
    carry the `all` packages, and a binary-all index is one no client reads: Debian's
    security suite lists one that does not match what it serves."""
    listed = release.info.architectures
    if listed and "all" not in listed:
        return False
    if "Packages" in release.info.get("No-Support-for-Architecture-all").split():
        return False
    return _has(release, f"{component}/binary-all/Packages")


def _has(release: Release, path: str) -> bool:
    return any(path + suffix in release.info.files for suffix in COMPRESSIONS)


def fetch_index(fetcher: Fetcher, release: Release, ref: IndexRef, *, cache: Path) -> Path | None:
    """Download one index (best compression listed), verified against the Release; cached."""
    for suffix in COMPRESSIONS:
        path = ref.path + suffix
        _refuse_bad(release, path)
        if path not in release.info.files:
            continue
        size, digests = release.info.files[path]
        sha = digests.get("sha256")
        if not sha:
            raise VerifyError(f"Release lists {path} without a SHA256 checksum")
        _check_size(path, size, fetcher.limits)
        cached = cache / (sha + suffix)
        if cached.exists() and cached.stat().st_size == size:
            return cached
        cache.mkdir(parents=True, exist_ok=True)
        part = cache / f".{sha}{suffix}.part"
        got = None
        if release.info.acquire_by_hash:
            by_hash = join(release.base, f"{posixpath.dirname(path)}/by-hash/SHA256/{sha}")
            got = fetcher.get_file(by_hash, part, size=size, what=path, missing_ok=True)
        if got is None:
            got = fetcher.get_file(join(release.base, path), part, size=size, what=path)
        if got != sha:
            part.unlink(missing_ok=True)
            raise VerifyError(f"{path}: SHA256 does not match the Release")
        part.rename(cached)
        return cached
    return None


def _refuse_bad(release: Release, path: str) -> None:
    if path in release.info.bad:
        raise VerifyError(f"Release: {path}: {release.info.bad[path]}; refusing this index")


def _check_size(path: str, size: int, limits: Limits) -> None:
    if size > limits.maxIndexBytes:
        raise LimitError(f"{path}: the Release lists {size} bytes, more than spec.limits.maxIndexBytes "
                         f"({limits.maxIndexBytes})")


def expect(release: Release, ref: IndexRef, limits: Limits) -> index.Expect:
    """The bounds of an index's decompressed form: its plain entry in the Release, and the limits."""
    _refuse_bad(release, ref.path)
    size, digests = release.info.files.get(ref.path, (None, {}))
    if size is not None:
        _check_size(ref.path, size, limits)
    limit = limits.maxIndexBytes if size is None else size
    return index.Expect(ref.path, limit, limits.maxStanzaBytes, size, digests.get("sha256"))


def safe_path(path: str) -> bool:
    """Does a Filename stay inside the archive root?"""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(part not in ("..", "") for part in parts)


def iter_packages(path: Path, ref: IndexRef, bounds: index.Expect) -> Iterator[Package]:
    with index.open_index(path, bounds) as fh:
        for stanza in index.iter_stanzas(fh):
            try:
                pkg = from_stanza(stanza, ref.type)
            except BadStanza as exc:
                raise VerifyError(f"{ref.path}: {exc}; refusing this index") from None
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
        bounds = expect(release, ref, fetcher.limits)  # before any download: a bomb is refused unread
        path = fetch_index(fetcher, release, ref, cache=cache)
        if path is None:
            if ref.type == "deb":
                missing.append(ref.path)
            continue
        for pkg in iter_packages(path, ref, bounds):
            seen.setdefault(pkg.key, pkg)
    if missing:
        raise PermanentError("the Release lists none of these indexes: " + ", ".join(missing)
                             + f"; its components are {', '.join(release.info.components) or '(none)'}, its "
                             f"architectures {', '.join(release.info.architectures) or '(none)'}: check "
                             "spec.components and spec.architectures")
    try:
        return select(list(seen.values()), spec.filter, spec.filterWithDeps, architectures(release, spec))
    except (ValueError, LookupError) as exc:  # a version or relation no comparison can read
        raise PermanentError(f"upstream package data the filter cannot read: {exc}") from None


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
