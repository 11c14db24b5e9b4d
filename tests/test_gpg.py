"""reconciler.gpg against the real gpg and gpgv, with throwaway keys (tests.support.gpgkeys)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler import gpg
from reconciler.errors import VerifyError
from tests.support import gpgkeys

RELEASE = (
    b"Origin: Test\nLabel: Test\nSuite: stable\nCodename: stable\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 UTC\n-dash line is escaped in clearsigned text\n"
    b"SHA256:\n 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 12 main/binary-amd64/Packages\n"
)


def _keyid(key: gpgkeys.GpgKey) -> str:
    return key.fingerprint[-16:]


def _clearsign(key: gpgkeys.GpgKey, data: bytes, tmp_path: Path) -> bytes:
    src, dst = tmp_path / "Release.in", tmp_path / "InRelease.out"
    src.write_bytes(data)
    key.sign_clear(src, dst)
    return dst.read_bytes()


def _detach(key: gpgkeys.GpgKey, data: bytes, tmp_path: Path, *, armor: bool = True) -> bytes:
    src, dst = tmp_path / "Release.in", tmp_path / f"Release.gpg.{key.fingerprint[:8]}"
    src.write_bytes(data)
    key.sign_detached(src, dst, armor=armor)
    return dst.read_bytes()


def _verify(tmp_path: Path, keyrings: list[Path], *, inrelease=None, release=None, release_gpg=None) -> bytes:
    return gpg.verify_release(
        inrelease=inrelease, release=release, release_gpg=release_gpg, keyrings=keyrings, workdir=tmp_path / "work"
    )


# --- verification --------------------------------------------------------------------


@pytest.mark.parametrize("ring", ["public_keyring", "public_armored"])
def test_good_inrelease_returns_the_signed_text(gpg_key, tmp_path, ring):
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path)
    assert _verify(tmp_path, [getattr(gpg_key, ring)], inrelease=inrelease) == RELEASE


def test_text_comes_from_gpgv_not_from_the_unverified_file(gpg_key, tmp_path):
    """The dash-escaped line comes back unescaped: gpgv's output, not a parse."""
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path)
    assert b"- -dash line" in inrelease
    assert b"\n-dash line" in _verify(tmp_path, [gpg_key.public_keyring], inrelease=inrelease)


def test_tampered_inrelease_is_refused(gpg_key, tmp_path):
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path).replace(b"Suite: stable", b"Suite: sTable")
    with pytest.raises(VerifyError, match="BAD signature"):
        _verify(tmp_path, [gpg_key.public_keyring], inrelease=inrelease)


def test_unknown_key_is_named(gpg_key, other_gpg_key, tmp_path):
    inrelease = _clearsign(other_gpg_key, RELEASE, tmp_path)
    with pytest.raises(VerifyError) as err:
        _verify(tmp_path, [gpg_key.public_keyring], inrelease=inrelease)
    assert "NO_PUBKEY" in str(err.value)
    assert _keyid(other_gpg_key) in str(err.value)
    assert str(gpg_key.public_keyring) in str(err.value)


def test_any_of_several_keyrings_may_hold_the_key(gpg_key, other_gpg_key, tmp_path):
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path)
    rings = [other_gpg_key.public_armored, gpg_key.public_armored]
    assert _verify(tmp_path, rings, inrelease=inrelease) == RELEASE


@pytest.mark.parametrize("armor", [True, False])
def test_release_with_detached_signature(gpg_key, tmp_path, armor):
    detached = _detach(gpg_key, RELEASE, tmp_path, armor=armor)
    got = _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE, release_gpg=detached)
    assert got == RELEASE


def test_release_altered_after_detached_signing_is_refused(gpg_key, tmp_path):
    detached = _detach(gpg_key, RELEASE, tmp_path)
    with pytest.raises(VerifyError, match="BAD signature"):
        _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE + b"Extra: 1\n", release_gpg=detached)


def test_one_good_signature_among_unknown_ones_is_enough(gpg_key, other_gpg_key, tmp_path):
    """Debian signs with several keys; a keyring holding one of them must suffice (as in apt)."""
    both = _detach(other_gpg_key, RELEASE, tmp_path, armor=False) + _detach(gpg_key, RELEASE, tmp_path, armor=False)
    assert _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE, release_gpg=both) == RELEASE


def test_missing_signature_is_refused(gpg_key, tmp_path):
    with pytest.raises(VerifyError, match="no signature"):
        _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE)


def test_garbage_signature_is_refused(gpg_key, tmp_path):
    with pytest.raises(VerifyError, match="no valid OpenPGP signature"):
        _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE, release_gpg=b"not a signature\n")


def test_no_keyrings_is_refused(gpg_key, tmp_path):
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path)
    with pytest.raises(VerifyError, match="no keyrings"):
        _verify(tmp_path, [], inrelease=inrelease)


@pytest.mark.parametrize("wrap", ["before", "after", "twice"])
def test_text_outside_the_signed_block_is_refused(gpg_key, tmp_path, wrap):
    inrelease = _clearsign(gpg_key, RELEASE, tmp_path)
    hostile = {
        "before": b"Origin: Evil\n\n" + inrelease,
        "after": inrelease + b"\nOrigin: Evil\n",
        "twice": inrelease + _clearsign(gpg_key, b"Origin: Evil\n", tmp_path),
    }[wrap]
    with pytest.raises(VerifyError, match="InRelease"):
        _verify(tmp_path, [gpg_key.public_keyring], inrelease=hostile)


