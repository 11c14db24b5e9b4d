"""Publishing APT trees (reconciler.tree) and checking them (reconciler.treeverify).

The packages come from a real archive built by tests.support.archive: real .debs,
udebs and source packages, parsed with reconciler's own index reader and imported
into a FilesystemPool, as a mirror would. The judge of a published tree is the real
apt-get, with the publish's exported public key as its only trust.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler import gpg, tree, treeverify
from reconciler.debian import index
from reconciler.debian.package import Package, from_stanza
from reconciler.errors import Conflict, PermanentError, PoolDamaged
from reconciler.pool import FilesystemPool
from tests.support.archive import ArchiveBuilder, corrupt

DIST = "stable"
PREFIX = "debian"


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A small real archive: amd64+arm64, main+contrib, an `all` package, udeb, sources."""
    b = ArchiveBuilder(architectures=["amd64", "arm64"], components=["main", "contrib"])
    for arch in ("amd64", "arm64"):
        b.add("hello", "1.0-1", arch=arch, depends="libgreet1 (>= 1.0), greet-data")
        b.add("libgreet1", "1.0-1", arch=arch, source="libgreet")
    b.add("greet-data", "1.0-1", arch="all", source="libgreet")
    b.add("hello-udeb", "1.0-1", arch="amd64", source="hello", udeb=True)
    b.add("extra-tool", "2.0", arch="amd64", component="contrib")
    b.add_source("hello", "1.0-1")
    b.add_source("libgreet", "1.0-1")
    return b.build(tmp_path_factory.mktemp("upstream"))


@pytest.fixture
def pool(tmp_path) -> FilesystemPool:
    return FilesystemPool(tmp_path / "pool")


@pytest.fixture
def packages(upstream, pool) -> dict[str, list[Package]]:
    """component -> packages, read from the upstream indexes, files imported into `pool`."""
    comps: dict[str, dict[str, Package]] = {}
    for path in sorted(upstream.dist_dir.glob("*/**/Packages")) + sorted(upstream.dist_dir.glob("*/source/Sources")):
        comp = path.relative_to(upstream.dist_dir).parts[0]
        kind = "source" if path.name == "Sources" else "udeb" if "debian-installer" in path.parts else "deb"
        with open(path, "rb") as fh:
            for stanza in index.iter_stanzas(fh):
                pkg = from_stanza(stanza, kind)
                for f in pkg.files:
                    pool.import_file(upstream.root / f.path, sha256=f.sha256, size=f.size)
                comps.setdefault(comp, {})[pkg.key] = pkg
    return {comp: list(pkgs.values()) for comp, pkgs in sorted(comps.items())}


@pytest.fixture(scope="module")
def signer(gpg_key, tmp_path_factory):
    with gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=tmp_path_factory.mktemp("pub") / "gnupg") as s:
        yield s


@pytest.fixture(scope="module")
def keyring(signer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ring") / "published.gpg"
    path.write_bytes(signer.public_keyring())
    return path


def request(root: Path, components, **kw) -> tree.TreeRequest:
    options = dict(
        publish_root=root, prefix=PREFIX, distribution=DIST, components=components,
        architectures=["amd64", "arm64"], origin="Example", label="Example Repo", suite=None,
        codename=None, valid_for=timedelta(days=7), acquire_by_hash=True,
    )
    options.update(kw)
    return tree.TreeRequest(**options)


def without(components, *names: str) -> dict[str, list[Package]]:
    return {c: [p for p in pkgs if p.name not in names] for c, pkgs in components.items()}


def dists(root: Path, dist: str = DIST) -> Path:
    return root / PREFIX / "dists" / dist


def stanzas(path: Path) -> list[dict[str, str]]:
    with index.open_index(path) as fh:
        return list(index.iter_stanzas(fh))


def release_info(root: Path, dist: str = DIST) -> index.ReleaseInfo:
    return index.parse_release((dists(root, dist) / "Release").read_text())


# --- the published layout ------------------------------------------------------------


def test_publish_writes_a_tree_that_verifies(tmp_path, pool, packages, signer, keyring):
    result = tree.publish_tree(request(tmp_path, packages), pool, signer)
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == []
    assert result.signed and result.counts["main/binary-amd64"] == 3
    assert result.counts == {
        "main/binary-amd64": 3, "main/binary-arm64": 3, "main/debian-installer/binary-amd64": 1,
        "main/debian-installer/binary-arm64": 0, "main/source": 2, "contrib/binary-amd64": 1,
        "contrib/binary-arm64": 0, "contrib/debian-installer/binary-amd64": 0,
        "contrib/debian-installer/binary-arm64": 0, "contrib/source": 0,
    }
    assert result.release_sha256 == hashlib.sha256((dists(tmp_path) / "Release").read_bytes()).hexdigest()
    assert "pool/main/libg/libgreet/greet-data_1.0-1_all.deb" in result.pool_paths


def test_pool_files_are_hard_links_at_debian_paths(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages), pool, None)
    for comp, pkgs in packages.items():
        for pkg in pkgs:
            for rel, pf in tree.package_paths(comp, pkg):
                assert (tmp_path / PREFIX / rel).stat().st_ino == pool.path(pf.sha256).stat().st_ino
    assert (tmp_path / PREFIX / "pool/main/libg/libgreet/libgreet1_1.0-1_amd64.deb").is_file()
    assert (tmp_path / PREFIX / "pool/main/h/hello/hello_1.0-1.dsc").is_file()
    assert (tmp_path / PREFIX / "pool/contrib/e/extra-tool/extra-tool_2.0_amd64.deb").is_file()


