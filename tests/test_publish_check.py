"""A publish checks its staged generation before the switch, never after it.

A check that failed after the switch left the new tree served while the database kept
the old row. Here the check is made to fail the way a damaged state would make it: the
stored stanza of a package says a Size its pool file does not have, so the index a
client would read names a file it would refuse. The publish must refuse before
anything switches: the previous tree stays served byte for byte, the database keeps
its row, and no by-hash file of the refused generation is left behind.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from reconciler import tree, treeverify
from tests.support.cli import reconciler
from tests.test_publish_e2e import Setup, setup  # noqa: F401  (the fixture)
from tests.test_tree import (  # noqa: F401  (fixtures)
    DIST,
    PREFIX,
    keyring,
    packages,
    pool,
    request,
    signer,
    upstream,
    without,
)


def served(root: Path) -> dict[str, str]:
    """sha256 of every file under the published dists/ (by-hash copies included)."""
    dists = root / "public" / "debian" / "dists"
    return {p.relative_to(dists).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dists.rglob("*")) if p.is_file()}


def publish_row(root: Path) -> tuple:
    db = sqlite3.connect(root / "state.db")
    try:
        return db.execute("SELECT sources, inputs_digest, release_sha256, published_at FROM publishes").fetchone()
    finally:
        db.close()


def test_a_failing_check_leaves_the_previous_tree_served_and_the_database_unchanged(setup: Setup):  # noqa: F811
    setup.write([("s1", "mirror: up"), ("s2", "mirror: up\n  filter: hello | libgreet1")], "s1")
    setup.apply()
    before_tree, before_row = served(setup.root), publish_row(setup.root)
    db = sqlite3.connect(setup.root / "state.db")
    with db:  # the stanza of hello 2.10-2 now says a Size its pool file does not have
        changed = db.execute("UPDATE packages SET fields = json_set(fields, '$.Size', '12345')"
                             " WHERE name = 'hello' AND version = '2.10-2'").rowcount
    db.close()
    assert changed == 1

    setup.write([("s1", "mirror: up"), ("s2", "mirror: up\n  filter: hello | libgreet1")], "s2")
    out = setup.apply(check=False)

    assert out.returncode == 1, out.stdout + out.stderr
    assert served(setup.root) == before_tree  # Release, InRelease, indexes, by-hash: all as before
    assert publish_row(setup.root) == before_row
    assert "not switched, the staged tree does not verify" in out.stdout
    assert "hello_2.10-2_amd64.deb: size 1080, expected 12345" in out.stdout
    assert reconciler(setup.root, "verify").returncode == 0


# --- the staged check at the tree level ----------------------------------------------


def test_the_staged_generation_is_checked_before_anything_switches(tmp_path, pool, packages, signer,  # noqa: F811
                                                                   keyring):  # noqa: F811
    tree.publish_tree(request(tmp_path, packages), pool, signer)
    dists = tmp_path / PREFIX / "dists" / DIST
    before = {p.relative_to(dists): p.read_bytes() for p in dists.rglob("*") if p.is_file()}
    seen = []

    def refuse(stage):
        seen.append(treeverify.verify_staged(tmp_path, PREFIX, DIST, stage, keyring=keyring))
        (stage / "main/binary-amd64/Packages").write_bytes(b"damaged\n")  # what a client would meet
        seen.append(treeverify.verify_staged(tmp_path, PREFIX, DIST, stage, keyring=keyring))
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        tree.publish_tree(request(tmp_path, without(packages, "hello")), pool, signer, check=refuse)
    assert seen[0] == []  # the sound staged generation verifies: its by-hash copies and pool links are in place
    assert any("main/binary-amd64/Packages: size" in p and "(staged)" in p for p in seen[1]), seen[1]
    after = {p.relative_to(dists): p.read_bytes() for p in dists.rglob("*") if p.is_file()}
    assert after == before  # no by-hash copy of the refused generation is left, nothing switched
    assert treeverify.verify_tree(tmp_path, PREFIX, DIST, keyring=keyring) == []
