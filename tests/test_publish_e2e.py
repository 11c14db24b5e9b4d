"""Mirror → snapshot → publish → the real apt-get, end to end through the CLI.

The published tree is served on 127.0.0.1 and read by apt-get with a throwaway
configuration that points only at it. Switching a publish to a newer snapshot upgrades
what apt sees, and a reader polling the tree during a switch never meets a Release whose
hashes disagree with the index it names.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support import examples
from tests.support.cli import reconciler

MIRROR = """\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: up}}
spec:
  url: {url}
  distribution: stable
  components: [main, contrib]
  architectures: [amd64]
  keyrings: [{keyring}]
"""
SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec:
  {body}
"""
PUBLISH = """\
---
apiVersion: reconciler/v1
kind: Publish
metadata: {{name: pub}}
spec:
  prefix: debian
  distribution: stable
  components: {{main: {snapshot}}}
  origin: Test
  signing: {{keyFile: {key}, passphraseFile: {passphrase}}}
  acquireByHash: true
"""


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return reconciler(root, *args, check=check)


class Setup:
    def __init__(self, tmp_path: Path, http_archive, signing_key):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.specs = tmp_path / "specs"
        self.specs.mkdir()
        self.upstream = http_archive
        self.signing_key = signing_key

    def write(self, snapshots: list[tuple[str, str]], publish_to: str | None) -> None:
        text = MIRROR.format(url=self.upstream.url, keyring=self.upstream.key.public_armored)
        for name, body in snapshots:
            text += SNAPSHOT.format(name=name, body=body)
        if publish_to:
            text += PUBLISH.format(snapshot=publish_to, key=self.signing_key.secret_armored,
                                   passphrase=self.signing_key.passphrase_file)
        (self.specs / "all.yaml").write_text(text)

    def apply(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return cli(self.root, "apply", "-f", str(self.specs), *extra, check=check)

    def state(self) -> list[tuple]:
        db = sqlite3.connect(self.root / "state.db")
        try:
            return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                    for t in ("mirrors", "snapshots", "publishes", "publish_sources", "package_lists")]
        finally:
            db.close()


@pytest.fixture
def setup(tmp_path, http_archive, passphrase_gpg_key) -> Setup:
    return Setup(tmp_path, http_archive, passphrase_gpg_key)


def debs_in(client) -> set[str]:
    return {p.name for p in (client.dir / "cache/archives").glob("*.deb")}


def test_apt_get_installs_from_the_published_tree_and_refuses_a_wrong_key(setup, http_server, apt_client, gpg_key):
    setup.write([("s1", "mirror: up")], "s1")
    setup.apply()
    public = http_server(setup.root / "public")
    keyring = setup.signing_key.public_keyring
    client = apt_client(f"deb [signed-by={keyring}] {public.url}/debian stable main")
    client.update()
    client.download("hello")
    assert debs_in(client) == {"hello_2.10-2_amd64.deb", "libgreet1_1.1-1_amd64.deb",
                               "greet-data_1.1-1_all.deb", "basesys_1.0-1_amd64.deb",
                               "hello-doc_2.10-2_all.deb"}  # Recommends are installed by default
    stranger = apt_client(f"deb [signed-by={gpg_key.public_keyring}] {public.url}/debian stable main")
    refused = stranger.update(check=False)
    assert refused.returncode != 0
    assert "NO_PUBKEY" in refused.output or "not signed" in refused.output
    assert cli(setup.root, "verify").returncode == 0


