"""Files a spec names are compared by what they hold, not by where they are.

Copying the spec directory (keys, keyrings and a `file:` upstream inside it), or
`serve --git` checking each commit out into a new directory, must plan nothing and
re-sign nothing; a key file whose content changed must be planned. The real CLI over
a real signed archive served from the spec directory itself, real gpg keys.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support import examples
from tests.test_mirror_sync import cli

def _specs(signing: dict) -> str:
    """A mirror of `file:upstream` checked with keys/archive.gpg, a snapshot of it, and a
    publish signed with keys/signing.asc: every path relative to the spec file."""
    def one(kind: str, name: str, spec: dict) -> str:
        return json.dumps({"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
    return "\n---\n".join([
        one("Mirror", "up", {"url": "file:upstream", "distribution": "stable", "keyrings": ["keys/archive.gpg"]}),
        one("Snapshot", "snap", {"mirror": "up"}),
        one("Publish", "pub", {"prefix": "debian", "distribution": "stable", "components": {"main": "snap"},
                               "signing": {"keyFile": "keys/signing.asc", **signing}}),
    ]) + "\n"


def _spec_dir(where: Path, upstream_key, signing_key) -> Path:
    """A spec directory holding its upstream archive, its keyring and its signing key."""
    where.mkdir()
    examples.example_builder().build(where / "upstream", distribution="stable", sign_with=upstream_key)
    (where / "keys").mkdir()
    shutil.copy(upstream_key.public_keyring, where / "keys" / "archive.gpg")
    shutil.copy(signing_key.secret_armored, where / "keys" / "signing.asc")
    shutil.copy(signing_key.passphrase_file, where / "keys" / "passphrase")
    (where / "all.yaml").write_text(_specs({"passphraseFile": "keys/passphrase"}))
    return where


def _plan(root: Path, specs: Path, *extra: str) -> tuple[int, dict]:
    out = cli(root, "plan", "-f", str(specs), "--json", "--detailed-exitcode", *extra, expect=None)
    return out.returncode, json.loads(out.stdout)


def _release(root: Path) -> bytes:
    return next(root.rglob("debian/dists/stable/InRelease")).read_bytes()


def _stored_paths(root: Path) -> str:
    db = sqlite3.connect(root / "state.db")
    try:
        return json.dumps([db.execute(f"SELECT spec FROM {t}").fetchall() for t in ("mirrors", "publishes")])
    finally:
        db.close()


@pytest.fixture
def applied(tmp_path, gpg_key, passphrase_gpg_key):
    """Specs applied from one directory, then the whole directory copied elsewhere."""
    first = _spec_dir(tmp_path / "first", gpg_key, passphrase_gpg_key)
    root = tmp_path / "root"
    cli(root, "apply", "-f", str(first))
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    return root, first, copy


def test_a_copied_spec_directory_plans_nothing_and_re_signs_nothing(applied):
    root, first, copy = applied
    code, plan = _plan(root, copy, "--take-over")
    assert code == 0, [c for c in plan["changes"] if c["op"] != "noop"]
    signed = _release(root)
    out = cli(root, "apply", "-f", str(copy), "--take-over")
    assert _release(root) == signed, out.stdout  # not re-signed
    # the stored specs now name the copy: what re-reads them finds the files after the first is gone
    shutil.rmtree(first)
    stored = _stored_paths(root)
    assert str(first) not in stored and str(copy / "keys" / "signing.asc") in stored
    assert str(copy / "keys" / "passphrase") in stored
    code, plan = _plan(root, copy)
    assert code == 0, [c for c in plan["changes"] if c["op"] != "noop"]


def test_a_key_file_whose_content_changed_is_planned_and_re_signs(applied, other_gpg_key):
    """Same path, same spec text, another key in the file: the tree is signed again with it."""
    root, first, _copy = applied
    shutil.copy(other_gpg_key.secret_armored, first / "keys" / "signing.asc")
    code, plan = _plan(root, first)
    assert code == 2
    change = next(c for c in plan["changes"] if c["kind"] == "Publish")
    assert change["op"] != "noop" and "signing key file" in change["reason"]
    signed = _release(root)
    cli(root, "apply", "-f", str(first))
    assert _release(root) != signed
    other_gpg_key.gpg("--verify", next(root.rglob("debian/dists/stable/InRelease")))
    assert _plan(root, first)[0] == 0


def test_a_keyring_whose_content_changed_is_an_edit(applied, gpg_key):
    root, first, _copy = applied
    shutil.copy(gpg_key.public_armored, first / "keys" / "archive.gpg")  # the same key, other bytes
    code, plan = _plan(root, first)
    assert code == 2
    change = next(c for c in plan["changes"] if c["kind"] == "Mirror")
    assert change["op"] == "edit" and change["detail"]["fields"] == ["keyrings"]
    cli(root, "apply", "-f", str(first))
    assert _plan(root, first)[0] == 0
