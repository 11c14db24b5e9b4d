"""Snapshot merges with aptly's semantics, through the real CLI on a real signed archive.

The example upstream holds two versions of hello (2.10-1, 2.10-2) and of libgreet1
(1.0-1, 1.1-1) in main, so a single source already has slots with more than one
package: a merge must keep them all, and only a later source (or `latest`) decides
between sources.
"""

from __future__ import annotations

import json

import pytest

from tests.support.cli import reconciler
from tests.support.specs import mirror as mirror_spec

SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec: {body}
"""


@pytest.fixture
def root(tmp_path, http_archive):
    specs = tmp_path / "specs"
    specs.mkdir()
    text = mirror_spec("m", http_archive.url, http_archive.key.public_armored)
    snaps = {
        "full": "{mirror: m}",
        "old": "{mirror: m, filter: 'hello (= 2.10-1) | basesys'}",
        "new": "{mirror: m, filter: 'hello (= 2.10-2)'}",
        "one": "{snapshots: [full]}",
        "old-then-new": "{snapshots: [old, new]}",
        "new-then-old": "{snapshots: [new, old]}",
        "latest-new-then-old": "{snapshots: [new, old], latest: true}",
        "latest-full": "{snapshots: [full], latest: true}",
    }
    text += "".join(SNAPSHOT.format(name=n, body=b) for n, b in snaps.items())
    (specs / "all.yaml").write_text(text)
    out = reconciler(tmp_path / "root", "apply", "-f", str(specs))
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp_path / "root"


def packages(root, name: str) -> list[str]:
    """The snapshot's packages as name_version_arch, from `diff` against an empty-ish base."""
    out = reconciler(root, "diff", "snapshot", "new", name, "--json", check=True)
    diff = json.loads(out.stdout)
    base = {"hello_2.10-2_amd64"}
    gone = set(diff["removed"]) | {old for old, _new in diff["changed"]}
    return sorted((base - gone) | set(diff["added"]) | {new for _old, new in diff["changed"]})


def count(root, name: str) -> int:
    return json.loads(reconciler(root, "show", "snapshot", name, "--json", check=True).stdout)["numPackages"]


def test_a_merge_of_one_source_keeps_every_package_of_it(root):
    assert count(root, "one") == count(root, "full")
    assert {"hello_2.10-1_amd64", "hello_2.10-2_amd64"} <= set(packages(root, "one"))


def test_a_later_source_replaces_the_slot_even_with_a_lower_version(root):
    assert packages(root, "old-then-new") == ["basesys_1.0-1_amd64", "hello_2.10-2_amd64"]
    assert packages(root, "new-then-old") == ["basesys_1.0-1_amd64", "hello_2.10-1_amd64"]


def test_latest_keeps_the_highest_version_whatever_the_order(root):
    assert packages(root, "latest-new-then-old") == ["basesys_1.0-1_amd64", "hello_2.10-2_amd64"]
    latest = set(packages(root, "latest-full"))
    assert "hello_2.10-2_amd64" in latest and "hello_2.10-1_amd64" not in latest
    assert "libgreet1_1.1-1_amd64" in latest and "libgreet1_1.0-1_amd64" not in latest
    assert count(root, "latest-full") == count(root, "full") - 2
