"""Where signing keys are imported: RECONCILER_GNUPGHOME when set (the chart's
memory-backed volume), else ROOT/gnupg. Real CLI, real gpg, a signed publish."""

from __future__ import annotations

from tests.test_mirror_sync import cli
from tests.test_path_identity import _spec_dir


def _secret_keys(home) -> list:
    return sorted(p.name for p in (home / "private-keys-v1.d").glob("*.key")) if home.exists() else []


def test_signing_keys_are_imported_into_reconciler_gnupghome_not_the_root(tmp_path, gpg_key, passphrase_gpg_key,
                                                                         monkeypatch):
    specs = _spec_dir(tmp_path / "specs", gpg_key, passphrase_gpg_key)
    home = tmp_path / "memory" / "gnupg"
    monkeypatch.setenv("RECONCILER_GNUPGHOME", str(home))
    root = tmp_path / "root"
    cli(root, "apply", "-f", str(specs))
    assert _secret_keys(home), "the signing key was not imported into RECONCILER_GNUPGHOME"
    assert not (root / "gnupg").exists()
    assert list(root.rglob("dists/stable/InRelease"))


def test_without_it_keys_go_under_the_root(tmp_path, gpg_key, passphrase_gpg_key, monkeypatch):
    monkeypatch.delenv("RECONCILER_GNUPGHOME", raising=False)
    specs = _spec_dir(tmp_path / "specs", gpg_key, passphrase_gpg_key)
    root = tmp_path / "root"
    cli(root, "apply", "-f", str(specs))
    assert _secret_keys(root / "gnupg")
