"""Reading and writing APT index files: Packages, Sources and Release.

Index files are big (Debian's main/binary-amd64 is ~63,000 stanzas, 50 MB unpacked),
so both directions stream: `iter_stanzas` yields one stanza at a time and
`IndexWriter` writes the plain, `.gz` and `.xz` forms of one index in a single pass,
hashing every byte on its way out, so no index is ever held whole in memory or
read back to be hashed.

`iter_stanzas` is a small deb822 parser of its own rather than python-debian's
`Deb822.iter_paragraphs`: without `apt_pkg` (not installable from PyPI) that parser
takes ~8 s for Debian's main Packages file where this one takes ~0.5 s. It returns
values exactly as `Deb822` does (first line stripped, continuation lines kept with
their leading whitespace, `#` comment lines dropped), so stanzas read either way
compare equal; the test suite checks that on a real index.

Upstream indexes are hostile input even when signed. `open_index(path, Expect(...))`
decompresses as a stream that stops at the first byte past its bounds (the plain
form's size as the Release lists it, or a configured maximum; and a maximum for one
stanza, so one endless line cannot grow in memory) and, at the end, checks the plain
form's size and SHA256 when the Release lists them: a gzip or xz bomb is an error
within a megabyte, with memory flat. `parse_release` keeps a malformed or
self-contradicting file row out of `files` and names it in `bad`, so a reader that
needs that file refuses it instead of skipping it silently. Continuation lines are
joined once per field, so a field of a million short lines costs linear time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import queue
import re
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, BinaryIO, Protocol, cast

from reconciler.errors import LimitError, VerifyError

ENCODING = "utf-8"
# Bytes that are not UTF-8 (old archives have Latin-1 descriptions) survive a
# read-then-write round trip unchanged.
ERRORS = "surrogateescape"

HASHES = ("md5", "sha1", "sha256", "sha512")
# Release section names and the hashlib names they stand for.
RELEASE_SECTIONS = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}



def iter_stanzas(fileobj: IO) -> Iterator[dict[str, str]]:
    """Yield each stanza of a deb822 file (text or binary file object) as an ordered dict."""
    text = fileobj if isinstance(fileobj, io.TextIOBase) else _text(fileobj)
    try:
        yield from _parse(text)
    finally:
        if text is not fileobj:
            text.detach()  # leave the caller's file open; closing it is the caller's job


def _text(fileobj: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(fileobj, encoding=ENCODING, errors=ERRORS, newline="\n")


def _parse(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    # Continuation lines are collected and joined once per field: `value += line` copies
    # the whole value each time, quadratic in a long field (a hostile index's weapon).
    stanza: dict[str, str] = {}
    key = None
    more: list[str] = []
    for line in lines:
        if line[0] in " \t" and line.strip():
            if key is not None:
                more.append(line.rstrip("\r\n"))
            continue
        if more and key is not None:  # (more is only ever collected under a key)
            stanza[key] = "\n".join([stanza[key], *more])
            more = []
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] == "#":
            continue
        else:
            key, _, value = line.partition(":")
            stanza[key] = value.strip()
    if more and key is not None:
        stanza[key] = "\n".join([stanza[key], *more])
    if stanza:
        yield stanza


@dataclass(frozen=True)
class Expect:
    """What the decompressed form of an upstream index must be.

    At most `limit` bytes in all and `max_stanza` in one stanza (so in one line); when
    the Release lists the plain form, exactly `size` bytes hashing to `sha256`.
    """

    name: str  # for messages: the index path as the Release names it
    limit: int
    max_stanza: int
    size: int | None = None
    sha256: str | None = None


def open_index(path: Path, expect: Expect | None = None) -> BinaryIO:
    """Open an index file for reading, decompressing by its name (.gz, .xz or plain).

    With `expect` (upstream indexes), the decompressed stream is checked as it is read:
    a bomb stops at the first byte past a bound, with memory flat.
    """
    fh: BinaryIO  # the decompressors are binary files too; typeshed does not call them BinaryIO
    if path.name.endswith(".gz"):
        fh = cast(BinaryIO, gzip.open(path, "rb"))
    elif path.name.endswith(".xz"):
        fh = cast(BinaryIO, lzma.open(path, "rb"))
    else:
        fh = open(path, "rb")
    if expect is None:
        return fh
    return io.BufferedReader(_Bounded(fh, expect), 1 << 20)


class _Bounded(io.RawIOBase):
    """A decompressed stream that counts, hashes and measures stanzas as bytes pass."""

    def __init__(self, stream: BinaryIO, expect: Expect):
        self.stream, self.expect = stream, expect
        self.total = 0
        self.run = 0  # bytes since the last blank line
        self.tail = b""
        self.hash = hashlib.sha256() if expect.sha256 else None
        self.finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.stream.read(len(buffer))
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise VerifyError(f"{self.expect.name}: damaged compressed data ({exc})") from None
        if not data:
            self._finish()
            return 0
        n = len(data)
        buffer[:n] = data
        self.total += n
        if self.total > self.expect.limit:
            raise LimitError(f"{self.expect.name}: decompresses to more than {self.expect.limit} bytes "
                             "(the size its Release lists, or spec.limits.maxIndexBytes); refusing this index")
        if self.hash is not None:
            self.hash.update(data)
        window = self.tail + data
        cut = max(window.rfind(b"\n\n"), window.rfind(b"\n\r\n"))
        self.run = self.run + n if cut < 0 else len(window) - cut
        if self.run > self.expect.max_stanza:
            raise LimitError(f"{self.expect.name}: a stanza or line longer than {self.expect.max_stanza} bytes "
                             "(spec.limits.maxStanzaBytes); refusing this index")
        self.tail = window[-2:]
        return n

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        expect = self.expect
        if expect.size is not None and self.total != expect.size:
            raise VerifyError(f"{expect.name}: decompresses to {self.total} bytes, its Release says {expect.size}")
        if self.hash is not None and self.hash.hexdigest() != expect.sha256:
            raise VerifyError(f"{expect.name}: decompressed data does not match the SHA256 its Release lists")

    def close(self) -> None:
        self.stream.close()
        super().close()


def format_stanza(fields: dict[str, str]) -> str:
    """One stanza as text, ending in its newline (no blank separator line), as Deb822 dumps it."""
    return "".join(
        f"{k}:{v}\n" if not v or v[0] == "\n" else f"{k}: {v}\n" for k, v in fields.items()
    )


def format_release(fields: dict[str, str], files: Iterable[tuple[str, int, dict[str, str]]]) -> str:
    """Release text: `fields`, then an MD5Sum/SHA1/SHA256/SHA512 section listing each file.

    `files` gives (path relative to dists/DIST, size, {hashlib name: hex}).
    """
    files = list(files)
    width = max((len(str(size)) for _, size, _ in files), default=1)
    sections = {
        section: "".join(f"\n {digests[algo]} {size:>{width}} {path}" for path, size, digests in files)
        for section, algo in RELEASE_SECTIONS.items()
    }
    return format_stanza({**fields, **sections})


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc2822(moment: datetime) -> str:
    """`Sat, 25 Nov 2026 12:00:00 UTC` as Release files date things, whatever the locale."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    m = moment.astimezone(timezone.utc)
    return f"{_DAYS[m.weekday()]}, {m.day:02d} {_MONTHS[m.month - 1]} {m.year} {m:%H:%M:%S} UTC"