def test_switch_to_a_newer_snapshot_upgrades_what_apt_sees(setup, http_server, apt_client, gpg_key):
    setup.write([("s1", "mirror: up")], "s1")
    setup.apply()
    builder = examples.example_builder()
    builder.add("hello", "2.11-1", section="utils", depends="libgreet1 (>= 1.1), greet-data")
    builder.remove("tinymta")
    builder.build(setup.upstream.archive.root, distribution="stable", codename="lighthouse", origin="Example",
                  label="Example Upstream", sign_with=gpg_key)
    setup.write([("s1", "mirror: up"), ("s2", "mirror: up")], "s2")
    plan = cli(setup.root, "plan", "-f", str(setup.specs), "--json")
    changes = {(c["kind"], c["name"]): c for c in json.loads(plan.stdout)["changes"]}
    assert changes[("Mirror", "up")]["op"] == "update"
    assert changes[("Mirror", "up")]["detail"]["added"] + changes[("Mirror", "up")]["detail"]["changed"] >= 1
    assert changes[("Snapshot", "s2")]["op"] == "create"
    assert changes[("Publish", "pub")]["op"] == "switch"
    # The previews show the snapshot as it will be, after the mirror's update in this plan.
    upcoming = changes[("Mirror", "up")]["detail"]["numPackages"]
    assert changes[("Snapshot", "s2")]["detail"]["numPackages"] == upcoming
    assert "after the mirror's update" in changes[("Snapshot", "s2")]["reason"]
    main = changes[("Publish", "pub")]["detail"]["packages"]["main"]
    assert "hello_2.11-1_amd64" in main["added"]
    assert "tinymta_0.9-1_amd64" in main["removed"]
    setup.apply()
    diff = cli(setup.root, "diff", "snapshot", "s1", "s2", "--json")
    result = json.loads(diff.stdout)
    assert "hello_2.11-1_amd64" in result["added"]
    assert "tinymta_0.9-1_amd64" in result["removed"]
    public = http_server(setup.root / "public")
    client = apt_client(f"deb [signed-by={setup.signing_key.public_keyring}] {public.url}/debian stable main")
    client.update()
    client.download("hello")
    assert "hello_2.11-1_amd64.deb" in debs_in(client)
    assert client.download("tinymta", check=False).returncode != 0
    assert cli(setup.root, "verify").returncode == 0


def _consistent(dist: Path) -> str | None:
    """Read the tree as apt does (InRelease, then the index by hash); describe a mismatch."""
    try:
        text = (dist / "InRelease").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^ ([0-9a-f]{64})\s+(\d+) main/binary-amd64/Packages$", text, re.M)
    if not match:
        return "InRelease names no main/binary-amd64/Packages"
    sha, size = match.group(1), int(match.group(2))
    try:
        data = (dist / "main/binary-amd64/by-hash/SHA256" / sha).read_bytes()
    except FileNotFoundError:
        return f"by-hash/SHA256/{sha} is missing"
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        return "by-hash index does not match the Release"
    return None


