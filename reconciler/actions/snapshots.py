"""Snapshot mutations: create (from a mirror, or merged), drop, rename. Each a locked task.

Creating a snapshot from a mirror locks the mirror as well as the new name, so a drop of
that mirror cannot interleave: either the drop runs first and the create finds no mirror,
or the create runs first and the drop finds a user (a guard and whatever could break it take the same lock key). A merge locks its
source snapshots so none of them can be dropped half-way.
"""

from __future__ import annotations

import json

from reconciler import locks, tasks, upstream
from reconciler.actions import guards
from reconciler.actions.result import Result, run, unchanged
from reconciler.debian.query import version_key
from reconciler.errors import NotFound, Refused
from reconciler.plan import SNAPSHOT_CONTENT, package_diff
from reconciler.spec import SnapshotDoc
from reconciler.state.stores import Store


def _content(spec: dict) -> dict:
    return {k: spec.get(k) for k in SNAPSHOT_CONTENT}


def create(ctx: tasks.Context, doc: SnapshotDoc, *, owner: str = "default", name: str | None = None,
           series: str | None = None, replace: bool = False) -> Result:
    """Create snapshot `name` (default the doc's name); an identical existing one is a no-op.

    With `replace`, an existing snapshot of other content gets the new content in place,
    in one transaction: publishes keep pointing at the name (never at nothing, as a drop
    and a create did when the create failed), and the plan switches them to the new
    content in the same apply."""
    name = name or doc.metadata.name
    spec = doc.spec
    merged = spec.snapshots or []  # the spec names exactly one of mirror, snapshots (spec.py)
    keys = [locks.snapshot(name)]
    keys += [locks.mirror(spec.mirror)] if spec.mirror else [locks.snapshot(s) for s in merged]

    def body(task: tasks.Task) -> Result:
        store = task.store
        wanted = spec.model_dump(mode="json")
        existing = store.snapshots.get(name)  # fresh, inside the lock
        if existing is not None:
            if _content(existing.spec) == _content(wanted):
                return unchanged(f"snapshot/{name}: exists ({existing.num_packages} packages)")
            if not replace:
                raise Refused(f"snapshot/{name} exists with different content; snapshots are immutable: "
                              f"give the new content a new name (or --replace {name})")
        ids = _mirror_ids(store, spec.mirror) if spec.mirror else _merge_ids(store, merged, spec.latest)
        if spec.filter:
            ids = _filter(store, ids, spec.filter, spec.filterWithDeps)
        with task.transaction() as tx:
            digest = tx.lists.put(ids)
            if existing is None:
                tx.snapshots.create(name, owner=owner, spec=wanted, protect=doc.metadata.protect,
                                    list_digest=digest, source_mirror=spec.mirror,
                                    source_snapshots=spec.snapshots or [], series=series,
                                    created_at=task.ctx.clock().isoformat(timespec="seconds"))
            else:
                tx.snapshots.update(name, spec=wanted, list_digest=digest, source_mirror=spec.mirror,
                                    source_snapshots=json.dumps(spec.snapshots or []))
                tx.lists.prune()
        verb = "created" if existing is None else "replaced"
        message = f"snapshot/{name}: {verb}, {len(set(ids))} packages, digest {digest[:12]}"
        if spec.filter and not ids:
            message = (f"WARNING: snapshot/{name}: filter {spec.filter!r} matches no package; the snapshot is "
                       "empty. Check its spelling (`reconciler packages QUERY` tries a query)\n" + message)
        task.log(message)
        return Result(message)

    return run(ctx, f"create snapshot {name}", keys, body)


def _mirror_ids(store: Store, mirror: str) -> list[int]:
    row = store.mirrors.get(mirror)
    if row is None:
        raise NotFound(f"mirror {mirror!r} does not exist (was it dropped?)")
    if not row.update_complete:
        raise Refused(f"mirror/{mirror} has no completed update yet; a snapshot of it would be partial")
    return list(store.lists.ids(row.list_digest))


