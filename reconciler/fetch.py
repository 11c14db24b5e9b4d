"""The one download path: every byte from an upstream archive comes through here.

- `get` reads small metadata (Release, InRelease, Release.gpg) whole, at most
  `limits.maxReleaseBytes` of it; `get_file` streams an index into a file, at most the
  size the signed Release lists.
- `download` fetches package files concurrently into the pool. Each file is streamed
  into a stable partial path (`pool/tmp/<sha256>.part`), hashed as it arrives, and the
  moment it is complete and matches the size and SHA-256 the signed index gave, it is
  moved into the pool and reported through `on_imported`, which records it in the
  database. A run killed half-way therefore loses at most the files in flight, and a
  partial file is continued with an HTTP Range request on the next run.

What upstream sends is bounded by what it signed: reading stops at the first byte past
the promised size and that file fails (its partial is deleted: it is not a prefix of
the right file). Every request has a deadline, `network.idleTimeout + size /
network.minRate`, and a body that falls below `minRate` on average fails as soon as it
does, so a server that trickles cannot hold a task (and its locks) for long.

Connection errors, timeouts and 5xx are retried `network.retries` times with
exponential backoff, and each retry is reported (what failed, attempt n of m, when the
next one starts) through the one `log` callable the fetcher is given (a task's log);
a 404 fails that file at once; a checksum mismatch deletes the
partial file and names the file. A local write that fails (disk full, read-only) is a
StorageError at once, not retried, and the partial stays for the next run.

`network.maxRate` caps the bytes per second read from the upstream by all of a
fetcher's threads together: one token bucket (`RateLimit`) that every read draws from.
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import io
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, overload

from reconciler.errors import LimitError, PermanentError, StorageError, TemporaryError, VerifyError
from reconciler.pool import CHUNK, LocalPackagePool
from reconciler.spec import Limits, MirrorSpec, Network
from reconciler.transport import Transport, describe, read_errors


@dataclass(frozen=True)
class Want:
    """A file to have in the pool: where to get it and what it must be."""

    url: str
    path: str  # as the index names it, for messages
    size: int
    sha256: str


class Progress(Protocol):
    """What a progress display needs from a download: totals, bytes as they land, files done."""

    def start(self, files: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def file_done(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Stats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += nbytes


def join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(path.lstrip("/"), safe="/~+:@")


class RateLimit:
    """A token bucket shared by threads, with no burst: `take(n)` reserves the next n / rate
    seconds of the bucket and returns when they have passed, so N bytes through it, from
    any number of threads, take at least N / rate seconds."""

    def __init__(self, rate: int):
        self.rate = rate
        self.lock = threading.Lock()
        self.free_at = time.monotonic()  # when the bytes reserved so far have been paid for

    def take(self, nbytes: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + nbytes / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)


class Fetcher:
    def __init__(self, *, concurrency: int = 4, network: Network | None = None, limits: Limits | None = None,
                 retries: int | None = None, backoff: float = 0.5, progress: Progress | None = None,
                 log: Callable[[str], None] | None = None):
        """`log` receives one line per retry (what failed, which attempt, when the next)."""
        self.concurrency = concurrency
        self.network = network or Network()
        self.limits = limits or Limits()
        self.retries = self.network.retries if retries is None else retries
        self.backoff = backoff
        self.progress = progress
        self.log = log
        self.idle = self.network.idle_seconds
        net = self.network
        self.transport = Transport(timeout=self.idle, proxy=net.proxy, ca_file=net.caFile,
                                   client_cert=net.clientCertFile, client_key=net.clientKeyFile, headers=net.headers)
        self.rate = RateLimit(net.maxRate) if net.maxRate else None

    @classmethod
    def of(cls, spec: MirrorSpec, *, progress: Progress | None = None,
           log: Callable[[str], None] | None = None) -> Fetcher:
        """A fetcher with a mirror's concurrency, network settings and limits."""
        return cls(concurrency=spec.downloadConcurrency, network=spec.network, limits=spec.limits,
                   progress=progress, log=log)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small files ---------------------------------------------------------------

    @overload
    def get(self, url: str, *, missing_ok: Literal[False] = False, limit: int | None = None) -> bytes: ...

    @overload
    def get(self, url: str, *, missing_ok: bool, limit: int | None = None) -> bytes | None: ...

    def get(self, url: str, *, missing_ok: bool = False, limit: int | None = None) -> bytes | None:
        """The whole body of `url` (at most `limit`, default limits.maxReleaseBytes);
        None for a missing file when `missing_ok`."""
        limit = self.limits.maxReleaseBytes if limit is None else limit
        if url.startswith("file:"):
            try:
                with open(_file_path(url), "rb") as fh:
                    data = fh.read(limit + 1)
            except FileNotFoundError:
                if missing_ok:
                    return None
                raise PermanentError(f"{url}: not found") from None
            except OSError as exc:
                raise PermanentError(f"{url}: {exc.strerror or exc}") from None
            if len(data) > limit:
                raise LimitError(f"{url}: larger than {limit} bytes (spec.limits.maxReleaseBytes)")
            return data
        return self._retrying(lambda: self._get(url, missing_ok, limit))

    def _get(self, url: str, missing_ok: bool, limit: int) -> bytes | None:
        with self.transport.get(url, deadline=self._deadline(limit)) as response:
            if response.status == 404 and missing_ok:
                return None  # body unread: the transport drops the connection, whatever its size
            self._raise_for(url, response.status)
            out = io.BytesIO()
            try:
                self._copy(response, out, None, what=url, limit=limit)
            except LimitError:
                raise LimitError(f"{url}: larger than {limit} bytes (spec.limits.maxReleaseBytes)") from None
            return out.getvalue()

    def get_file(self, url: str, dest: Path, *, size: int, what: str, missing_ok: bool = False) -> str | None:
        """Stream `url` into `dest` (replaced): exactly `size` bytes, or an error; the SHA-256.
        None for a missing file when `missing_ok`."""
        if url.startswith("file:"):
            src = _file_path(url)
            if not src.exists():
                if missing_ok:
                    return None
                raise PermanentError(f"{what}: not found at {url}")
            if src.stat().st_size != size:
                raise VerifyError(f"{what}: {src.stat().st_size} bytes at {url}, its Release says {size}")
            with open(src, "rb") as fh:
                return self._write(fh, dest, size=size, what=what)
        return self._retrying(lambda: self._get_file(url, dest, size, what, missing_ok))

    def _get_file(self, url: str, dest: Path, size: int, what: str, missing_ok: bool) -> str | None:
        with self.transport.get(url, deadline=self._deadline(size)) as response:
            if response.status == 404 and missing_ok:
                return None
            if response.status == 404:
                raise PermanentError(f"{what}: HTTP 404 at {url}")
            self._raise_for(url, response.status)
            return self._write(response, dest, size=size, what=what)

    def _write(self, source, dest: Path, *, size: int, what: str) -> str:
        digest = hashlib.sha256()
        with _open_for_write(dest, "wb", what) as fh:
            try:
                got = self._copy(source, fh, digest, what=what, limit=size)
            except LimitError:
                raise LimitError(f"{what}: upstream sent more than the {size} bytes its Release lists") from None
        if got != size:
            raise TemporaryError(f"{what}: truncated download ({got} of {size} bytes)")
        return digest.hexdigest()

    @staticmethod
    def _raise_for(url: str, status: int) -> None:
        if status >= 500 or status == 429:
            raise TemporaryError(f"{url}: HTTP {status}")
        if status >= 400:
            raise PermanentError(f"{url}: HTTP {status}")

    def _retrying(self, call):
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except TemporaryError as exc:
                if attempt == attempts:
                    if attempts > 1:
                        raise type(exc)(f"{exc} (gave up after {attempts} attempts: "
                                        "spec.network.retries)") from exc
                    raise
                delay = self.backoff * (2 ** (attempt - 1))
                if self.log:
                    self.log(f"{exc}; retrying: attempt {attempt} of {attempts} failed, next in {delay:g} s")
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- the body of every response --------------------------------------------------

    def _deadline(self, nbytes: int) -> float:
        """When a request for `nbytes` must be done: one idle timeout plus the bytes at minRate."""
        return time.monotonic() + self.idle + nbytes / self.network.minRate

    def _copy(self, source, out: BinaryIO, digest, *, what: str, limit: int, got: int = 0,
              report: bool = False) -> int:
        """Copy `source` (a response or a file) into `out` until EOF; return the bytes in `out`.

        Never reads past `limit` + 1 bytes in all (LimitError); below `minRate` on
        average after the first idle timeout, or no byte for an idle timeout, it is a
        TemporaryError; a failed write is a StorageError. `report`: count the bytes in
        the progress display (package files; metadata is not in its totals).
        """
        start, first = time.monotonic(), got
        read = source.read1 if hasattr(source, "read1") else source.read
        size = min(CHUNK, max(4096, self.rate.rate // 4)) if self.rate else CHUNK  # smooth, if limited
        while True:
            try:
                chunk = read(min(size, limit + 1 - got))
            except TimeoutError as exc:
                raise TemporaryError(f"{what}: no data for {self.idle:g} s after {got} bytes "
                                     "(spec.network.idleTimeout)") from exc
            except read_errors() as exc:  # cut mid-file: what landed stays for a Range retry
                raise TemporaryError(f"{what}: connection lost after {got} bytes ({describe(exc)})") from exc
            if not chunk:
                if isinstance(source, http.client.HTTPResponse):
                    source.read()  # marks a fully read response closed, so its connection is kept
                return got
            got += len(chunk)
            if self.rate and isinstance(source, http.client.HTTPResponse):
                self.rate.take(len(chunk))
            if got > limit:
                raise LimitError(f"{what}: more than {limit} bytes")
            try:
                out.write(chunk)
            except OSError as exc:
                raise StorageError(f"{what}: cannot write {getattr(out, 'name', 'the download')}: "
                                   f"{exc.strerror or exc}; a partial download stays and resumes on the "
                                   "next run") from exc
            if digest is not None:
                digest.update(chunk)
            if report and self.progress:
                self.progress.advance(len(chunk))
            elapsed = time.monotonic() - start
            if elapsed > self.idle + (got - first) / self.network.minRate:
                raise TemporaryError(f"{what}: too slow, {got - first} bytes in {elapsed:.0f} s, below "
                                     f"spec.network.minRate ({self.network.minRate} bytes/s)")

    # -- package files -------------------------------------------------------------

    def download(self, wants: Iterable[Want], pool: LocalPackagePool, *,
                 on_imported: Callable[[Want], None]) -> Stats:
        """Bring every wanted file into the pool; report failures together at the end.

        A StorageError (the local disk refused a write) stops the whole download at
        once: every other file would fail the same way."""
        stats = Stats()
        todo = []
        for want in wants:
            if pool.has(want.sha256, want.size):
                stats.skipped += 1  # recorded when it was imported
            else:
                todo.append(want)
        errors: list[str] = []
        if self.progress:
            self.progress.start(len(todo), sum(w.size for w in todo))
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="fetch") as ex:
            # each download runs in a copy of this thread's context, so what it logs names
            # the task it is part of (tasks.current); one copy each: a context runs in one thread
            futures = {ex.submit(contextvars.copy_context().run, self._one, want, pool): want for want in todo}
            for future in as_completed(futures):
                want = futures[future]
                try:
                    stats.add(future.result())
                    on_imported(want)
                except (PermanentError, TemporaryError) as exc:
                    errors.append(str(exc))
                except (StorageError, OSError):
                    for other in futures:
                        other.cancel()
                    raise
                if self.progress:
                    self.progress.file_done()
        stats.failed = sorted(errors)
        return stats

    def _one(self, want: Want, pool: LocalPackagePool) -> int:
        part = pool.temp_path(want.sha256 + ".part")
        if _size(part) == want.size:
            # A run killed after the last byte landed but before the import: nothing to fetch.
            try:
                pool.import_file(part, sha256=want.sha256, size=want.size, move=True)
                return want.size
            except VerifyError:
                part.unlink(missing_ok=True)
        digest = None
        if want.url.startswith("file:"):
            src = _file_path(want.url)
            if not src.exists():
                raise PermanentError(f"{want.path}: not found at {want.url}")
            if src.stat().st_size != want.size:
                raise VerifyError(f"{want.path}: {src.stat().st_size} bytes at {want.url}, its index says "
                                  f"{want.size}; not imported")
            with open(src, "rb") as fh, _open_for_write(part, "wb", want.path) as out:
                self._copy(fh, out, None, what=want.path, limit=want.size)
        else:
            digest = self._retrying(lambda: self._stream(want, part))
        try:
            pool.import_file(part, sha256=want.sha256, size=want.size, move=True, actual_sha256=digest)
        except VerifyError as exc:
            part.unlink(missing_ok=True)
            raise VerifyError(f"{want.path}: checksum mismatch, not imported ({exc})") from None
        return want.size

    def _stream(self, want: Want, part: Path) -> str:
        """Download into `part`, continuing a partial file with a Range request.

        Returns the SHA-256 of the whole file, hashed as the bytes arrive (a resumed
        file's first part is hashed from disk first), so the import need not read it again.
        """
        have = _size(part) or 0
        if have >= want.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.transport.get(want.url, headers, deadline=self._deadline(want.size - have)) as response:
            if response.status == 404:
                raise PermanentError(f"{want.path}: HTTP 404 at {want.url}")
            served = _served_size(response)
            if served is not None and served != want.size:
                # Not a cut connection (that is retried and resumed): upstream's file itself
                # differs from its signed index. A partial of it is of no use either.
                part.unlink(missing_ok=True)
                raise VerifyError(f"{want.path}: upstream serves {served} bytes, its index says {want.size}; "
                                  "not imported")
            self._raise_for(want.url, response.status)
            resume = bool(have) and response.status == 206
            digest = _hash_prefix(part) if resume else hashlib.sha256()
            with _open_for_write(part, "ab" if resume else "wb", want.path) as fh:
                try:
                    got = self._copy(response, fh, digest, what=want.path, limit=want.size,
                                     got=have if resume else 0, report=True)
                except LimitError:
                    fh.close()
                    part.unlink(missing_ok=True)
                    raise LimitError(f"{want.path}: upstream sent more than the {want.size} bytes its index "
                                     "lists; not imported") from None
        if got < want.size:
            raise TemporaryError(f"{want.path}: truncated download ({got} of {want.size} bytes)")
        return digest.hexdigest()


def _file_path(url: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def _open_for_write(path: Path, mode: Literal["wb", "ab"], what: str) -> BinaryIO:
    try:
        return open(path, mode)
    except OSError as exc:
        raise StorageError(f"{what}: cannot write {path}: {exc.strerror or exc}") from exc


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _hash_prefix(path: Path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest


def _served_size(response) -> int | None:
    """The whole file's size as the server states it, when it states it plainly."""
    if (response.getheader("Content-Encoding") or "identity") != "identity":
        return None
    if response.status in (206, 416):
        total = (response.getheader("Content-Range") or "").rpartition("/")[2]
    elif response.status == 200:
        total = response.getheader("Content-Length") or ""
    else:
        return None
    return int(total) if total.isascii() and total.isdigit() else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