def test_a_reader_during_switches_never_sees_a_mismatch(setup):
    setup.write([("s1", "mirror: up"), ("s2", "mirror: up\n  filter: 'hello'\n  filterWithDeps: true")], "s1")
    setup.apply()
    dist = setup.root / "public/debian/dists/stable"
    problems, reads, stop = [], [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            found = _consistent(dist)
            reads[0] += 1
            if found:
                problems.append(found)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for target in ("s2", "s1", "s2", "s1"):
            setup.write([("s1", "mirror: up"), ("s2", "mirror: up\n  filter: 'hello'\n  filterWithDeps: true")],
                        target)
            setup.apply()
    finally:
        stop.set()
        reader.join()
    assert reads[0] > 10
    assert problems == []


def test_snapshot_in_use_by_a_publish_is_not_dropped(setup):
    from reconciler import tasks
    from reconciler.actions import snapshots
    from reconciler.errors import InUse

    setup.write([("s1", "mirror: up")], "s1")
    setup.apply()
    before = setup.state()
    ctx = tasks.Context(setup.root)
    with pytest.raises(InUse) as info:
        snapshots.drop(ctx, "s1")
    assert info.value.users == ["publish/pub"] and info.value.http_status == 403
    assert setup.state() == before
    snapshots.drop(ctx, "s1", force=True)
    assert ctx.store().snapshots.get("s1") is None


def test_users_are_dropped_before_what_they_use(setup):
    setup.write([("s1", "mirror: up")], "s1")
    setup.apply()
    (setup.specs / "all.yaml").write_text("# nothing declared any more\n")
    out = setup.apply(check=False)
    # an empty spec set is refused by the loader: a typo'd -f must not prune everything
    assert out.returncode == 1 and "no spec documents found" in out.stderr
    setup.write([], None)
    out = setup.apply()
    order = [line.split(":")[0] for line in out.stdout.splitlines() if "dropped" in line]
    assert order == ["publish/pub", "snapshot/s1"]
    assert not (setup.root / "public/debian/dists/stable").exists()
    assert list((setup.root / "public/debian").rglob("*.deb")) == []


def test_changed_snapshot_spec_is_a_plan_error_unless_replaced_in_place(setup):
    setup.write([("s1", "mirror: up")], "s1")
    setup.apply()
    before = setup.state()
    setup.write([("s1", "mirror: up\n  filter: 'hello'")], "s1")
    out = setup.apply(check=False)
    assert out.returncode == 1
    assert "snapshots are immutable" in out.stderr and "--replace s1" in out.stderr
    assert setup.state() == before
    # Replaced in place: the publish keeps its snapshot name and switches to the new content
    # in the same apply (a drop and create was refused as in use, or lost the snapshot).
    replaced = setup.apply("--replace", "s1")
    assert "snapshot/s1: replaced" in replaced.stdout and "publish/pub: switched" in replaced.stdout
    names = [p.name for p in (setup.root / "public/debian/pool").rglob("*.deb")]
    assert names and all(n.startswith("hello_") for n in names)
    assert cli(setup.root, "plan", "-f", str(setup.specs), "--detailed-exitcode", check=False).returncode == 0
    assert cli(setup.root, "verify").returncode == 0


def test_moving_a_publish_to_another_prefix_cleans_the_old_prefix(setup):
    """The old prefix loses its dists and the pool files only the moved publish used;
    another publish still under the old prefix keeps its own."""
    setup.write([("snap1", "mirror: up")], publish_to="snap1")
    setup.apply()
    old_pool = setup.root / "public/debian/pool"
    assert any(old_pool.rglob("*.deb"))
    spec = setup.specs / "all.yaml"
    stay = PUBLISH.format(snapshot="snap1", key=setup.signing_key.secret_armored,
                          passphrase=setup.signing_key.passphrase_file)
    stay = stay.replace("name: pub", "name: stays").replace("distribution: stable", "distribution: testing")
    stay = stay.replace("components: {main: snap1}", "components: {contrib: snap1}")
    spec.write_text(spec.read_text() + stay)
    setup.apply()
    kept = {p.relative_to(old_pool).as_posix() for p in old_pool.rglob("*.deb")}
    assert {k for k in kept if k.startswith("main/")} and {k for k in kept if k.startswith("contrib/")}
    spec.write_text(spec.read_text().replace("prefix: debian\n  distribution: stable", "prefix: moved\n  distribution: stable"))
    out = setup.apply().stdout
    assert "publish/pub: switched moved/stable" in out, out
    assert not (setup.root / "public/debian/dists/stable").exists()
    left = {p.relative_to(old_pool).as_posix() for p in old_pool.rglob("*.deb")}
    assert left == {k for k in kept if k.startswith("contrib/")}  # only what `stays` uses
    assert cli(setup.root, "verify").returncode == 0


def test_a_missing_signing_key_file_is_a_plan_error(setup, tmp_path):
    setup.write([("s1", "mirror: up")], "s1")
    spec = setup.specs / "all.yaml"
    spec.write_text(spec.read_text().replace(str(setup.signing_key.secret_armored), str(tmp_path / "gone.asc")))
    planned = cli(setup.root, "plan", "-f", str(setup.specs), "--detailed-exitcode", check=False)
    assert planned.returncode == 1
    assert f"publish/pub: signing.keyFile {tmp_path / 'gone.asc'}: No such file or directory" in planned.stdout
