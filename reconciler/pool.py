"""The content-addressed package pool: every package file stored once, keyed by SHA-256.

Two capabilities, split on purpose (STYLE habit 6):

- `PackagePool` is what every backend offers: does it hold a verified file, import a
  file, open one for reading, remove one. Code that only needs these asks for this.
- `LocalPackagePool` adds what only a filesystem pool can do: a path to hard-link from,
  and a temporary path on the same filesystem to download into, so that the final
  step of an import is one atomic rename.

A file appears in the pool only complete and verified: it is written under `tmp/`,
checked, then renamed into place. Import accepts a file that is already there, so an
interrupted import simply runs again.

A key is data from an upstream index, so `FilesystemPool` never makes a path of one
unchecked: a key that is not 64 lowercase hex digits, or a temporary name that is not
`<key>.part`, is a `BadKey` error, never a path (a second line of defence behind the
index parser).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from reconciler.errors import PermanentError, VerifyError

CHUNK = 1 << 20
_KEY = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"[0-9a-f]{64}\.part")


class BadKey(PermanentError):
    """A pool key or temporary name that is not a SHA-256 digest: refused, never a path."""


def check_key(sha256: str) -> str:
    if not isinstance(sha256, str) or not _KEY.fullmatch(sha256):
        raise BadKey(f"pool key {str(sha256)[:100]!r} is not a SHA-256 digest (64 lowercase hex digits)")
    return sha256


@runtime_checkable
class PackagePool(Protocol):
    def has(self, sha256: str, size: int | None = None) -> bool: ...

    def import_file(self, src: Path, *, sha256: str, size: int, move: bool = False,
                    actual_sha256: str | None = None) -> None: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def remove(self, sha256: str) -> int: ...

    def walk(self) -> Iterator[tuple[str, int]]: ...


@runtime_checkable
class LocalPackagePool(PackagePool, Protocol):
    def path(self, sha256: str) -> Path: ...

    def temp_path(self, name: str) -> Path: ...


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FilesystemPool:
    """A LocalPackagePool under one directory: `files/ab/abcdef...` plus `tmp/`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files = self.root / "files"
        self.tmp = self.root / "tmp"
        self.files.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_key(sha256)
        return self.files / sha256[:2] / sha256

    def temp_path(self, name: str) -> Path:
        """A stable partial-download path (`<sha256>.part`): a resumed download finds what the
        last run wrote."""
        if not isinstance(name, str) or not _TEMP.fullmatch(name):
            raise BadKey(f"pool temporary name {str(name)[:100]!r} is not '<sha256>.part'")
        return self.tmp / name

    def has(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def import_file(self, src: Path, *, sha256: str, size: int, move: bool = False,
                    actual_sha256: str | None = None) -> None:
        """Verify `src` against `sha256`/`size` and place it in the pool atomically.

        `actual_sha256` is the digest the caller computed while writing `src` (a download
        hashes as it streams); without it the file is read and hashed here.
        """
        if self.has(sha256, size):
            if move:
                Path(src).unlink(missing_ok=True)
            return
        if actual_sha256 is not None:
            actual, actual_size = actual_sha256, Path(src).stat().st_size
        else:
            actual, actual_size = file_sha256(src)
        if actual_size != size or actual != sha256:
            raise VerifyError(
                f"{src}: expected size {size} sha256 {sha256}, got size {actual_size} sha256 {actual}"
            )
        dest = self.path(sha256)
        dest.parent.mkdir(exist_ok=True)
        if move:
            os.replace(src, dest)
            return
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=".import-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def remove(self, sha256: str) -> int:
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def walk(self) -> Iterator[tuple[str, int]]:
        """Every stored file as (sha256, size), one directory at a time (flat memory)."""
        for bucket in sorted(self.files.iterdir()):
            if not bucket.is_dir():
                continue
            with os.scandir(bucket) as entries:
                for entry in entries:
                    if entry.is_file() and _KEY.fullmatch(entry.name):
                        yield entry.name, entry.stat().st_size
