"""`reconciler state copy`: a root's state moves from SQLite to PostgreSQL and back.

After the copy, a second host (its own root, the same pool and published trees, the
copied state) plans nothing: the copy holds every object, list and digest the trees
were published from. Real CLI, real archive, real gpg, a real PostgreSQL server.
"""

from __future__ import annotations

import json

from reconciler.state import backend as statebackend
from reconciler.state import copy as statecopy
from tests.test_mirror_sync import cli
from tests.test_path_identity import _spec_dir


def _fingerprint(url: str, root) -> dict:
    session = statebackend.open_backend(url, root).session()
    try:
        return statecopy.fingerprint(session)
    finally:
        session.close()


def test_copy_to_postgresql_and_back_keeps_every_object_and_plans_nothing(tmp_path, gpg_key, passphrase_gpg_key,
                                                                         pg_url, monkeypatch):
    monkeypatch.delenv("RECONCILER_STATE", raising=False)  # this test names each state itself
    specs = _spec_dir(tmp_path / "specs", gpg_key, passphrase_gpg_key)
    root = tmp_path / "root"
    cli(root, "apply", "-f", str(specs))
    original = _fingerprint(None, root)
    assert original["mirrors"] and original["publishes"] and original["lists"]

    out = cli(root, "state", "copy", "--to", pg_url)
    assert "both sides list the same objects" in out.stdout, out.stdout
    assert _fingerprint(pg_url, root) == original

    other = tmp_path / "other-host"
    shared = ["--state", pg_url, "--pool", str(root / "pool"), "--publish-root", str(root / "public")]
    out = cli(other, *shared, "plan", "-f", str(specs), "--json", "--detailed-exitcode", expect=None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {c["op"] for c in json.loads(out.stdout)["changes"]} <= {"noop", "update"}, out.stdout

    back = f"sqlite:///{tmp_path / 'back' / 'state.db'}"
    cli(other, *shared, "state", "copy", "--to", back)
    assert _fingerprint(back, root) == original


def test_copy_refuses_a_destination_that_holds_state_and_changes_nothing(tmp_path, gpg_key, passphrase_gpg_key,
                                                                        pg_url, monkeypatch):
    monkeypatch.delenv("RECONCILER_STATE", raising=False)
    specs = _spec_dir(tmp_path / "specs", gpg_key, passphrase_gpg_key)
    root = tmp_path / "root"
    cli(root, "apply", "-f", str(specs))
    cli(root, "state", "copy", "--to", pg_url)
    before = _fingerprint(pg_url, root)
    out = cli(root, "state", "copy", "--to", pg_url, expect=1)
    assert "already holds state; nothing was copied" in out.stderr, out.stderr
    assert _fingerprint(pg_url, root) == before
    out = cli(root, "state", "copy", "--to", f"sqlite:///{root / 'state.db'}", expect=1)
    assert "the same state" in out.stderr


def test_copy_from_a_state_that_does_not_exist_is_a_clear_error(tmp_path, pg_url, monkeypatch):
    monkeypatch.delenv("RECONCILER_STATE", raising=False)
    out = cli(tmp_path / "nothing", "state", "copy", "--to", pg_url, expect=1)
    assert "holds no reconciler state; nothing was copied" in out.stderr, out.stderr
