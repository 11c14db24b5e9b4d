"""What pruning packages costs a routine mirror update (issue 11, "unbounded tables").

A 20,000-package mirror with a fortnight of daily snapshots; the next day's update
replaces 100 packages. Timed: the update's final transaction as `mirrors._sync` makes
it (switch the mirror to the list stored and held in its first transaction, prune),
with the list prune alone (before) and with the packages it frees pruned too (now);
and gc's full sweep over every list. Run: `python -m bench.prune [--packages N] [--snapshots K]`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from reconciler.debian.package import Package, PackageFile
from reconciler.state import sqlite as statedb
from reconciler.state.stores import Store


def package(i: int, version: int) -> Package:
    name, ver = f"pkg{i:05d}", f"1.{version}-1"
    sha = hashlib.sha256(f"{name}_{ver}".encode()).hexdigest()
    path = f"pool/main/p/{name}/{name}_{ver}_amd64.deb"
    fields = {"Package": name, "Version": ver, "Architecture": "amd64", "Filename": path, "Size": "1000",
              "SHA256": sha, "Description": "a synthetic package for measuring " * 3}
    return Package("deb", name, ver, "amd64", fields, (PackageFile(path, 1000, sha),))


def day(n: int, d: int, churn: int) -> list[Package]:
    """Upstream on day `d`: the same `churn` packages get a new version every day."""
    return [package(i, d if i < churn else 0) for i in range(n)]


def update(store: Store, packages: list[Package], *, prune_packages: bool) -> tuple[float, float]:
    """(the final transaction, the prune in it) in seconds, as a sync makes them."""
    with store.db.transaction():  # the first transaction: packages, the list, held
        digest = store.lists.put(store.packages.add(packages))
        if prune_packages:
            store.lists.hold(1, digest)
    started = time.perf_counter()
    with store.db.transaction():
        if prune_packages:
            store.lists.release(1)
        store.mirrors.update("m", list_digest=digest)
        pruning = time.perf_counter()
        if prune_packages:
            store.lists.prune()
        else:
            store.db.execute("DELETE FROM package_lists WHERE digest NOT IN (SELECT list_digest FROM mirrors"
                             " WHERE list_digest IS NOT NULL) AND digest NOT IN (SELECT list_digest FROM snapshots)")
        pruned = time.perf_counter()
    return time.perf_counter() - started, pruned - pruning


def measure(n: int, snapshots: int, churn: int, *, prune_packages: bool) -> tuple[list, float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        db = statedb.connect(Path(tmp) / "state.db")
        store = Store(db)
        with db.transaction():
            store.mirrors.create("m", owner="o", spec={}, protect=False)
        times = []
        for d in range(snapshots + 4):
            times.append(update(store, day(n, d, churn), prune_packages=prune_packages))
            if d < snapshots:
                digest = db.execute("SELECT list_digest FROM mirrors").fetchone()[0]
                with db.transaction():
                    db.execute("INSERT INTO snapshots (name, owner, spec, list_digest, created_at)"
                               " VALUES (?, 'o', '{}', ?, '')", (f"s{d}", digest))
        rows = db.execute("SELECT count(*) FROM packages").fetchone()[0]
        started = time.perf_counter()
        with db.transaction():
            swept = store.packages.prune_unlisted(store.lists.held())
        sweep = time.perf_counter() - started
        db.close()
        return times[snapshots:], sweep, rows, swept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=20_000)
    parser.add_argument("--snapshots", type=int, default=14)
    parser.add_argument("--churn", type=int, default=100)
    args = parser.parse_args()
    for prune in (False, True):
        times, sweep, rows, swept = measure(args.packages, args.snapshots, args.churn, prune_packages=prune)
        whole, prune_s = (statistics.median(t[i] for t in times) * 1e3 for i in range(2))
        label = "lists and packages" if prune else "lists only"
        print(f"prune {label}: final transaction of a routine update, median of {len(times)}: {whole:.1f} ms "
              f"(of which the prune {prune_s:.1f} ms); package rows {rows}, "
              f"gc's full sweep then deletes {swept} in {sweep * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
