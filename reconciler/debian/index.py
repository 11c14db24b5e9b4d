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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, BinaryIO

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


def _text(fileobj: BinaryIO) -> io.TextIOWrapper:
    return io.TextIOWrapper(fileobj, encoding=ENCODING, errors=ERRORS, newline="\n")


def _parse(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = None
    for line in lines:
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] == "#":
            continue
        elif line[0] in " \t":
            if key is not None:
                stanza[key] += "\n" + line.rstrip("\r\n")
        else:
            key, _, value = line.partition(":")
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def open_index(path: Path) -> BinaryIO:
    """Open an index file for reading, decompressing by its name (.gz, .xz or plain)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


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


def parse_release(text: str) -> ReleaseInfo:
    """Parse Release text; hash sections become `files[path] = (size, {"sha256": hex, ...})`."""
    stanzas = list(_parse(text.splitlines(keepends=True)))
    fields = stanzas[0] if stanzas else {}
    files: dict[str, tuple[int, dict[str, str]]] = {}
    for section, algo in RELEASE_SECTIONS.items():
        for line in fields.get(section, "").splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            digest, size, path = parts[0].lower(), int(parts[1]), parts[2]
            known = files.setdefault(path, (size, {}))
            known[1][algo] = digest
    return ReleaseInfo(fields=fields, files=files)


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
            self._streams[suffix] = _compressor(suffix, levels.get(suffix), sink)
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


def _compressor(suffix: str, level: int | None, sink: _HashingSink):
    if suffix == ".gz":
        return _Background(gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=level))
    if suffix == ".xz":
        return _Background(lzma.LZMAFile(sink, "wb", preset=level))
    return sink


class _Background:
    """Feeds a compressor from its own thread.

    zlib, lzma and hashlib release the GIL on large buffers, so the gzip and xz forms
    compress on other cores while the main thread formats the next stanzas. The queue
    is bounded, so memory stays a few blocks whatever the index size.
    """

    def __init__(self, stream):
        self.stream = stream
        self.queue: queue.Queue = queue.Queue(maxsize=4)
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