def test_indexes_rewrite_only_the_pool_location(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages), pool, None)
    amd64 = stanzas(dists(tmp_path) / "main/binary-amd64/Packages")
    assert [s["Package"] for s in amd64] == ["greet-data", "hello", "libgreet1"]
    hello = next(s for s in amd64 if s["Package"] == "hello")
    original = next(p for p in packages["main"] if p.ref == "hello_1.0-1_amd64")
    assert list(hello) == list(original.fields)  # same fields, same order
    assert hello["Filename"] == "pool/main/h/hello/hello_1.0-1_amd64.deb"
    assert {k: v for k, v in hello.items() if k != "Filename"} == {
        k: v for k, v in original.fields.items() if k != "Filename"}
    arm64 = stanzas(dists(tmp_path) / "main/binary-arm64/Packages")
    assert "greet-data" in [s["Package"] for s in arm64]  # arch all: in every binary-ARCH
    sources = stanzas(dists(tmp_path) / "main/source/Sources")
    assert [(s["Package"], s["Directory"]) for s in sources] == [
        ("hello", "pool/main/h/hello"), ("libgreet", "pool/main/libg/libgreet")]
    udebs = stanzas(dists(tmp_path) / "main/debian-installer/binary-amd64/Packages")
    assert [s["Package"] for s in udebs] == ["hello-udeb"]


def test_compressed_indexes_hold_the_same_text(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages), pool, None)
    base = dists(tmp_path) / "main/binary-amd64/Packages"
    plain = base.read_bytes()
    assert gzip.decompress(base.with_name("Packages.gz").read_bytes()) == plain
    assert lzma.decompress(base.with_name("Packages.xz").read_bytes()) == plain


def test_release_lists_every_index_with_its_digests(tmp_path, pool, packages, signer):
    moment = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    tree.publish_tree(request(tmp_path, packages, date=moment, codename="bookworm"), pool, signer)
    info = release_info(tmp_path)
    assert info.fields["Origin"] == "Example" and info.fields["Label"] == "Example Repo"
    assert (info.fields["Suite"], info.fields["Codename"]) == ("stable", "bookworm")
    assert info.fields["Date"] == "Wed, 25 Nov 2026 12:00:00 UTC"
    assert info.fields["Valid-Until"] == "Wed, 02 Dec 2026 12:00:00 UTC"
    assert info.architectures == ["amd64", "arm64"] and info.components == ["contrib", "main"]
    assert info.acquire_by_hash
    on_disk = {
        p.relative_to(dists(tmp_path)).as_posix()
        for p in dists(tmp_path).rglob("*") if p.is_file() and "by-hash" not in p.parts
    } - {"Release", "InRelease", "Release.gpg"}
    assert set(info.files) == on_disk
    for path, (size, digests) in info.files.items():
        data = (dists(tmp_path) / path).read_bytes()
        assert size == len(data) and set(digests) == {"md5", "sha1", "sha256", "sha512"}
        for algo, digest in digests.items():
            assert hashlib.new(algo, data).hexdigest() == digest
        assert (dists(tmp_path) / os.path.dirname(path) / "by-hash/SHA256" / digests["sha256"]).read_bytes() == data
    component_release = (dists(tmp_path) / "main/binary-arm64/Release").read_text()
    assert "Component: main\n" in component_release and "Architecture: arm64\n" in component_release


