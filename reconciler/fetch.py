"""The one download path: every byte from an upstream archive comes through here.

- `get` reads small metadata (Release, indexes) whole, from http(s) or file URLs.
- `download` fetches package files concurrently into the pool. Each file is streamed
  into a stable partial path (`pool/tmp/<sha256>.part`), hashed as it arrives, and the
  moment it is complete and matches the size and SHA-256 the signed index gave, it is
  moved into the pool and reported through `on_imported`, which records it in the
  database. A run killed half-way therefore loses at most the files in flight, and a
  partial file is continued with an HTTP Range request on the next run.

Connection errors, timeouts and 5xx are retried with exponential backoff; a 404 fails
that file at once; a checksum mismatch deletes the partial file and names the file.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol
from pathlib import Path

from reconciler.errors import PermanentError, TemporaryError, VerifyError
from reconciler.pool import CHUNK, LocalPackagePool
from reconciler.transport import Transport, read_errors


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


class Fetcher:
    def __init__(self, *, concurrency: int = 4, retries: int = 4, timeout: float = 60.0,
                 backoff: float = 0.5, progress: Progress | None = None):
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.progress = progress
        self.transport = Transport(timeout=timeout)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small files ---------------------------------------------------------------

    def get(self, url: str, *, missing_ok: bool = False) -> bytes | None:
        """The whole body of `url`; None for a missing file when `missing_ok`."""
        if url.startswith("file:"):
            path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
            try:
                return path.read_bytes()
            except FileNotFoundError:
                if missing_ok:
                    return None
                raise PermanentError(f"{url}: not found") from None
        return self._retrying(lambda: self._get(url, missing_ok))

    def _get(self, url: str, missing_ok: bool) -> bytes | None:
        with self.transport.get(url) as response:
            if response.status == 404 and missing_ok:
                response.read()
                return None
            self._raise_for(url, response.status)
            try:
                return response.read()
            except read_errors() as exc:
                raise TemporaryError(f"{url}: {exc!r}") from exc

    @staticmethod
    def _raise_for(url: str, status: int) -> None:
        if status >= 500 or status == 429:
            raise TemporaryError(f"{url}: HTTP {status}")
        if status >= 400:
            raise PermanentError(f"{url}: HTTP {status}")

    def _retrying(self, call):
        for attempt in range(self.retries + 1):
            try:
                return call()
            except TemporaryError:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    # -- package files -------------------------------------------------------------

    def download(self, wants: Iterable[Want], pool: LocalPackagePool, *,
                 on_imported: Callable[[Want], None]) -> Stats:
        """Bring every wanted file into the pool; report failures together at the end."""
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
            futures = {ex.submit(self._one, want, pool): want for want in todo}
            for future in as_completed(futures):
                want = futures[future]
                try:
                    stats.add(future.result())
                    on_imported(want)
                except (PermanentError, TemporaryError) as exc:
                    errors.append(str(exc))
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
            src = Path(urllib.parse.unquote(urllib.parse.urlparse(want.url).path))
            if not src.exists():
                raise PermanentError(f"{want.path}: not found at {want.url}")
            shutil.copyfile(src, part)
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
        with self.transport.get(want.url, headers) as response:
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
            got = have if resume else 0
            with open(part, "ab" if resume else "wb") as fh:
                try:
                    while chunk := response.read(CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
                        if self.progress:
                            self.progress.advance(len(chunk))
                except read_errors() as exc:  # cut mid-file: what landed stays for a Range retry
                    raise TemporaryError(f"{want.path}: connection lost after {got} bytes ({exc!r})") from exc
        if got < want.size:
            raise TemporaryError(f"{want.path}: truncated download ({got} of {want.size} bytes)")
        return digest.hexdigest()


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
    return int(total) if total.isdigit() else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
