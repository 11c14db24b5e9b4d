"""The state stores on the backend in use (SQLite; PostgreSQL on that leg): the ordered package
stream a publish reads, names PostgreSQL text cannot hold."""

from __future__ import annotations

import random

import pytest

from reconciler import tree
from reconciler.debian.package import Package, PackageFile
from reconciler.errors import StateError
from reconciler.state.stores import Store
from tests.support import statesql


def _package(name: str, version: str, arch: str, type_: str = "deb") -> Package:
    digest = f"{abs(hash((name, version, arch, type_))):064x}"[-64:]
    files = (PackageFile(f"pool/main/{name[0]}/{name}/{name}_{version}_{arch}.deb", 10, digest),)
    return Package(type_, name, version, arch, {"Package": name, "Version": version, "Architecture": arch}, files)


def test_ordered_streams_a_list_in_the_order_a_published_index_uses(tmp_path):
    names = ["a", "a+b", "a-b", "a.b", "aa", "Zed", "z", "libc6", "libc6-dev", "ünïcode", "x0", "x10", "x9"]
    versions = ["1.0", "1.0~rc1", "1.0+b1", "10.0", "2:0.1", "1.0-1"]
    rng = random.Random(7)
    packages = [_package(n, v, a, t) for n in names for v in rng.sample(versions, 3)
                for a, t in (("amd64", "deb"), ("all", "deb"), ("amd64", "udeb"), ("source", "source"))]
    rng.shuffle(packages)
    store = Store(statesql.session(tmp_path))
    ids = store.packages.add(packages)
    chosen = rng.sample(ids, len(ids) // 2)
    by_id = dict(zip(ids, packages))
    streamed = list(store.packages.ordered(chosen))
    assert [tree.order_key(p) for p in streamed] == sorted(tree.order_key(by_id[i]) for i in chosen)
    assert store.packages.kinds(chosen) == {(by_id[i].type, by_id[i].arch) for i in chosen}
    assert list(store.packages.ordered([])) == [] and store.packages.kinds([]) == set()


def test_source_files_names_every_file_without_decoding_stanzas(tmp_path):
    pkgs = [_package("hello", "1.0", "amd64"), _package("hello-doc", "1.0", "all"), _package("zed", "2", "amd64")]
    store = Store(statesql.session(tmp_path))
    ids = store.packages.add(pkgs)
    assert sorted(store.packages.source_files(ids[:2])) == sorted(
        (p.source_name, p.files[0].path) for p in pkgs[:2])


def test_a_name_with_a_nul_character_names_no_row(tmp_path):
    """PostgreSQL text cannot hold NUL: a lookup of such a name (from a URL) finds nothing,
    as on SQLite, instead of failing inside the driver."""
    store = Store(statesql.session(tmp_path))
    assert store.mirrors.get("m\x00") is None and store.snapshots.get("\x00") is None
    assert store.publishes.at("\x00", "stable") is None


def test_postgresql_refuses_to_store_a_nul_character_by_name(tmp_path):
    if not statesql.url(tmp_path).startswith("postgresql://"):
        pytest.skip("SQLite stores a NUL character; only PostgreSQL text cannot hold one")
    store = Store(statesql.session(tmp_path))
    with pytest.raises(StateError, match="cannot hold text with a NUL character: 'm\\\\x00'"):
        store.mirrors.create("m\x00", owner="default", spec={}, protect=False)
    assert store.mirrors.list() == []