def test_same_input_gives_identical_trees(tmp_path, pool, packages):
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = tree.publish_tree(request(tmp_path / "a", packages, date=moment), pool, None)
    second = tree.publish_tree(request(tmp_path / "b", packages, date=moment), pool, None)
    assert first.release_sha256 == second.release_sha256


def test_unsigned_publish_and_a_switch_from_signed(tmp_path, pool, packages, signer, keyring):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    tree.publish_tree(request(tmp_path, packages), pool, None)
    assert not (dists(tmp_path) / "InRelease").exists() and not (dists(tmp_path) / "Release.gpg").exists()
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None) == []
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == [
        f"dists/{DIST}: not signed (neither InRelease nor Release.gpg exists)"]


def test_prefix_dot_publishes_at_the_root(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages, prefix="."), pool, None)
    assert (tmp_path / "dists" / DIST / "Release").is_file()
    assert (tmp_path / "pool/main/h/hello/hello_1.0-1_amd64.deb").is_file()
    assert treeverify.verify_tree(tmp_path, ".", DIST, keyring=None) == []


# --- verify_tree finds damage --------------------------------------------------------


def _damage_pool_file(root: Path):
    corrupt(root / PREFIX / "pool/main/h/hello/hello_1.0-1_amd64.deb")
    return "pool/main/h/hello/hello_1.0-1_amd64.deb: SHA256"


def _truncate_source_file(root: Path):
    corrupt(root / PREFIX / "pool/main/h/hello/hello_1.0-1.dsc", truncate=True)
    return "pool/main/h/hello/hello_1.0-1.dsc: size"


def _delete_index(root: Path):
    (dists(root) / "main/binary-amd64/Packages.xz").unlink()
    return f"dists/{DIST}/main/binary-amd64/Packages.xz: missing"


def _delete_by_hash(root: Path):
    for path in (dists(root) / "contrib/binary-amd64/by-hash/SHA256").iterdir():
        path.unlink()
    return "(by-hash copy of contrib/binary-amd64/Packages"


def _edit_release(root: Path):
    path = dists(root) / "Release"
    path.write_text(path.read_text().replace("Origin: Example", "Origin: Elsewhere"))
    return f"dists/{DIST}/InRelease: the signed text differs from Release"


def _tamper_release_gpg_pair(root: Path):
    path = dists(root) / "Release"
    path.write_text(path.read_text().replace("Label: Example Repo", "Label: Evil"))
    return f"dists/{DIST}/Release.gpg: Release.gpg: BAD signature"


def _delete_pool_file(root: Path):
    (root / PREFIX / "pool/main/libg/libgreet/greet-data_1.0-1_all.deb").unlink()
    return "greet-data_1.0-1_all.deb: missing (needed by greet-data_1.0-1_all)"


def _garble_only_readable_index(root: Path):
    """Packages gone, Packages.xz damaged: the stanzas are still read, from Packages.gz."""
    (dists(root) / "main/binary-amd64/Packages").unlink()
    (dists(root) / "main/binary-amd64/Packages.xz").write_bytes(b"garbage")
    (root / PREFIX / "pool/main/h/hello/hello_1.0-1_amd64.deb").unlink()
    return "hello_1.0-1_amd64.deb: missing (needed by hello_1.0-1_amd64)"


@pytest.mark.parametrize("damage", [
    _garble_only_readable_index,
    _damage_pool_file, _truncate_source_file, _delete_index, _delete_by_hash, _edit_release,
    _tamper_release_gpg_pair, _delete_pool_file,
])
def test_verify_reports_damage(tmp_path, pool, packages, signer, keyring, damage):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    expected = damage(tmp_path)
    problems = treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring)
    assert any(expected in p for p in problems), problems