@dataclass(frozen=True)
class ReleaseInfo:
    """A parsed Release file: its fields, and each listed file's size and digests."""

    fields: dict[str, str]
    files: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # path -> why its row is not trusted

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    @property
    def architectures(self) -> list[str]:
        return self.get("Architectures").split()

    @property
    def components(self) -> list[str]:
        return self.get("Components").split()

    @property
    def acquire_by_hash(self) -> bool:
        return self.get("Acquire-By-Hash").strip().lower() == "yes"


_RELEASE_ROW = {"md5": re.compile(r"[0-9a-fA-F]{32}"), "sha1": re.compile(r"[0-9a-fA-F]{40}"),
                "sha256": re.compile(r"[0-9a-fA-F]{64}"), "sha512": re.compile(r"[0-9a-fA-F]{128}")}
_SIZE = re.compile(r"[0-9]{1,15}")


def parse_release(text: str) -> ReleaseInfo:
    """Parse Release text; hash sections become `files[path] = (size, {"sha256": hex, ...})`.

    A row whose digest is not hex of its algorithm's length, whose size is not plain
    digits, or whose size disagrees with another section's, is not a file entry: its
    path goes to `bad` with the reason, and whoever needs that file refuses it.
    """
    stanzas = list(_parse(text.splitlines(keepends=True)))
    fields = stanzas[0] if stanzas else {}
    files: dict[str, tuple[int, dict[str, str]]] = {}
    bad: dict[str, str] = {}
    for section, algo in RELEASE_SECTIONS.items():
        for line in fields.get(section, "").splitlines():
            parts = line.split()
            if not parts:
                continue
            path = parts[-1]
            if len(parts) != 3 or not _RELEASE_ROW[algo].fullmatch(parts[0]) or not _SIZE.fullmatch(parts[1]):
                bad.setdefault(path, f"malformed {section} row {line.strip()[:200]!r}")
                continue
            digest, size = parts[0].lower(), int(parts[1])
            known = files.setdefault(path, (size, {}))
            if known[0] != size:
                bad.setdefault(path, f"{section} gives size {size}, another section {known[0]}")
            known[1][algo] = digest
    for path in bad:
        files.pop(path, None)
    return ReleaseInfo(fields=fields, files=files, bad=bad)