def _merge_ids(store: Store, sources: list[str], latest: bool) -> list[int]:
    """The packages of a merge, as aptly's `snapshot merge` makes it.

    Every package of a source is kept (a source holding two versions of hello keeps both);
    a later source replaces what earlier ones hold in a (type, name, arch) slot that it
    fills too; with `latest`, nothing is replaced and each slot keeps only its highest
    version (of equal versions, the later source's file). aptly's slot has no type: we
    keep a udeb from ever replacing the deb of the same name.
    """
    chosen: dict[tuple, list[tuple[int, str]]] = {}
    for src in sources:
        row = store.snapshots.get(src)
        if row is None:
            raise NotFound(f"snapshot {src!r} does not exist")
        mine: dict[tuple, list[tuple[int, str]]] = {}
        for pid, type_, name, arch, version in store.packages.versions(store.lists.ids(row.list_digest)):
            mine.setdefault((type_, name, arch), []).append((pid, version))
        for slot, packages in mine.items():
            if latest:
                chosen.setdefault(slot, []).extend(packages)
            else:
                chosen[slot] = packages
    if latest:
        return [_highest(packages) for packages in chosen.values()]
    return [pid for packages in chosen.values() for pid, _version in packages]


def _highest(packages: list[tuple[int, str]]) -> int:
    best_id, best = packages[0][0], version_key(packages[0][1])
    for pid, version in packages[1:]:
        key = version_key(version)
        if key >= best:
            best_id, best = pid, key
    return best_id


def _filter(store: Store, ids: list[int], text: str, with_deps: bool | str) -> list[int]:
    loaded = list(store.packages.load(ids))
    by_key = {pkg.key: pid for pid, pkg in loaded}
    chosen = upstream.select_stored([p for _, p in loaded], text, with_deps)
    return [by_key[p.key] for p in chosen]


def drop(ctx: tasks.Context, name: str, *, force: bool = False, missing_ok: bool = False) -> Result:
    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            row = store.snapshots.get(name)
            if row is None:
                if missing_ok:
                    return unchanged(f"snapshot/{name}: already gone")
                raise NotFound(f"snapshot {name!r} does not exist")
            users = [f"publish/{u}" for u in store.snapshots.users(name)]
            guards.check_drop(f"snapshot/{name}", protect=row.protect, users=users, force=force)
            store.snapshots.delete(name)
            store.lists.prune()
        task.log(f"snapshot/{name}: dropped")
        return Result(f"snapshot/{name}: dropped")

    return run(ctx, f"drop snapshot {name}", [locks.snapshot(name)], body)


def set_protect(ctx: tasks.Context, name: str, protect: bool) -> Result:
    """Set or clear `metadata.protect`: the one thing about a snapshot that may change."""

    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            if store.snapshots.get(name) is None:
                raise NotFound(f"snapshot {name!r} does not exist")
            store.snapshots.update(name, protect=int(protect))
        message = f"snapshot/{name}: protect {'set' if protect else 'cleared'}"
        task.log(message)
        return Result(message)

    return run(ctx, f"protect snapshot {name}", [locks.snapshot(name)], body, pool=False)


def rename(ctx: tasks.Context, old: str, new: str) -> Result:
    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            if store.snapshots.get(old) is None:
                raise NotFound(f"snapshot {old!r} does not exist (rename to {new!r})")
            if store.snapshots.get(new) is not None:
                raise Refused(f"cannot rename snapshot/{old} to {new!r}: that name is taken")
            store.snapshots.rename(old, new)
        return Result(f"snapshot/{old}: renamed to {new}")

    return run(ctx, f"rename snapshot {old} -> {new}", [locks.snapshot(old), locks.snapshot(new)], body)


def diff(store: Store, a: str, b: str) -> dict[str, list]:
    """Packages added, removed and changed from snapshot A to snapshot B."""
    lists = []
    for name in (a, b):
        row = store.snapshots.get(name)
        if row is None:
            raise NotFound(f"snapshot {name!r} does not exist")
        lists.append([p for _id, p in store.packages.load(store.lists.ids(row.list_digest))])
    return package_diff(*lists)
