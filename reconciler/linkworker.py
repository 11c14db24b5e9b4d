"""A child process that hard-links pool files into a published tree.

Publishing a 20,000-package component makes ~10,000 directories and 20,000 links.
Those system calls cost seconds of kernel time; in a thread they would also need
the GIL between calls, which the publishing thread holds while it formats stanzas,
so the two would mostly take turns. A child process has no such lock: it links on
the second CPU while the parent writes the indexes.

Protocol (`tree._Linker` is the parent side). The parent writes `SRC\\0DEST\\0IDENTITY\\0`
triples to stdin as it goes and closes it at the end. IDENTITY is `SIZE:MTIME_NS:INODE`
of SRC as recorded when it was verified (empty when unknown). For each triple the
child first stats SRC: a file whose identity is not the recorded one is not linked but
reported `changed` (it may have been edited in place; the parent hashes it again).
Otherwise it links SRC to DEST, making DEST's directory when it is missing; a DEST
that is already the same file is fine. What it cannot settle it reports, one JSON
object per line on stdout (a file, so a long report never blocks the child), and the
parent decides: `changed`, `exists` (DEST is another file: the parent compares
contents), `nosrc` (SRC is missing), `cross` (another filesystem: the parent copies),
`error` (any other OSError, with its errno; the child stops there).

Only the standard library: the child starts in a few tens of milliseconds.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator

CROSS_DEVICE = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


def link(src: str, dest: str, expected: str = "-") -> str | None:
    """Link `src` to `dest` if `src` still has the `expected` identity ("-": do not
    check); None when done (or already the same file), else a report kind."""
    if expected != "-":
        try:
            st = os.stat(src)
        except FileNotFoundError:
            return "nosrc"
        if f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" != expected:
            return "changed"
    try:
        os.link(src, dest)
        return None
    except FileExistsError:
        try:
            return None if os.path.samestat(os.lstat(dest), os.stat(src)) else "exists"
        except FileNotFoundError:
            return "exists"
    except FileNotFoundError:
        # The directory is made on demand: on a switch nearly all of them exist, and a
        # mkdir that fails costs as much as one that succeeds.
        directory = os.path.dirname(dest)
        if not os.path.exists(src) or os.path.isdir(directory):
            return "nosrc"
        os.makedirs(directory, exist_ok=True)
        return link(src, dest)  # identity checked above already
    except OSError as exc:
        if exc.errno in CROSS_DEVICE:
            return "cross"
        raise


def triples(stream) -> Iterator[tuple[str, str, str]]:
    """(src, dest, identity) as they arrive: the child links while the parent still writes."""
    tokens: list[bytes] = []
    tail = b""
    while chunk := stream.read1(1 << 16):
        parts = (tail + chunk).split(b"\0")
        tail = parts.pop()
        tokens += parts
        for i in range(0, len(tokens) - 2, 3):
            yield os.fsdecode(tokens[i]), os.fsdecode(tokens[i + 1]), tokens[i + 2].decode()
        tokens = tokens[len(tokens) - len(tokens) % 3:]


def main() -> int:
    out = sys.stdout
    for src, dest, expected in triples(sys.stdin.buffer):
        try:
            kind = link(src, dest, expected or "unknown")
        except OSError as exc:
            out.write(json.dumps({"kind": "error", "dest": dest, "errno": exc.errno, "message": exc.strerror}) + "\n")
            return 1
        if kind:
            out.write(json.dumps({"kind": kind, "src": src, "dest": dest}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
