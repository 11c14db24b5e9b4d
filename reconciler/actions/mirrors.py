"""Mirror mutations, each a locked task that reloads the mirror fresh inside the lock.

`sync` is create, edit and update in one: the intent is "this mirror, per this spec,
equals upstream now", and the task re-derives inside the lock what that takes, never
replaying a stale plan. Upstream unchanged, spec content unchanged and the last update complete:
nothing to do, one request spent. Otherwise it reads the indexes, computes the new
list, downloads what the pool lacks (each file imported the moment it verifies), and
switches the list, the spec and the Release digest in one transaction. The Release
digest is stored only with a completed list, so an interrupted update is never
mistaken for done: a peer tool publishes an empty component after that mistake.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from reconciler import loader, locks, tasks, upstream
from reconciler.actions import guards, repair
from reconciler.actions.result import Result, run, unchanged
from reconciler.errors import NotFound, PermanentError, PoolDamaged, ReconcilerError, Refused
from reconciler.fetch import Fetcher, Stats, Want, join
from reconciler.plan import removal_refusal, replay_refusal, same_content
from reconciler.spec import MirrorDoc, MirrorSpec
from reconciler.state import backend as statebackend
from reconciler.state.stores import Store, now


@dataclass
class SyncResult:
    name: str
    action: str  # created | updated | up-to-date | repaired
    added: int = 0
    changed: int = 0
    removed: int = 0
    files: int = 0
    bytes: int = 0
    packages: int = 0
    warnings: list[str] = field(default_factory=list)
    task_id: int | None = None  # the sync task (not part of the API's `result`)

    def result(self) -> Result:
        """As an action's Result: changed unless up to date (a mirror whose flags, such as
        protect or its keyring digests, were rewritten in place reads up to date)."""
        return Result(self.line(), changed=self.action != "up-to-date", task_id=self.task_id)

    def line(self) -> str:
        warn = "".join(f"WARNING: {w}\n" for w in self.warnings)
        if self.action == "up-to-date":
            return f"{warn}mirror/{self.name}: up to date ({self.packages} packages)"
        if self.action == "repaired":
            return (f"{warn}mirror/{self.name}: upstream unchanged; re-fetched {self.files} missing pool file(s), "
                    f"{self.bytes / 1e6:.1f} MB ({self.packages} packages)")
        return (f"{warn}mirror/{self.name}: {self.action} +{self.added} ~{self.changed} -{self.removed}, "
                f"{self.files} files, {self.bytes / 1e6:.1f} MB ({self.packages} packages)")


def diff_counts(old: dict[tuple, set[str]], new: dict[tuple, set[str]]) -> tuple[int, int, int]:
    """(added, changed, removed) packages between two {(type, name, arch): {keys}} maps.

    Per slot (type, name, arch), a package that came pairs with one that went as a
    change (a new version replacing an old one); the unpaired rest are added or removed.
    So `after = before + added - removed` always holds, and a version dropped from a
    slot that keeps another still counts as removed (the removal gate must see it).
    """
    added = changed = removed = 0
    for slot in old.keys() | new.keys():
        came = len(new.get(slot, set()) - old.get(slot, set()))
        went = len(old.get(slot, set()) - new.get(slot, set()))
        paired = min(came, went)
        changed += paired
        added += came - paired
        removed += went - paired
    return added, changed, removed


def identity_map(packages) -> dict[tuple, set[str]]:
    slots: dict[tuple, set[str]] = {}
    for pkg in packages:
        slots.setdefault((pkg.type, pkg.name, pkg.arch), set()).add(pkg.key)
    return slots


def stored_identity_map(store: Store, ids) -> dict[tuple, set[str]]:
    slots: dict[tuple, set[str]] = {}
    for type_, name, arch, key in store.packages.identities(ids):
        slots.setdefault((type_, name, arch), set()).add(key)
    return slots


def sync(ctx: tasks.Context, doc: MirrorDoc, *, owner: str = "default", force: bool = False,
         fetcher: Fetcher | None = None, echo=None) -> SyncResult:
    """Create or bring mirror `doc` up to date, as a task on mirror/NAME.

    The fetcher's retry lines go to the task's output, and to `echo` (the caller's
    console) as they happen when the context does not echo task output itself."""
    name = doc.metadata.name

    def body(task: tasks.Task) -> SyncResult:
        progress = ctx.progress(f"mirror/{name}") if ctx.progress else None

        def log(line: str) -> None:
            task.log(line)
            if echo is not None and ctx.echo is None:
                echo(line)

        own = fetcher or Fetcher.of(doc.spec, progress=progress, log=log)
        try:
            return _sync(task, doc, owner=owner, force=force, fetcher=own)
        except ReconcilerError as exc:
            _record_failure(task, name, owner, exc)
            raise
        except BaseException:
            _record_failure(task, name, owner, None)
            raise
        finally:
            if progress:
                progress.close()
            if fetcher is None:
                own.close()

    return run(ctx, f"sync mirror {name}", [locks.mirror(name)], body)


def _sync(task: tasks.Task, doc: MirrorDoc, *, owner: str, force: bool, fetcher: Fetcher) -> SyncResult:
    name, spec = doc.metadata.name, doc.spec
    row = task.store.mirrors.get(name)  # fresh, inside the lock
    if row is not None and row.owner != owner:
        raise Refused(f"mirror/{name} belongs to owner {row.owner!r}, not {owner!r}; apply with --owner "
                      f"{row.owner}, or pass --take-over to take it over")
    wanted = spec.stored()  # secrets as digests: state never holds them
    warnings = []
    if not spec.verifySignature:
        warnings.append(f"mirror/{name}: verifySignature is false; the Release signature is NOT checked")
    release = upstream.read_release(fetcher, spec, workdir=task.ctx.local("tmp"), now=task.ctx.clock)
    same = row is not None and same_content(row.spec, wanted, row.release_sha256, release.sha256)
    keyrings = [loader.file_digest(k) for k in spec.keyrings]
    if row is not None and same and row.update_complete and row.release_sha256 == release.sha256:
        if (row.spec != wanted or row.protect != doc.metadata.protect or row.status != "ready"
                or row.upstream.get("keyrings") != keyrings):
            with task.transaction() as store:
                store.mirrors.update(name, spec=wanted, protect=int(doc.metadata.protect), status="ready",
                                     last_error=None, upstream={**row.upstream, "keyrings": keyrings})
        lost = repair.missing_files(task.store, task.pool, task.store.lists.ids(row.list_digest))
        if lost:
            return _repair(task, fetcher, release, name, lost, row.num_packages, warnings)
        return SyncResult(name, "up-to-date", packages=row.num_packages, warnings=warnings)
    _check_replay(row, release, force)
    packages = upstream.read_packages(fetcher, release, spec, cache=task.ctx.local("cache") / "indexes")
    if spec.filter and not packages:
        warnings.append(f"mirror/{name}: filter {spec.filter!r} matches no package; the mirror is empty. "
                        "Check its spelling (`reconciler packages QUERY` tries a query)")
    with task.transaction() as store:
        new_ids = store.packages.add(packages)
        pending = store.lists.put(new_ids)
        store.lists.hold(task.id, pending)  # no prune takes its packages while we download
    old_ids = task.store.lists.ids(row.list_digest) if row else []
    old_map, new_map = stored_identity_map(task.store, old_ids), identity_map(packages)
    added, changed, removed = diff_counts(old_map, new_map)
    _check_removals(name, spec, len(old_ids), removed, force, same if row else True)
    stats = _download(task, fetcher, release, packages)
    with task.transaction() as store:
        if store.mirrors.get(name) is None:
            store.mirrors.create(name, owner=owner, spec=wanted, protect=doc.metadata.protect)
        store.lists.release(task.id)
        digest = pending
        store.mirrors.update(
            name, spec=wanted, protect=int(doc.metadata.protect), list_digest=digest, status="ready",
            update_complete=1, release_sha256=release.sha256,
            release_date=release.date.isoformat() if release.date else None,
            upstream={"components": release.info.components, "architectures": release.info.architectures,
                      "verified": release.verified, "keyrings": keyrings},
            last_update=now(), last_error=None)
        store.lists.prune()
    action = "created" if row is None else "updated"
    result = SyncResult(name, action, added, changed, removed, stats.files, stats.bytes, len(set(new_ids)),
                        warnings)
    task.log(result.line())
    return result


def _record_failure(task: tasks.Task, name: str, owner: str, exc: ReconcilerError | None) -> None:
    """A failed update keeps the previous list, and says so: status failed, the error kept
    for list, show, the API and the next plan (a success clears both). The list it
    stored and held goes, with the packages only it held: the database is as before."""
    try:
        with task.transaction() as store:
            store.lists.release(task.id)
            store.lists.prune()
            row = store.mirrors.get(name)
            if exc is not None and row is not None and row.owner == owner:
                store.mirrors.update(name, status="failed", last_error=str(exc)[:4000])
    except statebackend.errors_with(OSError):  # a full disk: the original error is the one to report
        pass


def _check_replay(row, release: upstream.Release, force: bool) -> None:
    refusal = None if row is None or force else replay_refusal(row.name, row.release_date, release.date)
    if refusal:
        raise Refused(refusal)


def _check_removals(name: str, spec: MirrorSpec, before: int, removed: int, force: bool, same_spec: bool) -> None:
    refusal = None if force or not same_spec else removal_refusal(name, spec.maxRemovalPercent, before, removed)
    if refusal:
        raise Refused(refusal)


def _repair(task: tasks.Task, fetcher: Fetcher, release: upstream.Release, name: str,
            lost: list[tuple[str, int, str]], packages: int, warnings: list[str]) -> SyncResult:
    """Re-fetch pool files of the mirror's list that are gone (deleted, or quarantined as
    damaged) from the unchanged upstream: just those files, each verified against the
    size and SHA-256 its signed index gave when the list was stored."""
    wants = [Want(join(release.root, path), path, size, sha) for sha, size, path in lost]
    recorder = PoolRecorder(task)
    try:
        stats = fetcher.download(wants, task.pool, on_imported=recorder.add)
    finally:
        recorder.flush()
    if stats.failed:
        failed = {sha: path for sha, _size, path in lost if not task.pool.has(sha)}
        raise PoolDamaged(f"{len(stats.failed)} missing pool file(s) cannot be re-fetched from "
                          f"upstream ({'; '.join(stats.failed[:5])}); "
                          + repair.held_by(task.store, failed), failed)
    result = SyncResult(name, "repaired", files=stats.files, bytes=stats.bytes, packages=packages,
                        warnings=warnings)
    task.log(result.line())
    return result


def _download(task: tasks.Task, fetcher: Fetcher, release: upstream.Release, packages) -> Stats:
    wants: dict[str, Want] = {}
    for pkg in packages:
        for f in pkg.files:
            wants.setdefault(f.sha256, Want(join(release.root, f.path), f.path, f.size, f.sha256))
    recorder = PoolRecorder(task)
    recorder.adopt(wants.values())
    try:
        stats = fetcher.download(wants.values(), task.pool, on_imported=recorder.add)
    except BaseException:
        try:
            recorder.flush()
        except Exception:  # a full disk fails the record too; the download's error is the one to report
            pass
        raise
    recorder.flush()
    if stats.failed:
        shown = "; ".join(stats.failed[:10])
        more = f" (and {len(stats.failed) - 10} more)" if len(stats.failed) > 10 else ""
        raise PermanentError(f"{len(stats.failed)} file(s) failed, the mirror keeps its previous list: {shown}{more}")
    return stats


class PoolRecorder:
    """Records imported files in `pool_files`, a few hundred per transaction.

    One transaction per file cost ~1.3 ms each on the main thread, more than the
    download itself. The pool (content-addressed, verified before the rename) is what
    resume relies on; the table is its index and lags it by at most one batch or a
    quarter of a second.
    """

    def __init__(self, task: tasks.Task, *, batch: int = 200, interval: float = 0.25):
        self.task, self.batch, self.interval = task, batch, interval
        self.pending: list[tuple[Want, os.stat_result]] = []
        self.last = time.monotonic()

    def add(self, want: Want) -> None:
        # What identifies the verified file, taken the moment it landed: a publish
        # links it only while this still holds (pool.py).
        st = self.task.pool.path(want.sha256).stat()
        self.pending.append((want, st))
        if len(self.pending) >= self.batch or time.monotonic() - self.last >= self.interval:
            self.flush()

    def adopt(self, wants) -> None:
        """Record wanted files the pool has and `pool_files` lacks: an update killed between
        an import and its batch's transaction left them unrecorded, and gc leaves
        unrecorded files alone, so without this they would never be collected."""
        wants = list(wants)
        db = self.task.store.db
        unrecorded = {r[0] for r in db.execute(
            f"SELECT value FROM {db.dialect.texts('?')} WHERE value NOT IN (SELECT sha256 FROM pool_files)",
            (json.dumps([w.sha256 for w in wants]),))}
        for want in wants:
            if want.sha256 in unrecorded and self.task.pool.has(want.sha256, want.size):
                self.pending.append((want, self.task.pool.path(want.sha256).stat()))
        self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.task.transaction() as store:
                store.record_pool_files([(want.sha256, want.size, st.st_mtime_ns, st.st_ino)
                                         for want, st in self.pending])
        self.pending, self.last = [], time.monotonic()


def drop(ctx: tasks.Context, name: str, *, force: bool = False, missing_ok: bool = False) -> Result:
    """Drop mirror NAME unless snapshots were taken from it (or `force`) or it is protected."""

    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            row = store.mirrors.get(name)
            if row is None:
                if missing_ok:
                    return unchanged(f"mirror/{name}: already gone")
                raise NotFound(f"mirror {name!r} does not exist")
            users = store.mirrors.users(name)
            guards.check_drop(f"mirror/{name}", protect=row.protect, users=[f"snapshot/{u}" for u in users],
                              force=force)
            store.mirrors.delete(name)
            store.lists.prune()
        message = f"mirror/{name}: dropped" + (f" (snapshots {', '.join(users)} keep their packages)" if users else "")
        task.log(message)
        return Result(message)

    return run(ctx, f"drop mirror {name}", [locks.mirror(name)], body)


def rename(ctx: tasks.Context, old: str, new: str) -> Result:
    """Rename in place, no download; checked inside the lock on both names."""

    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            if store.mirrors.get(old) is None:
                raise NotFound(f"mirror {old!r} does not exist (rename to {new!r})")
            if store.mirrors.get(new) is not None:
                raise Refused(f"cannot rename mirror/{old} to {new!r}: that name is taken")
            store.mirrors.rename(old, new)
        return Result(f"mirror/{old}: renamed to {new}")

    return run(ctx, f"rename mirror {old} -> {new}", [locks.mirror(old), locks.mirror(new)], body)
