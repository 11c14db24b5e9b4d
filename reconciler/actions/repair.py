"""The pool's loss witness: which files lists refer to and the pool lost, and who repairs them.

A file deleted from the pool, or quarantined as damaged, must come back from its
mirror's upstream on the next apply, even when that upstream has not changed; a
publish whose tree links it must link again; a file no declared mirror lists any more
must fail the apply naming the snapshots that hold it.

Checking that every file of every list exists would cost a stat per file (~160 ms for
20,000 files on the test machine, ~0.8 s with reading the list's files) on every run.
The witness used instead is `pool_files`, the database's record of what the pool
holds, against the pool's directory listings, one bucket at a time (~40 ms for 20,000
files: names only, no stat): a recorded file that is not listed is gone, and so is a
quarantined one that is not back. Only when that finds something are the lists read,
to see who holds each file and who can fetch it again.
"""

from __future__ import annotations

from reconciler.plan import PoolDamage
from reconciler.pool import FilesystemPool
from reconciler.state.stores import Store


def gone(store: Store, pool: FilesystemPool) -> set[str]:
    """Files the pool should hold and does not: recorded but not listed, or quarantined
    and not back. Directory listings only (see the module docstring), one bucket at a
    time (of the buckets the database records files in), so memory follows a bucket, not the pool."""
    missing: set[str] = set()
    for bucket, recorded in store.recorded_by_bucket():
        present = pool.names(bucket)
        missing.update(sha for sha in recorded if sha not in present)
    quarantined = pool.quarantined_names()
    return missing | {sha for sha in quarantined if not pool.has(sha)}


def missing_files(store: Store, pool: FilesystemPool, ids) -> list[tuple[str, int, str]]:
    """(sha256, size, path) of the files of these packages that the pool lost."""
    lost = gone(store, pool)
    if not lost:
        return []
    found = {sha: (sha, size, path) for sha, size, path in store.packages.files_among(ids, lost)}
    return [f for f in found.values() if not pool.has(f[0])]


def held_by(store: Store, files: dict[str, str]) -> str:
    """For a message: each file, the snapshots holding it, and what to do."""
    holders = store.holders(files)
    parts = []
    for sha, path in list(files.items())[:10]:
        snaps = ", ".join(f"snapshot/{s}" for s in holders[sha]["snapshots"]) or "no snapshot"
        parts.append(f"{path} ({sha[:12]}) is held by {snaps}")
    more = f" (and {len(files) - 10} more)" if len(files) > 10 else ""
    return ("; ".join(parts) + more + ". Restore the file(s) into the pool from a backup, or point the "
            "mirror at an upstream that still has them, or drop the snapshots holding them")


def pool_damage(store: Store, pool: FilesystemPool, declared_mirrors: set[str]) -> PoolDamage:
    """What the pool lost and who repairs it: the declared mirrors that list each file
    re-fetch it, the publishes linking it link again; the rest is lost."""
    damage = PoolDamage()
    missing = gone(store, pool)
    if not missing:
        return damage
    holders = store.holders(missing)
    snapshot_users: dict[str, list[str]] = {}
    for row in store.publishes.list():
        for snap in set(row.sources.values()):
            snapshot_users.setdefault(snap, []).append(row.name)
    for sha, held in holders.items():
        if not held["mirrors"] and not held["snapshots"]:
            continue  # nothing refers to it any more: gc's business, not a loss
        providers = [m for m in held["mirrors"] if m in declared_mirrors]
        for mirror in providers:
            damage.mirrors[mirror] = damage.mirrors.get(mirror, 0) + 1
        if providers:
            for pub in {p for snap in held["snapshots"] for p in snapshot_users.get(snap, [])}:
                damage.publishes[pub] = damage.publishes.get(pub, 0) + 1
        elif held["snapshots"]:
            damage.lost[sha] = (held["path"], held["snapshots"])
    return damage
