"""The upstream both tools mirror: a signed synthetic archive served on 127.0.0.1.

`Upstream.day_one()` builds `examples.synthetic(n)`; `next_day()` gives ~5% of the
packages a new version, removes ~1%, and rebuilds with a Date one day later (old pool
files stay, as on a real archive). The request log of the server is what the resume
step counts.

The test server sets TCP_NODELAY: without it each keep-alive response would wait for
the client's delayed ACK (~40 ms) and the benchmark would measure the server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from tests.support import examples, gpgkeys, server
from tests.support.archive import DEFAULT_DATE, ArchiveBuilder

DISTRIBUTION = "bench"


@dataclass
class Upstream:
    n: int
    root: Path
    key: gpgkeys.GpgKey
    pad: int = 4096
    day: int = 0
    builder: ArchiveBuilder | None = None
    server: server.ArchiveServer | None = None
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def day_one(self) -> None:
        self.builder = examples.synthetic(self.n, pad=self.pad)
        self._build()
        self.server = server.ArchiveServer(self.root).start()

    def next_day(self, *, seed: int = 1, new_share: float = 0.05, removed_share: float = 0.01) -> None:
        rng = random.Random(seed)
        binaries = list(self.builder.binaries)
        picked = rng.sample(binaries, int(len(binaries) * (new_share + removed_share)))
        removed = picked[: int(len(binaries) * removed_share)]
        for b in picked[len(removed):]:
            b.version = _bump(b.version)
        for b in removed:
            self.builder.remove(b.name, b.version, arch=b.arch)
        self.changed = {"new_versions": len(picked) - len(removed), "removed": len(removed)}
        self._build()

    def package_count(self) -> int:
        return len(self.builder.binaries)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _build(self) -> None:
        date = DEFAULT_DATE + timedelta(days=self.day)
        self.builder.build(self.root, distribution=DISTRIBUTION, date=date, sign_with=self.key)
        self.day += 1


def _bump(version: str) -> str:
    """A strictly higher Debian revision: 1.2-3 -> 1.2-3+bench1."""
    return version + "+bench1"