def test_expired_key_is_refused(tmp_path):
    """A key that expired since it signed: gpgv still says VALIDSIG, apt and we refuse."""
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    then = ["--faked-system-time", "20200101T000000!"]
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}

    def run(*args: str, data: bytes | None = None) -> bytes:
        cmd = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *args]
        return subprocess.run(cmd, env=env, input=data, capture_output=True, check=True).stdout

    try:
        run(*then, "--quick-gen-key", "Old <old@example.invalid>", "rsa2048", "sign", "1d")
        inrelease = run(*then, "--clearsign", "--digest-algo", "SHA256", data=RELEASE)
        (tmp_path / "old.gpg").write_bytes(run("--export"))
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
    with pytest.raises(VerifyError, match="expired"):
        _verify(tmp_path, [tmp_path / "old.gpg"], inrelease=inrelease)


def test_dearmor_matches_gpg(gpg_key):
    assert gpg.dearmor(gpg_key.public_armored.read_bytes()) == gpg_key.public_keyring.read_bytes()


# --- signing -------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path_factory) -> Path:
    """A private GNUPGHOME with a short path (agent sockets must stay under 108 bytes)."""
    return tmp_path_factory.mktemp("sig") / "gnupg"


def test_signer_from_key_file_signs_what_verifies(gpg_key, home, tmp_path):
    with gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home) as signer:
        assert signer.key == gpg_key.fingerprint
        inrelease, detached = signer.sign(RELEASE)
        published = tmp_path / "published.gpg"
        published.write_bytes(signer.public_keyring())
    assert (home.stat().st_mode & 0o777) == 0o700
    assert _verify(tmp_path, [published], inrelease=inrelease) == RELEASE
    assert _verify(tmp_path, [gpg_key.public_keyring], release=RELEASE, release_gpg=detached) == RELEASE
    assert detached.startswith(b"-----BEGIN PGP SIGNATURE-----")


def test_importing_the_same_key_twice_is_fine(gpg_key, home):
    with gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home) as first:
        with gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home) as second:
            assert first.key == second.key
            assert second.clearsign(b"x\n").startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")


def test_two_keys_share_one_home_and_each_signs_with_its_own(gpg_key, other_gpg_key, home, tmp_path):
    with gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home) as mine, \
            gpg.Signer(key_file=other_gpg_key.secret_armored, gnupghome=home) as theirs:
        inrelease = theirs.clearsign(RELEASE)
        assert _verify(tmp_path, [other_gpg_key.public_keyring], inrelease=inrelease) == RELEASE
        with pytest.raises(VerifyError, match="NO_PUBKEY"):
            _verify(tmp_path, [gpg_key.public_keyring], inrelease=inrelease)
        assert mine.public_keyring() == gpg_key.public_keyring.read_bytes()


def test_passphrase_file_unlocks_a_protected_key(passphrase_gpg_key, home, tmp_path):
    with gpg.Signer(
        key_file=passphrase_gpg_key.secret_armored, gnupghome=home, passphrase_file=passphrase_gpg_key.passphrase_file
    ) as signer:
        inrelease = signer.clearsign(RELEASE)
    assert _verify(tmp_path, [passphrase_gpg_key.public_keyring], inrelease=inrelease) == RELEASE


def test_protected_key_without_passphrase_fails_instead_of_prompting(passphrase_gpg_key, home):
    with gpg.Signer(key_file=passphrase_gpg_key.secret_armored, gnupghome=home) as signer:
        with pytest.raises(gpg.GpgError, match="clearsigning"):
            signer.clearsign(RELEASE)


def test_key_from_an_existing_home(gpg_key, tmp_path):
    signer = gpg.Signer(key=gpg_key.fingerprint, gnupghome=gpg_key.home)
    inrelease = signer.clearsign(RELEASE)
    signer.close()  # not our home: must not stop its agent (nothing to assert but no error)
    assert _verify(tmp_path, [gpg_key.public_keyring], inrelease=inrelease) == RELEASE


def test_unknown_key_id_fails_with_gpg_message(gpg_key):
    with pytest.raises(gpg.GpgError, match="secret key with key 0123456789ABCDEF"):
        gpg.Signer(key="0123456789ABCDEF0123456789ABCDEF01234567", gnupghome=gpg_key.home)


def test_key_file_without_a_secret_key_is_refused(gpg_key, home):
    with pytest.raises(gpg.GpgError, match="no secret key"):
        gpg.Signer(key_file=gpg_key.public_armored, gnupghome=home)


def test_missing_key_file_is_refused(home, tmp_path):
    with pytest.raises(gpg.GpgError, match="does not exist"):
        gpg.Signer(key_file=tmp_path / "nope.asc", gnupghome=home)


def test_key_file_needs_a_private_home(gpg_key):
    with pytest.raises(gpg.GpgError, match="gnupghome"):
        gpg.Signer(key_file=gpg_key.secret_armored)


def test_close_stops_the_agent(gpg_key, home):
    signer = gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home)
    signer.clearsign(RELEASE)
    socket = subprocess.run(
        ["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(socket).exists()
    signer.close()
    assert not Path(socket).exists()


def test_too_long_home_gets_a_hint(gpg_key, tmp_path):
    if Path(f"/run/user/{os.getuid()}").is_dir():
        pytest.skip("gpg puts agent sockets under /run/user here, so long homes work")
    home = tmp_path / ("x" * (120 - len(str(tmp_path)))) / "gnupg"
    with pytest.raises(gpg.GpgError, match="too long for gpg-agent's socket"):
        gpg.Signer(key_file=gpg_key.secret_armored, gnupghome=home)