def test_shallow_verify_checks_package_files_by_size_only(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages), pool, None)
    _damage_pool_file(tmp_path)
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None, deep=False) == []
    assert len(treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None)) == 1
    _delete_pool_file(tmp_path)
    assert len(treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None, deep=False)) == 1
    published = tmp_path / PREFIX / "pool/main/h/hello/hello_1.0-1_arm64.deb"
    published.unlink()
    published.write_bytes(b"short")
    problems = treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None, deep=False)
    assert len(problems) == 2 and any("hello_1.0-1_arm64.deb: size 5, expected" in p for p in problems), problems


def test_verify_with_the_wrong_key(tmp_path, pool, packages, signer, other_gpg_key):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    problems = treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=other_gpg_key.public_keyring)
    assert len(problems) == 2 and all("NO_PUBKEY" in p for p in problems)


def test_verify_reports_an_expired_release(tmp_path, pool, packages):
    old = datetime.now(timezone.utc) - timedelta(days=8)
    tree.publish_tree(request(tmp_path, packages, date=old), pool, None)
    problems = treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None)
    assert len(problems) == 1 and "expired" in problems[0]


def test_verify_without_key_still_compares_inrelease(tmp_path, pool, packages, signer):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    _edit_release(tmp_path)
    problems = treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None)
    assert f"dists/{DIST}/InRelease: does not say what dists/{DIST}/Release says" in problems


def test_verify_of_a_missing_publish(tmp_path):
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None) == [f"dists/{DIST}/Release: missing"]


# --- conflicts and hostile input ----------------------------------------------------


def _rebuilt(pkg: Package, data: bytes, pool: FilesystemPool, tmp_path: Path) -> Package:
    """The same name/version/arch with different bytes: what a rebuilt upstream serves."""
    src = tmp_path / "rebuilt.deb"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    pool.import_file(src, sha256=sha, size=len(data))
    f = pkg.files[0]
    fields = {**pkg.fields, "SHA256": sha, "Size": str(len(data))}
    return Package(pkg.type, pkg.name, pkg.version, pkg.arch, fields, (type(f)(f.path, len(data), sha),))


def test_two_files_under_one_pool_name_conflict(tmp_path, pool, packages):
    hello = next(p for p in packages["main"] if p.ref == "hello_1.0-1_amd64")
    twin = _rebuilt(hello, b"rebuilt", pool, tmp_path)
    tree.publish_tree(request(tmp_path / "pub", packages), pool, None)
    before = (dists(tmp_path / "pub") / "Release").read_bytes()
    comps = {"main": packages["main"] + [twin]}
    with pytest.raises(Conflict) as err:
        tree.publish_tree(request(tmp_path / "pub", comps), pool, None)
    assert hello.files[0].sha256 in str(err.value) and twin.files[0].sha256 in str(err.value)
    # Refused before the switch: the tree clients read is the one before, whole.
    assert (dists(tmp_path / "pub") / "Release").read_bytes() == before
    assert not list(dists(tmp_path / "pub").glob(tree.STAGING_PREFIX + "*"))
    assert treeverify.verify_tree(tmp_path / "pub", PREFIX, DIST, keyring=None) == []


def test_a_different_file_already_published_conflicts(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path / "pub", packages), pool, None)
    hello = next(p for p in packages["main"] if p.ref == "hello_1.0-1_amd64")
    twin = _rebuilt(hello, b"rebuilt", pool, tmp_path)
    comps = {"main": [p if p is not hello else twin for p in packages["main"]]}
    with pytest.raises(Conflict, match="already holds a different file") as err:
        tree.publish_tree(request(tmp_path / "pub", comps, distribution="other"), pool, None)
    assert hello.files[0].sha256 in str(err.value) and twin.files[0].sha256 in str(err.value)


def test_an_identical_copy_already_in_place_is_left_alone(tmp_path, pool, packages):
    tree.publish_tree(request(tmp_path, packages), pool, None)
    published = tmp_path / PREFIX / "pool/main/h/hello/hello_1.0-1_amd64.deb"
    copy = published.with_name("copy")
    shutil.copyfile(published, copy)
    os.replace(copy, published)
    inode = published.stat().st_ino
    tree.publish_tree(request(tmp_path, packages), pool, None)
    assert published.stat().st_ino == inode


