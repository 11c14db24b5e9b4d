"""Per-kind stores over the state database.

Shallow and complete loads are different calls (listing must never pay for package lists): `get`/`list` return
rows with their package count and never touch the package lists; `PackageLists.ids`
and `Packages.load` read a list on purpose. A store never opens a connection of its
own: a task hands it the connection it runs its transaction on.
"""

from __future__ import annotations

import bisect
import builtins
import hashlib
import json
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone

from pydantic import BaseModel, ValidationError

from reconciler.debian.package import Package, PackageFile
from reconciler.errors import StateError
from reconciler.spec import MirrorSpec, PublishSpec, SnapshotSpec
from reconciler.state import backend
from reconciler.state.backend import Session
from reconciler.state.rows import MirrorRow, PublishRow, SnapshotRow

CHUNK = 500
TASK_HISTORY = 1000  # tasks kept in the table (and shown by the API): the newest ones


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _chunks(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


RESTORE = "restore state.db from a backup"


def _stored_json(what: str, column: str, text: str | None, default: object = None) -> object:
    """A JSON column of a stored row; a value that does not parse names the object."""
    if not text and default is not None:
        return default
    try:
        return json.loads(text)  # type: ignore[arg-type]  # None is refused below, naming the object
    except (TypeError, ValueError) as exc:
        raise StateError(f"{what}: stored {column} is not valid JSON ({exc}); {RESTORE}") from None


def _stored_spec(what: str, text: str, model: type[BaseModel]) -> dict:
    """The spec column of a mirror, snapshot or publish row, checked against its model
    (the row keeps its dict: later code compares it as stored)."""
    spec = _stored_json(what, "spec", text)
    try:
        model.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise StateError(f"{what}: stored spec is not a valid spec ({where}: {first['msg']}); {RESTORE}") from None
    assert isinstance(spec, dict)  # a model validated it
    return spec


def _stored_files(what: str, text: str) -> list[tuple[str, int, str]]:
    """A package row's files column: [[path, size, sha256], ...]."""
    files = _stored_json(what, "files", text)
    if not isinstance(files, list) or not all(
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and isinstance(f[1], int)
            and isinstance(f[2], str) for f in files):
        raise StateError(f"{what}: stored files are not a list of [path, size, sha256]; {RESTORE}")
    return files


def _json_ids(ids: Sequence[int]) -> str:
    """Ids as one JSON array parameter: `id IN {dialect.ids()}` takes any count."""
    return json.dumps(list(ids))


class PackageLists:
    """Content-addressed package lists: sorted package ids, compressed, stored once per content."""

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    @staticmethod
    def encode(ids: Iterable[int]) -> tuple[bytes, int]:
        values = array("q", sorted(set(ids)))
        return zlib.compress(values.tobytes(), 6), len(values)

    @staticmethod
    def decode(blob: bytes) -> array:
        values = array("q")
        values.frombytes(zlib.decompress(blob))
        return values

    def digest(self, ids: Sequence[int]) -> str:
        """sha256 over the sorted package keys: the same content gives the same digest anywhere."""
        digest = hashlib.sha256()
        keys: list[str] = []
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            keys += [r[0] for r in self.db.execute(f"SELECT key FROM packages WHERE id IN ({marks})", chunk)]
        for key in sorted(keys):
            digest.update(key.encode() + b"\n")
        return digest.hexdigest()

    def put(self, ids: Iterable[int]) -> str:
        blob, count = self.encode(ids)
        values = self.decode(blob)
        digest = self.digest(values)
        self.db.execute("INSERT INTO package_lists (digest, count, ids) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        (digest, count, blob))
        return digest

    def ids(self, digest: str | None) -> array:
        if digest is None:
            return array("q")
        row = self.db.execute("SELECT ids FROM package_lists WHERE digest = ?", (digest,)).fetchone()
        if not row:
            return array("q")
        try:
            return self.decode(row[0])
        except (zlib.error, ValueError, TypeError) as exc:
            raise StateError(f"{self._owners(digest)}: the stored package list {digest[:12]} does not decode "
                             f"({exc}); {RESTORE}") from None

    def _owners(self, digest: str) -> str:
        """Who names a list, for an error message about it."""
        names = [r[0] for r in self.db.execute(
            "SELECT 'mirror/' || name FROM mirrors WHERE list_digest = ?"
            " UNION SELECT 'snapshot/' || name FROM snapshots WHERE list_digest = ? ORDER BY 1", (digest, digest))]
        return ", ".join(names) or f"package list {digest[:12]}"

    _UNNAMED = ("digest NOT IN (SELECT list_digest FROM mirrors WHERE list_digest IS NOT NULL)"
                " AND digest NOT IN (SELECT list_digest FROM snapshots)"
                " AND digest NOT IN (SELECT l.digest FROM pending_lists l JOIN tasks t ON t.id = l.task_id"
                " WHERE t.state IN ('queued', 'running'))")

    def hold(self, task_id: int, digest: str) -> None:
        """Keep list `digest` (and its packages) from a prune while task `task_id` runs: it
        stored the list and switches to it later, in another transaction."""
        self.db.execute("INSERT INTO pending_lists (task_id, digest) VALUES (?, ?)"
                        " ON CONFLICT (task_id) DO UPDATE SET digest = excluded.digest", (task_id, digest))

    def release(self, task_id: int) -> None:
        """The task switched to its list (or gave up): it no longer needs holding."""
        self.db.execute("DELETE FROM pending_lists WHERE task_id = ?", (task_id,))

    def prune(self) -> int:
        """Drop lists no mirror or snapshot names any more, and the packages only they held.

        Incremental, so a routine update pays for what it replaced, not for the whole
        table: the candidates are the packages of the lists dropped now, less those any
        remaining list holds (each remaining list is decoded once; ~15-30 ms for a
        20,000-package mirror and a fortnight of snapshots: bench/prune.py). A list a
        running task holds (`hold`: stored, not switched to yet) counts as named.
        Packages no list ever held (an update killed between storing its packages and
        its list) are left for `Packages.prune_unlisted` (gc)."""
        dead = self.db.execute(f"SELECT digest, ids FROM package_lists WHERE {self._UNNAMED}").fetchall()
        if not dead:
            return 0
        candidates: set[int] = set()
        for _digest, blob in dead:
            try:
                candidates.update(self.decode(blob))
            except (zlib.error, ValueError, TypeError):
                pass  # a damaged list: what it held is left for gc's full sweep
        self.db.execute(f"DELETE FROM package_lists WHERE {self._UNNAMED}")
        for (blob,) in self.db.execute("SELECT ids FROM package_lists"):
            if not candidates:
                break
            try:
                held = self.decode(blob)
            except (zlib.error, ValueError, TypeError):
                return len(dead)  # what a damaged list holds is unknown: delete no package
            _discard_held(candidates, held)
        if candidates:
            self.db.execute(f"DELETE FROM packages WHERE id IN {self.d.ids()}",
                            (_json_ids(sorted(candidates)),))
        return len(dead)

    def held(self) -> set[int]:
        """Every package id any stored list holds (decodes every list: for gc)."""
        ids: set[int] = set()
        for (digest,) in self.db.execute("SELECT digest FROM package_lists").fetchall():
            ids.update(self.ids(digest))
        return ids


def _discard_held(candidates: set[int], held: array) -> None:
    """Remove from `candidates` the ids in the sorted array `held`: by binary search when
    few are left (the usual case after the first list), else in one pass over `held`."""
    if len(candidates) * 16 < len(held):
        for id_ in list(candidates):
            at = bisect.bisect_left(held, id_)
            if at < len(held) and held[at] == id_:
                candidates.discard(id_)
    else:
        candidates.difference_update(held)


class Packages:
    """One row per distinct package file, with its control stanza."""

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    def add(self, packages: Iterable[Package]) -> builtins.list[int]:
        """Store packages not seen before; return the id of each, in order.

        Only the new ones are encoded: a next-day update of a 20,000-package mirror
        finds ~95% of them stored already."""
        packages = list(packages)
        keys = [p.key for p in packages]
        ids = self._ids(keys)
        rows = [
            (p.key, p.type, p.name, p.version, p.arch, p.source_name,
             p.files[0].sha256 if p.files else "", sum(f.size for f in p.files),
             json.dumps(p.fields), json.dumps([[f.path, f.size, f.sha256] for f in p.files]))
            for p in packages if p.key not in ids
        ]
        if rows:
            self.db.executemany(
                "INSERT INTO packages (key, type, name, version, arch, source, sha256, size, fields, files)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            ids.update(self._ids([r[0] for r in rows]))
        return [ids[k] for k in keys]

    def prune_unlisted(self, held: set[int]) -> int:
        """Delete every package whose id is not in `held` (`PackageLists.held`): the full
        sweep gc makes, which also finds rows of updates that stored packages and then
        failed before storing their list."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM packages") if r[0] not in held]
        for chunk in _chunks(ids):
            self.db.execute(f"DELETE FROM packages WHERE id IN {self.d.ids()}", (_json_ids(chunk),))
        return len(ids)

    def _ids(self, keys: Sequence[str]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            ids.update(self.db.execute(f"SELECT key, id FROM packages WHERE key IN ({marks})", chunk).fetchall())
        return ids

    def identities(self, ids: Sequence[int]) -> Iterator[tuple[str, str, str, str]]:
        """(type, name, arch, key) of each package: what an update diff needs, without
        decoding any stanza."""
        yield from self.db.execute(
            f"SELECT type, name, arch, key FROM packages WHERE id IN {self.d.ids()}",
            (_json_ids(ids),))

    def versions(self, ids: Sequence[int]) -> Iterator[tuple[int, str, str, str, str]]:
        """(id, type, name, arch, version) of each package, without decoding any stanza."""
        yield from self.db.execute(
            f"SELECT id, type, name, arch, version FROM packages WHERE id IN {self.d.ids()}",
            (_json_ids(ids),))

    @staticmethod
    def _package(row: tuple) -> Package:
        id_, type_, name, version, arch, fields, files = row
        what = f"package {name}_{version}_{arch} (id {id_})"
        stanza = _stored_json(what, "fields", fields)
        if not isinstance(stanza, dict):
            raise StateError(f"{what}: stored fields are not a JSON object; {RESTORE}")
        return Package(type_, name, version, arch, stanza,
                       tuple(PackageFile(p, s, h) for p, s, h in _stored_files(what, files)))

    def load(self, ids: Iterable[int]) -> Iterator[tuple[int, Package]]:
        """Packages by id, a chunk at a time (memory follows the chunk, not the list)."""
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    f"SELECT id, type, name, version, arch, fields, files FROM packages WHERE id IN ({marks})", chunk):
                yield row[0], self._package(row)

    # The order a published index lists packages in. Text compares byte by byte (UTF-8:
    # SQLite always, PostgreSQL because every text column is COLLATE "C"), which is the
    # code point order Python compares str in, so this matches
    # sorting by `(p.name, p.version, p.arch, p.type)`; the id makes ties deterministic.
    ORDER = "name, version, arch, type, id"

    def ordered(self, ids: Sequence[int]) -> Iterator[Package]:
        """The packages of a list sorted by name, version, arch and type, streamed.

        The database sorts (spilling to disk if it must); Python holds one row at a time, so
        publishing Debian's 65,000-package main costs no more memory than a small list.
        """
        for row in self.db.stream(
                "SELECT id, type, name, version, arch, fields, files FROM packages"
                f" WHERE id IN {self.d.ids()} ORDER BY {self.ORDER}", (_json_ids(ids),)):
            yield self._package(row)

    def kinds(self, ids: Sequence[int]) -> set[tuple[str, str]]:
        """The distinct (type, arch) pairs in a list, without loading its packages."""
        rows = self.db.execute(
            f"SELECT DISTINCT type, arch FROM packages WHERE id IN {self.d.ids()}",
            (_json_ids(ids),))
        return {(t, a) for t, a in rows}

    def source_files(self, ids: Sequence[int]) -> Iterator[tuple[str, str]]:
        """(source name, file path) of every file of the packages, without decoding any
        control stanza: the database takes the paths out of the stored JSON."""
        try:
            yield from self.db.stream(
                f"SELECT p.source, {self.d.element('f', 0)} FROM packages p, {self.d.elements('p.files', 'f')}"
                f" WHERE p.id IN {self.d.ids()}", (_json_ids(ids),))
        except backend.DATABASE_ERRORS as exc:
            if "json" in str(exc).lower():
                self._malformed(ids)
            raise

    def _malformed(self, ids: Sequence[int]) -> None:
        """Name the package whose stored files the database could not read as JSON."""
        bad = self.db.execute(
            f"SELECT id, name, version, arch FROM packages WHERE id IN {self.d.ids()}"
            f" AND NOT {self.d.json_valid('files')} LIMIT 1", (_json_ids(ids),)).fetchone()
        if bad:
            id_, name, version, arch = bad
            raise StateError(f"package {name}_{version}_{arch} (id {id_}): stored files is not valid JSON; "
                             f"{RESTORE}")

    def files_among(self, ids: Sequence[int], shas: Iterable[str]) -> Iterator[tuple[str, int, str]]:
        """(sha256, size, path) of the files of these packages that are among `shas`;
        the database reads the stored JSON (~0.1 s for 20,000 packages, half of decoding it here)."""
        yield from self.db.execute(
            f"SELECT DISTINCT {self.d.element('f', 2)}, {self.d.element('f', 1, integer=True)},"
            f" {self.d.element('f', 0)} FROM packages p, {self.d.elements('p.files', 'f')}"
            f" WHERE p.id IN {self.d.ids()}"
            f" AND {self.d.element('f', 2)} IN (SELECT value FROM {self.d.texts('?')})",
            (_json_ids(ids), json.dumps(sorted(shas))))

    def files(self, ids: Iterable[int]) -> Iterator[tuple[str, int, str]]:
        """(sha256, size, path) of every file of the given packages."""
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for id_, key, files in self.db.execute(f"SELECT id, key, files FROM packages WHERE id IN ({marks})",
                                                    chunk):
                for path, size, sha in _stored_files(f"package {key} (id {id_})", files):
                    yield sha, size, path


class Mirrors:
    _SELECT = ("SELECT m.*, COALESCE(l.count, 0) AS num_packages FROM mirrors m"
               " LEFT JOIN package_lists l ON l.digest = m.list_digest")

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    @staticmethod
    def _row(row: dict) -> MirrorRow:
        row = dict(row)
        what = f"mirror/{row['name']}"
        row["spec"] = _stored_spec(what, row["spec"], MirrorSpec)
        row["upstream"] = _stored_json(what, "upstream", row["upstream"], {})
        row["protect"], row["update_complete"] = bool(row["protect"]), bool(row["update_complete"])
        return MirrorRow(**row)

    def get(self, name: str) -> MirrorRow | None:
        rows = list(self.db.query(self._SELECT + " WHERE m.name = ?", [name]))
        return self._row(rows[0]) if rows else None

    def list(self) -> list[MirrorRow]:
        return [self._row(r) for r in self.db.query(self._SELECT + " ORDER BY m.name")]

    def create(self, name: str, *, owner: str, spec: dict, protect: bool) -> None:
        stamp = now()
        self.db.execute(
            "INSERT INTO mirrors (name, owner, spec, protect, status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'new', ?, ?)", (name, owner, json.dumps(spec), int(protect), stamp, stamp))

    def update(self, name: str, **values: object) -> None:
        for key in ("spec", "upstream"):
            if key in values:
                values[key] = json.dumps(values[key])
        values["updated_at"] = now()
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE mirrors SET {sets} WHERE name = ?", [*values.values(), name])

    def rename(self, old: str, new: str) -> None:
        """Rename in place; snapshots taken from it follow, in their source and their stored spec."""
        self.db.execute("UPDATE mirrors SET name = ?, updated_at = ? WHERE name = ?", (new, now(), old))
        for name, spec in self.db.execute("SELECT name, spec FROM snapshots WHERE source_mirror = ?",
                                          (old,)).fetchall():
            spec = dict(json.loads(spec), mirror=new)
            self.db.execute("UPDATE snapshots SET source_mirror = ?, spec = ? WHERE name = ?",
                            (new, json.dumps(spec), name))

    def delete(self, name: str) -> None:
        self.db.execute("DELETE FROM mirrors WHERE name = ?", (name,))

    def users(self, name: str) -> builtins.list[str]:
        """Snapshots taken from this mirror: what blocks dropping it."""
        return [r[0] for r in self.db.execute(
            "SELECT name FROM snapshots WHERE source_mirror = ? ORDER BY name", (name,))]


class Snapshots:
    _SELECT = ("SELECT s.*, COALESCE(l.count, 0) AS num_packages FROM snapshots s"
               " LEFT JOIN package_lists l ON l.digest = s.list_digest")

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    @staticmethod
    def _row(row: dict) -> SnapshotRow:
        row = dict(row)
        what = f"snapshot/{row['name']}"
        row["spec"] = _stored_spec(what, row["spec"], SnapshotSpec)
        row["source_snapshots"] = _stored_json(what, "source_snapshots", row["source_snapshots"], [])
        row["protect"] = bool(row["protect"])
        return SnapshotRow(**row)

    def get(self, name: str) -> SnapshotRow | None:
        rows = list(self.db.query(self._SELECT + " WHERE s.name = ?", [name]))
        return self._row(rows[0]) if rows else None

    def list(self) -> list[SnapshotRow]:
        return [self._row(r) for r in self.db.query(self._SELECT + " ORDER BY s.name")]

    def of_series(self, series: str) -> builtins.list[SnapshotRow]:
        return [self._row(r) for r in self.db.query(self._SELECT + " WHERE s.series = ? ORDER BY s.name", [series])]

    def create(self, name: str, *, owner: str, spec: dict, protect: bool, list_digest: str,
               source_mirror: str | None, source_snapshots: builtins.list[str], series: str | None = None,
               created_at: str | None = None) -> None:
        """`created_at` (default: now) is when the snapshot was taken; a series dates its
        members by it, on the clock its planner reads."""
        self.db.execute(
            "INSERT INTO snapshots (name, owner, spec, protect, source_mirror, source_snapshots, series,"
            " list_digest, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, owner, json.dumps(spec), int(protect), source_mirror, json.dumps(source_snapshots),
             series, list_digest, created_at or now()))

    def update(self, name: str, **values: object) -> None:
        if "spec" in values:
            values["spec"] = json.dumps(values["spec"])
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE snapshots SET {sets} WHERE name = ?", [*values.values(), name])

    def rename(self, old: str, new: str) -> None:
        """Rename in place; every reference follows: snapshots merged from it (their sources
        and stored specs) and publishes pointing at it (their sources and stored specs)."""
        self.db.execute("UPDATE snapshots SET name = ? WHERE name = ?", (new, old))
        follow = lambda names: [new if n == old else n for n in names]  # noqa: E731
        for name, spec, sources in self.db.execute(
                "SELECT name, spec, source_snapshots FROM snapshots WHERE EXISTS"
                f" (SELECT 1 FROM {self.d.texts('source_snapshots')} WHERE value = ?)", (old,)).fetchall():
            spec = json.loads(spec)
            spec["snapshots"] = follow(spec.get("snapshots") or [])
            self.db.execute("UPDATE snapshots SET spec = ?, source_snapshots = ? WHERE name = ?",
                            (json.dumps(spec), json.dumps(follow(json.loads(sources))), name))
        self.db.execute("UPDATE publish_sources SET snapshot = ? WHERE snapshot = ?", (new, old))
        rows = self.db.execute("SELECT DISTINCT p.id, p.sources, p.spec FROM publishes p JOIN publish_sources s"
                               " ON s.publish_id = p.id WHERE s.snapshot = ?", (new,)).fetchall()
        for pid, sources, spec in rows:
            renamed = {comp: new if snap == old else snap for comp, snap in json.loads(sources).items()}
            spec = json.loads(spec)
            spec["components"] = {c: new if ref == old else ref for c, ref in spec.get("components", {}).items()}
            self.db.execute("UPDATE publishes SET sources = ?, spec = ? WHERE id = ?",
                            (json.dumps(renamed), json.dumps(spec), pid))

    def delete(self, name: str) -> None:
        self.db.execute("DELETE FROM snapshots WHERE name = ?", (name,))

    def users(self, name: str) -> builtins.list[str]:
        """Publishes pointing at this snapshot: what blocks dropping it."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT p.name FROM publish_sources s JOIN publishes p ON p.id = s.publish_id"
            " WHERE s.snapshot = ? ORDER BY p.name", (name,))]


class Publishes:
    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    def _row(self, row: dict) -> PublishRow:
        row = dict(row)
        what = f"publish/{row['name']}"
        row["spec"] = _stored_spec(what, row["spec"], PublishSpec)
        row["sources"] = _stored_json(what, "sources", row["sources"])
        row["protect"] = bool(row["protect"])
        count = 0
        for snap in set(row["sources"].values()):
            hit = self.db.execute("SELECT l.count FROM snapshots s JOIN package_lists l ON l.digest = s.list_digest"
                                  " WHERE s.name = ?", (snap,)).fetchone()
            count += hit[0] if hit else 0
        return PublishRow(**row, num_packages=count)

    def get(self, name: str) -> PublishRow | None:
        rows = list(self.db.query("SELECT * FROM publishes WHERE name = ?", [name]))
        return self._row(rows[0]) if rows else None

    def at(self, prefix: str, distribution: str) -> PublishRow | None:
        rows = list(self.db.query("SELECT * FROM publishes WHERE prefix = ? AND distribution = ?",
                                  [prefix, distribution]))
        return self._row(rows[0]) if rows else None

    def list(self) -> list[PublishRow]:
        return [self._row(r) for r in self.db.query("SELECT * FROM publishes ORDER BY prefix, distribution")]

    def under_prefix(self, prefix: str) -> builtins.list[PublishRow]:
        return [self._row(r) for r in self.db.query("SELECT * FROM publishes WHERE prefix = ?", [prefix])]

    def save(self, name: str, *, owner: str, prefix: str, distribution: str, spec: dict, protect: bool,
             sources: dict[str, str], inputs_digest: str, release_sha256: str | None,
             linked_ns: int | None = None) -> None:
        self.db.execute(
            "INSERT INTO publishes (name, owner, prefix, distribution, spec, protect, sources, inputs_digest,"
            " release_sha256, published_at, linked_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, prefix = excluded.prefix,"
            " distribution = excluded.distribution, spec = excluded.spec, protect = excluded.protect,"
            " sources = excluded.sources, inputs_digest = excluded.inputs_digest,"
            " release_sha256 = excluded.release_sha256, published_at = excluded.published_at,"
            " linked_ns = COALESCE(excluded.linked_ns, publishes.linked_ns)",
            (name, owner, prefix, distribution, json.dumps(spec), int(protect), json.dumps(sources),
             inputs_digest, release_sha256, now(), linked_ns))
        pid = self.db.execute("SELECT id FROM publishes WHERE name = ?", (name,)).fetchone()[0]
        self.db.execute("DELETE FROM publish_sources WHERE publish_id = ?", (pid,))
        self.db.executemany("INSERT INTO publish_sources (publish_id, component, snapshot) VALUES (?, ?, ?)",
                                 [(pid, comp, snap) for comp, snap in sources.items()])

    def mark_linked(self, name: str, linked_ns: int) -> None:
        """Every pool file recorded up to `linked_ns` is linked in the tree as it is."""
        self.db.execute("UPDATE publishes SET linked_ns = ? WHERE name = ?", (linked_ns, name))

    def delete(self, name: str) -> None:
        self.db.execute("DELETE FROM publishes WHERE name = ?", (name,))


class Owners:
    """Which spec source last applied under each owner: `apply` from another source under
    the same owner would prune everything that source does not declare."""

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect

    def all(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT owner, source FROM owners").fetchall())

    def get(self, owner: str) -> str | None:
        row = self.db.execute("SELECT source FROM owners WHERE owner = ?", (owner,)).fetchone()
        return row[0] if row else None

    def claim(self, owner: str, source: str) -> None:
        self.db.execute("INSERT INTO owners (owner, source, applied_at) VALUES (?, ?, ?)"
                        " ON CONFLICT (owner) DO UPDATE SET source = excluded.source, applied_at = excluded.applied_at",
                        (owner, source, now()))

    def adopt(self, table: str, name: str, owner: str) -> None:
        """Give object `name` of `table` (mirrors, snapshots, publishes) to `owner`."""
        if table not in ("mirrors", "snapshots", "publishes"):
            raise ValueError(f"not an object table: {table}")
        self.db.execute(f"UPDATE {table} SET owner = ? WHERE name = ?", (owner, name))


def _error_of(load, *args) -> builtins.list[str]:
    try:
        load(*args)
    except StateError as exc:
        return [str(exc)]
    return []


class Store:
    """All stores over one connection: what a task's function receives."""

    def __init__(self, db: Session):
        self.db = db
        self.d = db.dialect
        self.mirrors = Mirrors(db)
        self.snapshots = Snapshots(db)
        self.publishes = Publishes(db)
        self.packages = Packages(db)
        self.lists = PackageLists(db)
        self.owners = Owners(db)

    def prune_tasks(self) -> int:
        """Keep the last TASK_HISTORY tasks; older ones that ended are deleted. A range of
        the primary key below the newest id: nothing to scan when there is nothing to
        delete, so every task can afford it."""
        cur = self.db.execute("DELETE FROM tasks WHERE id <= (SELECT MAX(id) FROM tasks) - ?"
                              " AND state IN ('succeeded', 'failed')", (TASK_HISTORY,))
        self.db.execute("DELETE FROM pending_lists WHERE task_id NOT IN (SELECT id FROM tasks)")
        return cur.rowcount

    def problems(self) -> builtins.list[str]:
        """Every stored row that does not decode (JSON, specs, list blobs): what verify reports."""
        found = []
        for table, store in (("mirrors", self.mirrors), ("snapshots", self.snapshots), ("publishes", self.publishes)):
            for (name,) in self.db.execute(f"SELECT name FROM {table} ORDER BY name"):
                found += _error_of(store.get, name)
        for (digest,) in self.db.execute("SELECT digest FROM package_lists ORDER BY digest"):
            found += _error_of(self.lists.ids, digest)
        for id_, key in self.db.execute(f"SELECT id, key FROM packages WHERE NOT {self.d.json_valid('fields')}"
                                        f" OR NOT {self.d.json_valid('files')} ORDER BY id"):
            found.append(f"package {key} (id {id_}): stored fields or files are not valid JSON; {RESTORE}")
        return found

    _RECORD = (
        "INSERT INTO pool_files (sha256, size, imported_at, mtime_ns, ino, recorded_ns) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (sha256) DO UPDATE SET recorded_ns = CASE WHEN pool_files.ino IS NOT DISTINCT FROM excluded.ino"
        " AND pool_files.mtime_ns IS NOT DISTINCT FROM excluded.mtime_ns THEN pool_files.recorded_ns"
        " ELSE excluded.recorded_ns END,"
        " size = excluded.size, mtime_ns = excluded.mtime_ns, ino = excluded.ino, imported_at = excluded.imported_at")

    def record_pool_file(self, sha256: str, size: int, *, mtime_ns: int | None = None,
                         ino: int | None = None) -> None:
        """A verified file imported into the pool, with what identifies it on disk.

        A row whose identity changes (the file was re-imported after a loss) gets a new
        `recorded_ns`: publishes that linked the old inode before then link again."""
        self.record_pool_files([(sha256, size, mtime_ns, ino)])

    def record_pool_files(self, files: Iterable[tuple[str, int, int | None, int | None]]) -> None:
        """`record_pool_file` for many (sha256, size, mtime_ns, ino) at once: one batch, so
        a sync's thousands of imports cost a few round trips on a server database."""
        stamp, ns = now(), time.time_ns()
        self.db.executemany(self._RECORD, [(sha, size, stamp, mtime, ino, ns) for sha, size, mtime, ino in files])

    def confirm_pool_file(self, sha256: str, size: int, mtime_ns: int, ino: int) -> None:
        """A pool file hashed again and found sound: its identity now, `recorded_ns` kept
        (the inode the trees link did not change content)."""
        self.db.execute(
            "INSERT INTO pool_files (sha256, size, imported_at, mtime_ns, ino) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " ino = excluded.ino", (sha256, size, now(), mtime_ns, ino))

    def forget_pool_file(self, sha256: str) -> None:
        self.db.execute("DELETE FROM pool_files WHERE sha256 = ?", (sha256,))

    def pool_identities(self, shas: Sequence[str]) -> dict[str, tuple[int, int | None, int | None]]:
        """sha256 -> (size, mtime_ns, ino) as recorded at import, for the given files."""
        return {sha: (size, mtime, ino) for sha, size, mtime, ino in self.db.execute(
            f"SELECT sha256, size, mtime_ns, ino FROM pool_files WHERE sha256 IN (SELECT value FROM {self.d.texts('?')})",
            (json.dumps(list(shas)),))}

    def holders(self, shas: Iterable[str]) -> dict[str, dict]:
        """For each file, its path and the mirrors and snapshots whose lists hold it:
        who can re-fetch it, and what a loss would damage. Reads every list; for the
        rare case of a damaged file, never on a path that runs when all is well."""
        wanted = set(shas)
        out: dict = {sha: {"mirrors": [], "snapshots": [], "path": sha} for sha in wanted}
        by_id: dict[int, set[str]] = {}
        for pid, sha, path in self.db.execute(
                f"SELECT p.id, {self.d.element('f', 2)}, {self.d.element('f', 0)}"
                f" FROM packages p, {self.d.elements('p.files', 'f')}"
                f" WHERE {self.d.element('f', 2)} IN (SELECT value FROM {self.d.texts('?')})",
                (json.dumps(sorted(wanted)),)):
            by_id.setdefault(pid, set()).add(sha)
            out[sha]["path"] = path
        if not by_id:
            return out
        rows = [("mirrors", r.name, r.list_digest) for r in self.mirrors.list()]
        rows += [("snapshots", r.name, r.list_digest) for r in self.snapshots.list()]
        for kind, name, digest in rows:
            held = set()
            for pid in set(self.lists.ids(digest)) & by_id.keys():
                held |= by_id[pid]
            for sha in held:
                out[sha][kind].append(name)
        return out

    def recorded_by_bucket(self) -> Iterator[tuple[str, builtins.list[str]]]:
        """(bucket, its recorded files) for every bucket (two hex digits) holding any, in
        order: one ordered pass over the primary key, a bucket in memory at a time."""
        bucket, shas = "", builtins.list[str]()
        for (sha,) in self.db.stream("SELECT sha256 FROM pool_files ORDER BY sha256"):
            if sha[:2] != bucket:
                if shas:
                    yield bucket, shas
                bucket, shas = sha[:2], []
            shas.append(sha)
        if shas:
            yield bucket, shas

    def replaced_since(self, ids: Sequence[int], since_ns: int | None) -> tuple[int, int]:
        """(how many files of these packages were (re)recorded after `since_ns`, the
        latest `recorded_ns` of the pool): files a tree linked before they were
        replaced. One indexed read when nothing was recorded since; otherwise a join
        over the list (~0.2 s for 20,000 packages), after which the caller can move its
        mark up to the latest time checked."""
        since = since_ns or 0
        latest = self.db.execute("SELECT MAX(recorded_ns) FROM pool_files").fetchone()[0] or 0
        if latest <= since:
            return 0, latest
        count = self.db.execute(
            f"SELECT COUNT(DISTINCT pf.sha256) FROM packages p, {self.d.elements('p.files', 'f')}"
            f" JOIN pool_files pf ON pf.sha256 = {self.d.element('f', 2)}"
            f" WHERE p.id IN {self.d.ids()} AND pf.recorded_ns > ?",
            (_json_ids(ids), since)).fetchone()[0]
        return count, latest