# The compressed forms an index can have, and the levels each takes. The defaults,
# and the measurements behind them, are in `spec.Compression`.
COMPRESSED_FORMS = {".gz": range(1, 10), ".xz": range(0, 10)}


class _HashingSink:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.size = 0
        self.hashes = {name: hashlib.new(name) for name in HASHES}

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.size += len(data)
        for h in self.hashes.values():
            h.update(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def digests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self.hashes.items()}


@dataclass(frozen=True)
class WrittenFile:
    """A file an IndexWriter produced: where, how big, and its four digests."""

    path: Path
    size: int
    digests: dict[str, str]


class IndexWriter:
    """Write one index as `NAME`, `NAME.gz` and `NAME.xz` in one pass, hashing each as written.

    Stanzas are buffered into blocks (~256 KiB) so the compressors see large writes;
    gzip output carries no name or time stamp, so identical input gives identical
    files and identical by-hash names across publishes.
    """

    BLOCK = 256 * 1024

    def __init__(self, path: Path, *, levels: Mapping[str, int]):
        """`levels`: compressed form (".gz", ".xz") -> its level; the plain form is always written."""
        self.path = path
        self._buffer: list[str] = []
        self._buffered = 0
        self._raws = []
        self._sinks: dict[str, _HashingSink] = {}
        self._streams: dict[str, BinaryIO] = {}
        for suffix, level in levels.items():  # before any file is opened
            if level not in COMPRESSED_FORMS.get(suffix, ()):
                raise ValueError(f"{suffix}: compression level {level} is not supported")
        for suffix in ("", *levels):
            raw = open(path.with_name(path.name + suffix), "wb")
            self._raws.append(raw)
            sink = self._sinks[suffix] = _HashingSink(raw)
            self._streams[suffix] = _compressor(suffix, levels, sink)
        self.count = 0

    def add(self, fields: dict[str, str]) -> None:
        text = format_stanza(fields) + "\n"
        self._buffer.append(text)
        self._buffered += len(text)
        self.count += 1
        if self._buffered >= self.BLOCK:
            self._drain()

    def _drain(self) -> None:
        data = "".join(self._buffer).encode(ENCODING, ERRORS)
        self._buffer, self._buffered = [], 0
        for stream in self._streams.values():
            stream.write(data)

    def close(self) -> list[WrittenFile]:
        """Finish every form and return them, plain first."""
        self._drain()
        for suffix, stream in self._streams.items():
            if stream is not self._sinks[suffix]:
                stream.close()  # writes the compressor's trailer into the sink
        for raw in self._raws:
            raw.close()
        return [
            WrittenFile(self.path.with_name(self.path.name + s), sink.size, sink.digests())
            for s, sink in self._sinks.items()
        ]

    def abort(self) -> None:
        for stream in self._streams.values():
            if isinstance(stream, _Background):
                stream.stop()
        for raw in self._raws:
            raw.close()


def _compressor(suffix: str, levels: Mapping[str, int], sink: _HashingSink):
    if suffix == ".gz":
        return _Background(gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=levels[suffix]))
    if suffix == ".xz":  # LZMAFile only writes to its file (typeshed asks for an IO[bytes])
        return _Background(lzma.LZMAFile(cast(IO[bytes], sink), "wb", preset=levels[suffix]))
    return sink


class _Writable(Protocol):
    """What a compressor is to `_Background`: something bytes are written to, then closed."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


class _Background:
    """Feeds a compressor from its own thread.

    zlib, lzma and hashlib release the GIL on large buffers, so the gzip and xz forms
    compress on other cores while the main thread formats the next stanzas. The queue
    is bounded, so memory stays a few blocks whatever the index size.
    """

    def __init__(self, stream: _Writable) -> None:
        self.stream = stream
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="index-compress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.stream.write(data)
                except BaseException as exc:  # reported to the writer's thread at close
                    self.error = exc

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.queue.put(data)
        return len(data)

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def close(self) -> None:
        self.stop()
        if self.error is not None:
            raise self.error
        self.stream.close()


def write_small(path: Path, text: str) -> WrittenFile:
    """Write a small file whole (a per-component Release) and return its digests."""
    data = text.encode(ENCODING, ERRORS)
    path.write_bytes(data)
    digests = {name: hashlib.new(name, data).hexdigest() for name in HASHES}
    return WrittenFile(path, len(data), digests)
