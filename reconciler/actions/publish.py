"""Publish mutations: write or switch a signed APT tree, drop one. Each a locked task.

A publish task locks its distribution, the prefix (distributions under one prefix share
`pool/`, so cleaning it must not race another distribution linking a file), and every
snapshot it points at (so none can be dropped while it is being published). Inside the
lock it reloads the snapshots, computes the inputs digest (spec + snapshot contents), and
does nothing when the tree already reflects exactly those inputs, unless a pool file the
tree links was replaced since it was linked (lost or damaged, then re-fetched by its
mirror: the tree still links the old inode), which links the tree again.

Pool files are linked only while their recorded identity holds (see pool.py); a damaged
one is quarantined by the tree writer, and the publish fails before the switch naming
the file, the snapshots that hold it and how it comes back.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler import gpg, loader, locks, tasks, tree, treeverify
from reconciler.actions import guards
from reconciler.actions.result import Result, run, unchanged
from reconciler.debian.package import Package
from reconciler.errors import NotFound, PermanentError, PoolDamaged, Refused
from reconciler.plan import inputs_digest, published_inputs, resolve_sources, tree_repair
from reconciler.spec import PublishDoc, parse_duration
from reconciler.state.stores import Store


SETTLE_NS = 60 * 10**9


def _keys(doc: PublishDoc, sources: dict[str, str], where: tuple[str, str] | None) -> list[str]:
    """The publish's place and prefix, the place it moves away from (`where`, read before
    the lock and checked again inside) with its prefix, whose pool must be cleaned,
    and every snapshot it points at."""
    spec = doc.spec
    places = {(spec.prefix, spec.distribution)} | ({where} if where else set())
    keys = [key for prefix, dist in sorted(places) for key in (locks.publish(prefix, dist), locks.prefix(prefix))]
    return keys + [locks.snapshot(s) for s in sources.values()]


def signer_for(ctx: tasks.Context, doc: PublishDoc) -> gpg.Signer | None:
    signing = doc.spec.signing
    if signing.skip:
        return None
    passphrase = Path(signing.passphraseFile) if signing.passphraseFile else None
    if signing.keyFile:
        return gpg.Signer(key_file=Path(signing.keyFile), gnupghome=ctx.gnupghome, passphrase_file=passphrase)
    return gpg.Signer(key=signing.key, passphrase_file=passphrase)


def stream_components(store: Store, sources: dict[str, str]) -> tuple[dict[str, Iterator[Package]], set[tuple[str, str]]]:
    """Each component's packages as a sorted stream from the state database, and the
    (type, arch) pairs found across all of them; nothing is loaded whole."""
    streams, kinds = {}, set()
    for comp, snap in sources.items():
        row = store.snapshots.get(snap)
        if row is None:
            raise NotFound(f"snapshot {snap!r} (component {comp}) does not exist")
        ids = store.lists.ids(row.list_digest)
        kinds |= store.packages.kinds(ids)
        streams[comp] = store.packages.ordered(ids)
    return streams, kinds


def publish(ctx: tasks.Context, doc: PublishDoc, *, owner: str = "default") -> Result:
    name, spec = doc.metadata.name, doc.spec
    store = ctx.store()
    sources = resolve_sources(doc, {r.name: r for r in store.snapshots.list()})
    before = store.publishes.get(name)
    where = (before.prefix, before.distribution) if before else None

    def body(task: tasks.Task) -> Result:
        store = task.store
        fresh = resolve_sources(doc, {r.name: r for r in store.snapshots.list()})
        if fresh != sources:
            raise Refused(f"publish/{name}: the series it follows moved while waiting for the lock; run again")
        other = store.publishes.at(spec.prefix, spec.distribution)
        if other is not None and other.name != name:
            raise Refused(f"publish/{name}: {spec.key} is already published by {other.name!r}")
        found = {c: store.snapshots.get(s) for c, s in sources.items()}
        missing = [f"{c}={s}" for c, s in sources.items() if found[c] is None]
        if missing:
            raise NotFound(f"publish/{name}: snapshots do not exist: {', '.join(missing)}")
        rows = {c: r for c, r in found.items() if r is not None}  # all of them, as checked
        wanted = spec.model_dump(mode="json")
        lists = {c: r.list_digest for c, r in rows.items()}
        key = loader.file_digest(spec.signing.keyFile) if spec.signing.keyFile else None
        digest = inputs_digest(wanted, lists, key)
        current = store.publishes.get(name)
        if current is not None and current.owner != owner:
            raise Refused(f"publish/{name} belongs to owner {current.owner!r}, not {owner!r}; apply with --owner "
                          f"{current.owner}, or pass --take-over to take it over")
        # Locked are its place and the one it was at before the lock: it may be at either
        # now (another apply of the same specs may have published it meanwhile), not elsewhere.
        if current is not None and (current.prefix, current.distribution) not in (where, (spec.prefix, spec.distribution)):
            raise Refused(f"publish/{name} moved while waiting for the lock; run again")
        on_disk = treeverify.published(ctx.publish_dir, spec.prefix, spec.distribution)
        why = current and tree_repair(spec, current.release_sha256, on_disk, ctx.clock())
        replaced = 0
        if current and published_inputs(current.inputs_digest, wanted, lists, key) and not why:
            # Same inputs; but a pool file its tree links may have been replaced since
            # (lost or damaged, then re-fetched): the tree still links the old inode.
            checks = [store.replaced_since(store.lists.ids(r.list_digest), current.linked_ns)
                      for r in rows.values()]
            replaced = sum(count for count, _latest in checks)
            if not replaced:
                # Checked up to the latest record: the next run need not join again. Kept
                # a minute behind the clock, so a record still being committed by another
                # task (stamped before it commits) is never passed over.
                mark = min(min(latest for _count, latest in checks), time.time_ns() - SETTLE_NS)
                if mark > (current.linked_ns or 0):
                    with task.transaction() as tx:
                        tx.publishes.mark_linked(name, mark)
                return _record_unchanged(task, doc, current, sources, digest)
        if why:
            task.log(f"publish/{name}: {why}")
        linked_ns = time.time_ns()
        try:
            result = _write(task, doc, sources, current)
        except PoolDamaged as exc:
            raise _damaged(task, name, exc) from None
        with task.transaction() as tx:
            tx.publishes.save(name, owner=owner, prefix=spec.prefix, distribution=spec.distribution, spec=wanted,
                              protect=doc.metadata.protect, sources=sources, inputs_digest=digest,
                              release_sha256=result.release_sha256, linked_ns=linked_ns)
            for sha, (size, mtime_ns, ino) in result.confirmed.items():
                tx.confirm_pool_file(sha, size, mtime_ns, ino)
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
        verb = f"re-linked {replaced} replaced pool file(s) of" if replaced else "switched" if current else "published"
        message = f"publish/{name}: {verb} {spec.key} ({counts})"
        if result.confirmed:
            message += (f"; {len(result.confirmed)} pool file(s) had changed on disk since they were verified: "
                        "hashed again, sound")
        task.log(message)
        return Result(message)

    return run(ctx, f"publish {name}", _keys(doc, sources, where), body)


def _record_unchanged(task: tasks.Task, doc: PublishDoc, current, sources: dict[str, str], digest: str) -> Result:
    """The tree already holds exactly these inputs; still record what the spec now says.

    A series member with the same content as the one published, or a flag such as
    `protect`, changes no byte of the tree, but the row must name the new snapshot (or
    the retention of the old member is refused as in use, and the next plan is not
    empty) and carry the new flag. A key file that moved (a copied spec directory) is
    recorded at its new path, so whatever re-reads the stored spec finds it, and a row
    from before key files were compared by content gets its content digest."""
    name, wanted = doc.metadata.name, doc.spec.model_dump(mode="json")
    if (current.sources, current.protect, current.spec, current.inputs_digest) == \
            (sources, doc.metadata.protect, wanted, digest):
        return unchanged(f"publish/{name}: up to date")
    with task.transaction() as tx:
        tx.publishes.save(name, owner=current.owner, prefix=current.prefix, distribution=current.distribution,
                          spec=wanted, protect=doc.metadata.protect, sources=sources,
                          inputs_digest=digest, release_sha256=current.release_sha256)
    moved = {c: s for c, s in sources.items() if current.sources.get(c) != s}
    what = ", ".join(f"{c}: {current.sources.get(c, '-')} -> {s}" for c, s in moved.items()) or "spec recorded"
    message = f"publish/{name}: {what} (same content, tree unchanged)"  # the row changed
    task.log(message)
    return Result(message)


def _damaged(task: tasks.Task, name: str, exc: PoolDamaged) -> PoolDamaged:
    """The publish found pool files missing or damaged (moved to quarantine): forget
    them in the database, and say which snapshots hold them and how they come back."""
    holders = task.store.holders(exc.files)
    with task.transaction() as tx:
        for sha in exc.files:
            tx.forget_pool_file(sha)
    lines = []
    for sha, path in list(exc.files.items())[:10]:
        held = holders[sha]
        snaps = ", ".join(f"snapshot/{s}" for s in held["snapshots"]) or "no snapshot"
        if held["mirrors"]:
            fix = f"run apply again: {', '.join(f'mirror/{m}' for m in held['mirrors'])} re-fetches it"
        else:
            fix = "no mirror lists it any more: restore it into the pool from a backup, or drop those snapshots"
        lines.append(f"{path} ({sha[:12]}): {exc.reasons.get(sha, 'damaged')}; held by {snaps}; {fix}")
    more = f" (and {len(exc.files) - 10} more)" if len(exc.files) > 10 else ""
    return PoolDamaged(f"not switched, {len(exc.files)} pool file(s) cannot be published: " + "; ".join(lines)
                       + more, exc.files, exc.reasons)


def _write(task: tasks.Task, doc: PublishDoc, sources: dict[str, str], current) -> tree.TreeResult:
    ctx, spec = task.ctx, doc.spec
    components, kinds = stream_components(task.store, sources)
    archs = spec.architectures or sorted({a for _t, a in kinds} - {"all", "source"})
    request = tree.TreeRequest(
        publish_root=ctx.publish_dir, prefix=spec.prefix, distribution=spec.distribution,
        components=components, types={t for t, _a in kinds},
        architectures=archs or ["amd64"], origin=spec.origin, label=spec.label,
        suite=spec.suite, codename=spec.codename,
        valid_for=parse_duration(spec.validFor) if spec.validFor else None,
        acquire_by_hash=spec.acquireByHash, description=spec.description,
        compression=spec.compression.levels(), recorded=task.store.pool_identities, date=ctx.clock())
    # A first publish into a prefix without a pool has nothing to clean up afterwards.
    new_pool = not (tree.prefix_dir(ctx.publish_dir, spec.prefix) / "pool").exists()
    signer = signer_for(ctx, doc)
    try:
        keyring = _keyring(ctx, signer)

        def check(stage: Path) -> None:
            # Pool files are hard links of files verified on import: sizes suffice here.
            problems = treeverify.verify_staged(ctx.publish_dir, spec.prefix, spec.distribution, stage,
                                                keyring=keyring, deep=False)
            if problems:
                raise PermanentError("not switched, the staged tree does not verify (the previous tree stays "
                                     "published): " + "; ".join(problems[:5]))

        result = tree.publish_tree(request, ctx.pool, signer, check=check)
    finally:
        if signer:
            signer.close()
    if current and (current.prefix, current.distribution) != (spec.prefix, spec.distribution):
        tree.remove_tree(ctx.publish_dir, current.prefix, current.distribution)
        if current.prefix != spec.prefix:  # what it used there, unless others under that prefix use it too
            _cleanup(task, current.prefix, doc.metadata.name, set())
    if new_pool:
        return result
    keep = set(result.pool_paths)
    if current and current.prefix == spec.prefix:
        # A client one publish behind still holds the previous indexes (by-hash keeps
        # them): its package files stay until the next publish.
        keep |= referenced_paths(task.store, current.sources)
    _cleanup(task, spec.prefix, doc.metadata.name, keep)
    return result


def referenced_paths(store: Store, sources: dict[str, str]) -> set[str]:
    """Pool paths a publish of `sources` uses, read without decoding any control stanza."""
    paths: set[str] = set()
    for comp, snap in sources.items():
        row = store.snapshots.get(snap)
        if row is None:
            continue
        for source, path in store.packages.source_files(store.lists.ids(row.list_digest)):
            paths.add(f"{tree.pool_dir(comp, source)}/{posixpath.basename(path)}")
    return paths


def _keyring(ctx: tasks.Context, signer: gpg.Signer | None) -> Path | None:
    if signer is None:
        return None
    path = ctx.root / "tmp" / f"publish-{signer.key}.gpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signer.public_keyring())
    return path


def _cleanup(task: tasks.Task, prefix: str, name: str, mine: set[str]) -> None:
    """Remove pool files under the prefix that no publish there uses any more."""
    keep = set(mine)
    for row in task.store.publishes.under_prefix(prefix):
        if row.name != name:
            keep |= referenced_paths(task.store, row.sources)
    tree.cleanup_pool(task.ctx.publish_dir, prefix, keep)


def drop(ctx: tasks.Context, name: str, *, missing_ok: bool = False) -> Result:
    row = ctx.store().publishes.get(name)
    if row is None:
        if missing_ok:
            return unchanged(f"publish/{name}: already gone")
        raise NotFound(f"publish {name!r} does not exist")
    keys = [locks.publish(row.prefix, row.distribution), locks.prefix(row.prefix)]

    def body(task: tasks.Task) -> Result:
        fresh = task.store.publishes.get(name)
        if fresh is None:
            return unchanged(f"publish/{name}: already gone")
        guards.check_drop(f"publish/{name}", protect=fresh.protect, users=[], force=False)
        if (fresh.prefix, fresh.distribution) != (row.prefix, row.distribution):
            raise Refused(f"publish/{name} moved while waiting for the lock; run again")
        tree.remove_tree(ctx.publish_dir, fresh.prefix, fresh.distribution)
        with task.transaction() as tx:
            tx.publishes.delete(name)
        _cleanup(task, fresh.prefix, name, set())
        task.log(f"publish/{name}: dropped {fresh.prefix}/{fresh.distribution}")
        return Result(f"publish/{name}: dropped")

    return run(ctx, f"drop publish {name}", keys, body)


