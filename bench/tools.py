"""The three tools under test, as command lines for each step of the scenario.

All expose the same verbs: `create()` (make the mirror, where that is a step of its
own), `update()` (sync the mirror with upstream: a full sync the first time, an
incremental one later), `snapshot(name)`, `publish(snapshot)` (first publish, or a
switch when already published) and `after_kill()` (what an operator must do before
rerunning a step that was killed). A verb the tool has no equivalent for returns None
and the step is reported as not applicable. `reconciler` is driven the GitOps way:
each step writes the spec set as it stands at that point and runs `reconciler apply`
on all of it, so each of its steps also re-checks the mirror's upstream Release (one
request and a gpgv). `aptly` and `reprepro` run their imperative commands.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.upstream import DISTRIBUTION

MIRROR = "bench"
RECONCILER = str(Path(sys.executable).parent / "reconciler")
APTLY = "/usr/bin/aptly"
REPREPRO = "/usr/bin/reprepro"


@dataclass
class Keys:
    """The upstream archive's public keyring and fingerprint, the publishing key
    (fingerprint, armored secret, binary public keyring, and a GNUPGHOME holding it for
    aptly), and reprepro's GNUPGHOME: the publishing secret key plus the upstream public
    key, since reprepro signs and verifies through gpgme with one keyring."""

    upstream_keyring: Path
    upstream_fpr: str
    signing_fpr: str
    signing_secret: Path
    signing_keyring: Path
    signing_home: Path
    reprepro_home: Path


@dataclass
class Reconciler:
    name = "reconciler"
    notes = ()  # printed under the table
    root: Path
    url: str
    keys: Keys
    snapshots: list[str] = field(default_factory=list)
    published: str | None = None

    @property
    def specs(self) -> Path:
        return self.root.parent / f"{self.root.name}-specs"

    def prepare(self) -> None:
        self.specs.mkdir(parents=True, exist_ok=True)

    def create(self) -> list[str] | None:
        """No separate step: the first apply creates the mirror."""
        return None

    def update(self) -> list[str]:
        return self._apply()

    def snapshot(self, name: str) -> list[str]:
        self.snapshots.append(name)
        return self._apply()

    def publish(self, snapshot: str) -> list[str]:
        self.published = snapshot
        return self._apply()

    def after_kill(self) -> None:
        """Nothing: the next apply takes over."""

    def env(self) -> dict[str, str]:
        """Without RECONCILER_STATE: the state is what `_state()` says, never the caller's."""
        return {k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"}

    def _state(self) -> list[str]:
        """The default state: ROOT/state.db (SQLite)."""
        return []

    def _apply(self) -> list[str]:
        (self.specs / "bench.yaml").write_text(yaml.safe_dump_all(self._documents(), sort_keys=False))
        return [RECONCILER, "--root", str(self.root), *self._state(), "apply", "-f", str(self.specs)]

    def _documents(self) -> list[dict]:
        docs = [_doc("Mirror", MIRROR, {
            "url": self.url, "distribution": DISTRIBUTION, "components": ["main"],
            "architectures": ["amd64"], "keyrings": [str(self.keys.upstream_keyring)]})]
        docs += [_doc("Snapshot", s, {"mirror": MIRROR}) for s in self.snapshots]
        if self.published:
            docs.append(_doc("Publish", "bench", {
                "distribution": DISTRIBUTION, "components": {"main": self.published},
                "signing": {"keyFile": str(self.keys.signing_secret)}}))
        return docs


@dataclass
class ReconcilerPg(Reconciler):
    """The same steps as `Reconciler`, with the state in a PostgreSQL database of its own
    (`--state URL`); the pool and the published trees stay under the root, as with SQLite,
    so the two columns differ only in where the state lives."""

    name = "reconciler-pg"
    notes = ("reconciler-pg: reconciler with --state postgresql://… (a fresh database per size and for "
             "the resume run, local server on a unix socket at its durability defaults; the product's sessions "
             "commit with synchronous_commit=off, as SQLite's WAL at synchronous=NORMAL does)",)
    state: str = ""  # the database's URL

    def _state(self) -> list[str]:
        return ["--state", self.state]


def _doc(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@dataclass
class Aptly:
    name = "aptly"
    notes = ()  # printed under the table
    root: Path
    url: str
    keys: Keys
    published: str | None = None

    @property
    def config(self) -> Path:
        return self.root / "aptly.conf"

    def prepare(self) -> None:
        """Write the throwaway config (rootDir inside our temp dir, signatures verified)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "rootDir": str(self.root / "data"), "downloadConcurrency": 4, "architectures": [],
            "gpgDisableVerify": False, "gpgDisableSign": False, "gpgProvider": "gpg"}, indent=2))

    def create(self) -> list[str] | None:
        return self._cmd("mirror", "create", self._upstream_keyring(), "-architectures=amd64",
                         MIRROR, self.url, DISTRIBUTION, "main")

    def update(self) -> list[str]:
        return self._cmd("mirror", "update", self._upstream_keyring(), MIRROR)

    def snapshot(self, name: str) -> list[str]:
        return self._cmd("snapshot", "create", name, "from", "mirror", MIRROR)

    def publish(self, snapshot: str) -> list[str]:
        first, self.published = self.published is None, snapshot
        if first:
            return self._cmd("publish", "snapshot", *self._signing(), "-acquire-by-hash",
                             f"-distribution={DISTRIBUTION}", snapshot)
        return self._cmd("publish", "switch", *self._signing(), DISTRIBUTION, snapshot)

    def after_kill(self) -> None:
        """Nothing: aptly sees that the PID in its lock is gone (the scenario waits for that)."""

    def env(self) -> dict[str, str]:
        """aptly signs through gpg, which finds the secret key in GNUPGHOME."""
        return {**os.environ, "GNUPGHOME": str(self.keys.signing_home)}

    def _upstream_keyring(self) -> str:
        return f"-keyring={self.keys.upstream_keyring}"

    def _signing(self) -> list[str]:
        return ["-skip-contents", f"-gpg-key={self.keys.signing_fpr}",
                f"-keyring={self.keys.signing_keyring}"]

    def _cmd(self, *args: str) -> list[str]:
        return [APTLY, f"-config={self.config}", *args]


@dataclass
class Reprepro:
    """reprepro 5.3: one distribution whose `Update:` rule pulls the upstream.

    `reprepro update` downloads what changed (through apt's http method), imports it and
    exports the signed dists/ tree in the same run: its publish is part of every update.
    `gensnapshot` writes dists/CODENAME/snapshots/NAME as a signed tree of its own and
    references its pool files, so a snapshot is published when it is made. There is no
    step that publishes a snapshot, or switches a published tree to another one.
    """

    name = "reprepro"
    notes = ("reprepro: every update also exports the signed dists/ tree (its publish is part of its sync "
             "rows); gensnapshot writes a signed snapshot tree; no mirror create, first publish or switch (—)",
             "reprepro: db/lockfile of the killed run removed before the rerun, as reprepro(1) says (untimed)")
    root: Path
    url: str
    keys: Keys

    def prepare(self) -> None:
        """Write conf/: the distribution (signed with the publishing key, indices as
        reconciler writes them: plain, .gz, .xz) and its update rule (Release verified
        against the upstream key: reprepro takes its long key ID, not a fingerprint).

        `Update: - upstream`: the leading "-" marks every package for deletion unless the
        rule provides it, so the distribution is exactly upstream, as a mirror is. With
        `Update: upstream` alone, packages removed upstream would stay."""
        conf = self.root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "distributions").write_text(_stanza(
            Codename=DISTRIBUTION, Architectures="amd64", Components="main",
            DebIndices="Packages Release . .gz .xz", SignWith=self.keys.signing_fpr, Update="- upstream"))
        (conf / "updates").write_text(_stanza(
            Name="upstream", Method=self.url, Suite=DISTRIBUTION, Components="main",
            Architectures="amd64", VerifyRelease=self.keys.upstream_fpr[-16:]))

    def create(self) -> list[str] | None:
        """No separate step: the first update creates the database."""
        return None

    def update(self) -> list[str]:
        return self._cmd("update", DISTRIBUTION)

    def snapshot(self, name: str) -> list[str]:
        return self._cmd("gensnapshot", DISTRIBUTION, name)

    def publish(self, snapshot: str) -> list[str] | None:
        """Not applicable: `update` exports the distribution, `gensnapshot` the snapshot."""
        return None

    def after_kill(self) -> None:
        """Remove the stale db/lockfile, as reprepro(1) says to after it was killed:
        reprepro refuses to start while it exists."""
        (self.root / "db" / "lockfile").unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """gpgme (signing and verification) finds both keys in GNUPGHOME."""
        return {**os.environ, "GNUPGHOME": str(self.keys.reprepro_home)}

    def _cmd(self, *args: str) -> list[str]:
        return [REPREPRO, "--basedir", str(self.root), *args]


def _stanza(**fields: str) -> str:
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


TOOLS = (Reconciler, ReconcilerPg, Aptly, Reprepro)  # ours first, ours on PostgreSQL, then the peers
OURS, OURS_PG = Reconciler.name, ReconcilerPg.name