@pytest.mark.parametrize("field,value", [
    ("prefix", "../escape"), ("distribution", "../../etc"), ("distribution", "/abs"),
    ("components", {"../main": []}), ("architectures", ["all"]), ("architectures", []),
])
def test_hostile_or_impossible_requests_are_refused(tmp_path, pool, field, value):
    with pytest.raises(PermanentError):
        options = {"components": {"main": []}, field: value}
        tree.publish_tree(request(tmp_path, options.pop("components"), **options), pool, None)


def test_hostile_source_name_is_refused(tmp_path, pool, packages):
    hello = next(p for p in packages["main"] if p.ref == "hello_1.0-1_amd64")
    evil = Package(hello.type, hello.name, hello.version, hello.arch,
                   {**hello.fields, "Source": "../../etc"}, hello.files)
    with pytest.raises(PermanentError, match="not safe"):
        tree.publish_tree(request(tmp_path, {"main": [evil]}), pool, None)


def test_missing_pool_file_is_reported(tmp_path, pool, packages):
    hello = next(p for p in packages["main"] if p.ref == "hello_1.0-1_amd64")
    pool.remove(hello.files[0].sha256)
    with pytest.raises(PoolDamaged, match="hello_1.0-1_amd64.deb .*missing from the pool") as info:
        tree.publish_tree(request(tmp_path, packages), pool, None)
    assert list(info.value.files) == [hello.files[0].sha256]
    assert not (dists(tmp_path) / "Release").exists()


def test_pool_on_another_filesystem_is_copied(tmp_path, packages, upstream):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test directory")
    scratch = Path(__import__("tempfile").mkdtemp(dir=shm))
    try:
        other = FilesystemPool(scratch)
        for pkgs in packages.values():
            for pkg in pkgs:
                for f in pkg.files:
                    other.import_file(upstream.root / f.path, sha256=f.sha256, size=f.size)
        tree.publish_tree(request(tmp_path, packages), other, None)
        assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=None) == []
    finally:
        shutil.rmtree(scratch)


# --- re-publishing: switch, generations, removal ------------------------------------


def _by_hash(root: Path, rel: str = "main/binary-amd64") -> set[str]:
    directory = dists(root) / rel / "by-hash/SHA256"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()  # SHA512 alike


def _listed(root: Path, rel: str = "main/binary-amd64") -> set[str]:
    info = release_info(root)
    return {d["sha256"] for path, (_, d) in info.files.items() if os.path.dirname(path) == rel}


def test_republish_keeps_exactly_the_previous_by_hash_generation(tmp_path, pool, packages, signer, keyring):
    gen1 = packages
    gen2 = without(packages, "greet-data")
    gen3 = without(packages, "libgreet1")
    tree.publish_tree(request(tmp_path, gen1), pool, signer)
    first = _listed(tmp_path)
    tree.publish_tree(request(tmp_path, gen2), pool, signer)
    second = _listed(tmp_path)
    assert _by_hash(tmp_path) == first | second
    tree.publish_tree(request(tmp_path, gen3), pool, signer)
    assert _by_hash(tmp_path) == second | _listed(tmp_path)
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == []
    names = [s["Package"] for s in stanzas(dists(tmp_path) / "main/binary-amd64/Packages")]
    assert names == ["greet-data", "hello"]


def test_dropped_architecture_and_component_leave_no_stale_indexes(tmp_path, pool, packages, keyring, signer):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    tree.publish_tree(request(tmp_path, {"main": packages["main"]}, architectures=["amd64"]), pool, signer)
    assert not (dists(tmp_path) / "main/binary-arm64/Packages").exists()
    assert not (dists(tmp_path) / "contrib/binary-amd64/Packages").exists()
    # ... but the previous generation's by-hash files stay for clients mid-update
    assert _by_hash(tmp_path, "main/binary-arm64")
    tree.publish_tree(request(tmp_path, {"main": packages["main"]}, architectures=["amd64"]), pool, signer)
    assert not (dists(tmp_path) / "main/binary-arm64").exists()
    assert not (dists(tmp_path) / "contrib").exists()
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == []


def test_leftover_staging_dirs_are_removed(tmp_path, pool, packages):
    stale = dists(tmp_path) / ".staging-crashed"
    (stale / "main").mkdir(parents=True)
    tree.publish_tree(request(tmp_path, packages), pool, None)
    assert not stale.exists()
    assert not list(dists(tmp_path).glob(".staging-*"))


def test_readers_see_one_generation_or_the_other(tmp_path, pool, packages, signer):
    """While publishes switch, an apt-like reader (InRelease, then by-hash) never mixes.

    A read may only fail if two publishes completed between its InRelease and its
    index fetch: one generation back is kept, older ones are not.
    """
    sets = [packages, without(packages, "greet-data"), without(packages, "hello")]
    tree.publish_tree(request(tmp_path, sets[0]), pool, signer)
    done = threading.Event()
    state = {"generation": 0, "reads": 0, "mixed": []}

    def reader():
        while not done.is_set():
            seen = state["generation"]
            text = treeverify._unverified_body((dists(tmp_path) / "InRelease").read_bytes()).decode()
            size, digests = index.parse_release(text).files["main/binary-amd64/Packages.xz"]
            path = dists(tmp_path) / "main/binary-amd64/by-hash/SHA256" / digests["sha256"]
            try:
                ok = hashlib.sha256(path.read_bytes()).hexdigest() == digests["sha256"]
            except FileNotFoundError:
                ok = state["generation"] - seen >= 2
            state["reads"] += 1
            if not ok:
                state["mixed"].append(digests["sha256"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 10):
            tree.publish_tree(request(tmp_path, sets[i % 3]), pool, signer)
            state["generation"] = i
    finally:
        done.set()
        thread.join()
    assert state["reads"] > 0 and state["mixed"] == []


def test_cleanup_pool_keeps_what_other_distributions_use(tmp_path, pool, packages, signer, keyring):
    stable = packages
    testing = {"main": [p for p in packages["main"] if (p.name, p.type) != ("hello", "deb")]}
    tree.publish_tree(request(tmp_path, stable, distribution="stable"), pool, signer)
    kept = tree.publish_tree(request(tmp_path, testing, distribution="testing"), pool, signer).pool_paths
    # drop stable: the pool still serves testing
    assert tree.remove_tree(tmp_path, PREFIX, "stable")
    assert not dists(tmp_path, "stable").exists()
    removed = tree.cleanup_pool(tmp_path, PREFIX, kept)
    assert removed == 3  # hello amd64 and arm64, extra-tool
    assert not (tmp_path / PREFIX / "pool/main/h/hello/hello_1.0-1_amd64.deb").exists()
    assert (tmp_path / PREFIX / "pool/main/h/hello/hello_1.0-1.dsc").exists()  # testing lists the source
    assert not (tmp_path / PREFIX / "pool/contrib").exists()  # empty directories go too
    assert treeverify.verify_tree(tmp_path, PREFIX, "testing", keyring=keyring) == []
    assert tree.cleanup_pool(tmp_path, PREFIX, lambda path: True) == 0
    assert not tree.remove_tree(tmp_path, PREFIX, "stable")


def test_nested_distribution_is_not_touched(tmp_path, pool, packages, keyring, signer):
    """`stable/updates` lives inside dists/stable/: publishing or removing stable keeps it."""
    tree.publish_tree(request(tmp_path, packages, distribution="stable/updates"), pool, signer)
    tree.publish_tree(request(tmp_path, packages, distribution="stable"), pool, signer)
    tree.publish_tree(request(tmp_path, without(packages, "hello")), pool, signer)
    assert treeverify.verify_tree(tmp_path, PREFIX, "stable/updates", keyring=keyring) == []
    tree.remove_tree(tmp_path, PREFIX, "stable")
    assert treeverify.verify_tree(tmp_path, PREFIX, "stable/updates", keyring=keyring) == []
    assert not (dists(tmp_path) / "Release").exists() and not (dists(tmp_path) / "main").exists()


# --- the real apt-get as client ------------------------------------------------------


def _sources(url: str, keyring: Path, dist: str = DIST) -> list[str]:
    return [f"deb [signed-by={keyring}] {url}/{PREFIX} {dist} main contrib",
            f"deb-src [signed-by={keyring}] {url}/{PREFIX} {dist} main"]


def test_apt_get_installs_from_the_published_tree(tmp_path, pool, packages, signer, keyring,
                                                  http_server, apt_client):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    server = http_server(tmp_path)
    apt = apt_client(_sources(server.url, keyring))
    apt.update()
    indexes = [r.path for r in server.requests() if not r.path.endswith("/InRelease")]
    assert indexes and all("/by-hash/SHA512/" in p for p in indexes), indexes  # never a plain name
    apt.download("hello", "extra-tool")
    assert apt.downloaded() == ["extra-tool_2.0_amd64.deb", "greet-data_1.0-1_all.deb",
                                "hello_1.0-1_amd64.deb", "libgreet1_1.0-1_amd64.deb"]


def test_apt_get_follows_a_republish(tmp_path, pool, packages, signer, keyring, http_server, apt_client):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    server = http_server(tmp_path)
    apt = apt_client(_sources(server.url, keyring), arch="arm64")
    apt.update()
    tree.publish_tree(request(tmp_path, without(packages, "hello")), pool, signer)
    apt.update()
    result = apt.download("hello", check=False)
    assert result.returncode != 0 and "hello" in result.output
    apt.download("libgreet1")
    assert apt.downloaded() == ["libgreet1_1.0-1_arm64.deb"]


def test_apt_get_update_fails_with_the_wrong_key(tmp_path, pool, packages, signer, other_gpg_key,
                                                 http_server, apt_client):
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    server = http_server(tmp_path)
    apt = apt_client(_sources(server.url, other_gpg_key.public_keyring))
    result = apt.update(check=False)
    assert result.returncode != 0
    assert "NO_PUBKEY" in result.output or "not signed" in result.output


def test_apt_get_without_acquire_by_hash(tmp_path, pool, packages, signer, keyring, http_server, apt_client):
    tree.publish_tree(request(tmp_path, packages, acquire_by_hash=False), pool, signer)
    assert not list(dists(tmp_path).rglob("by-hash"))
    server = http_server(tmp_path)
    apt = apt_client(_sources(server.url, keyring))
    apt.update()
    apt.download("hello")
    assert len(apt.downloaded()) == 3


# --- reconciler.debian.index ---------------------------------------------------------


def test_iter_stanzas_reads_like_python_debian(upstream):
    from debian.deb822 import Deb822

    for path in [*upstream.dist_dir.glob("main/binary-amd64/Packages"), *upstream.dist_dir.glob("main/source/Sources")]:
        text = path.read_bytes() + b"\n# comment\n\n\nPackage: x\nDescription: a\n b  \n .\n"
        ours = list(index.iter_stanzas(io.BytesIO(text)))
        theirs = [dict(p) for p in Deb822.iter_paragraphs(io.BytesIO(text), use_apt_pkg=False)]
        assert ours == theirs and [list(s) for s in ours] == [list(p) for p in theirs]
        assert "\n".join(index.format_stanza(s) for s in ours[:-1]).encode() == path.read_bytes()


def test_iter_stanzas_round_trips_non_utf8_bytes():
    raw = b"Package: x\nDescription: caf\xe9\n"
    (stanza,) = index.iter_stanzas(io.BytesIO(raw))
    assert index.format_stanza(stanza).encode("utf-8", "surrogateescape") == raw


def test_parse_release_collects_sizes_and_digests():
    a, b, c = "a" * 32, "b" * 64, "c" * 64
    info = index.parse_release(
        "Origin: X\nComponents: main contrib\nAcquire-By-Hash: yes\n"
        f"MD5Sum:\n {a} 10 main/binary-amd64/Packages\n"
        f"SHA256:\n {b.upper()} 10 main/binary-amd64/Packages\n {c}   7 main/Contents-amd64\n"
        " ../../etc/passwd 7 main/binary-i386/Packages\n"
    )
    assert info.components == ["main", "contrib"] and info.acquire_by_hash
    assert info.files == {"main/binary-amd64/Packages": (10, {"md5": a, "sha256": b}),
                          "main/Contents-amd64": (7, {"sha256": c})}
    assert "malformed SHA256 row" in info.bad["main/binary-i386/Packages"]


# --- streaming input and index compression ----------------------------------------


def test_a_sorted_stream_publishes_the_same_tree_as_a_list(tmp_path, pool, packages):
    moment = datetime(2026, 11, 25, tzinfo=timezone.utc)
    types = {p.type for pkgs in packages.values() for p in pkgs}
    streams = {c: iter(sorted(pkgs, key=tree.order_key)) for c, pkgs in packages.items()}
    tree.publish_tree(request(tmp_path / "list", packages, date=moment), pool, None)
    tree.publish_tree(request(tmp_path / "stream", streams, date=moment, types=types), pool, None)
    assert (dists(tmp_path / "list") / "Release").read_bytes() == (dists(tmp_path / "stream") / "Release").read_bytes()


def test_an_unsorted_stream_is_refused_before_the_switch(tmp_path, pool, packages):
    backwards = {c: iter(sorted(pkgs, key=tree.order_key, reverse=True)) for c, pkgs in packages.items()}
    with pytest.raises(PermanentError, match="must be sorted"):
        tree.publish_tree(request(tmp_path, backwards, types={"deb", "udeb", "source"}), pool, None)
    assert not (dists(tmp_path) / "Release").exists()


def test_compression_levels_and_forms_follow_the_request(tmp_path, pool, packages, keyring, signer):
    tree.publish_tree(request(tmp_path, packages, compression={".gz": 9}), pool, signer)
    listed = release_info(tmp_path).files
    assert "main/binary-amd64/Packages.gz" in listed and "main/binary-amd64/Packages.xz" not in listed
    assert not (dists(tmp_path) / "main/binary-amd64/Packages.xz").exists()
    plain = (dists(tmp_path) / "main/binary-amd64/Packages").read_bytes()
    assert gzip.decompress((dists(tmp_path) / "main/binary-amd64/Packages.gz").read_bytes()) == plain
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == []
    with pytest.raises(PermanentError, match="level 10"):
        tree.publish_tree(request(tmp_path, packages, compression={".xz": 10}), pool, None)
    with pytest.raises(ValueError, match="level 0"):
        index.IndexWriter(tmp_path / "Packages-test", levels={".gz": 0})
    assert not (tmp_path / "Packages-test").exists()  # refused before any file was opened


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_the_fast_packages_reader_agrees_with_the_full_parser(tmp_path, pool, packages, monkeypatch, block):
    """The post-publish check reads Packages with a block regex; on block edges too."""
    tree.publish_tree(request(tmp_path, packages), pool, None)
    path = dists(tmp_path) / "main/binary-amd64/Packages"
    extra = "Package: ünïcode\nDescription: x\n Filename: not-a-field\nFilename: pool/x.deb\r\nSize: 3\n\n \n"
    path.write_bytes(path.read_bytes() + extra.encode())
    monkeypatch.setattr(treeverify, "_BLOCK", block)
    wanted = ("Package", "Version", "Architecture", "Filename", "Size", "SHA256")
    with open(path, "rb") as fh:
        full = [{k: v.strip() for k, v in s.items() if k in wanted} for s in index.iter_stanzas(fh)]
    with open(path, "rb") as fh:
        fast = list(treeverify._binary_stanzas(fh))
    assert fast == full and fast[-1]["Filename"] == "pool/x.deb" and len(fast) == 4


# --- the link worker ----------------------------------------------------------------


def test_link_worker_reads_triples_across_any_chunking():
    from reconciler import linkworker

    data = b"".join(f"/pool/{i}\0/tree/{i}\0{i}:5:6\0".encode() for i in range(50))

    class Trickle(io.BytesIO):
        def read1(self, size=-1):
            return super().read1(7)

    assert list(linkworker.triples(Trickle(data))) == [(f"/pool/{i}", f"/tree/{i}", f"{i}:5:6") for i in range(50)]


def test_an_unexpected_os_error_in_the_link_worker_fails_the_publish_before_the_switch(tmp_path, pool, packages):
    (tmp_path / PREFIX / "pool/main").mkdir(parents=True)
    (tmp_path / PREFIX / "pool/main/h").write_text("a file where a directory belongs")
    with pytest.raises(NotADirectoryError, match="pool/main/h"):
        tree.publish_tree(request(tmp_path, packages), pool, None)
    assert not (dists(tmp_path) / "Release").exists()
    assert not list(dists(tmp_path).glob(tree.STAGING_PREFIX + "*"))
