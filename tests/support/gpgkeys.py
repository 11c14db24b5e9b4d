"""Throwaway OpenPGP keys for tests, made with the real `gpg`.

Each key lives in its own GNUPGHOME so that tests can hold an upstream archive key, a
publishing key and a stranger's key side by side and prove that the wrong one is
refused. Generation costs about a second, so fixtures make each key once per session;
every GNUPGHOME starts its own gpg-agent, which `stop_agent` ends so tests leave no
processes behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The agent's socket lives in GNUPGHOME; a unix socket path must stay under 108 bytes.
_MAX_HOME = 80


@dataclass(frozen=True)
class GpgKey:
    """A signing key in its own GNUPGHOME, with its exports written next to it.

    `secret_armored` is what a Publish `keyFile` holds; `public_keyring` (binary) and
    `public_armored` are what clients and mirrors verify with.
    """

    home: Path
    fingerprint: str
    uid: str
    secret_armored: Path
    public_keyring: Path
    public_armored: Path
    passphrase: str | None = None
    passphrase_file: Path | None = None

    def gpg(self, *args: str | os.PathLike, input: bytes | None = None) -> bytes:
        """Run gpg in this key's home (batch, loopback passphrase); raise on failure."""
        return _gpg(self.home, *self._unlock(), *args, input=input)

    def sign_clear(self, src: os.PathLike, dst: os.PathLike) -> None:
        """Write `dst` as a clearsigned copy of `src` (Release -> InRelease)."""
        self.gpg("--yes", "--local-user", self.fingerprint, "--digest-algo", "SHA256",
                 "--clearsign", "--output", dst, src)

    def sign_detached(self, src: os.PathLike, dst: os.PathLike, *, armor: bool = True) -> None:
        """Write `dst` as a detached signature of `src` (Release -> Release.gpg)."""
        self.gpg("--yes", "--local-user", self.fingerprint, "--digest-algo", "SHA256",
                 *(["--armor"] if armor else []), "--detach-sign", "--output", dst, src)

    def stop_agent(self) -> None:
        """End the gpg-agent this GNUPGHOME started (no-op when none runs)."""
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=_env(self.home),
                       capture_output=True, check=False)

    def _unlock(self) -> list[str]:
        if self.passphrase is None:
            return []
        return ["--pinentry-mode", "loopback", "--passphrase", self.passphrase]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"}


def _gpg(home: Path, *args: str | os.PathLike, input: bytes | None = None) -> bytes:
    cmd = ["gpg", "--batch", "--no-tty", "--quiet", *map(str, args)]
    proc = subprocess.run(cmd, env=_env(home), input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _new_home(workdir: Path) -> Path:
    home = workdir / "gnupg"
    if len(str(home)) > _MAX_HOME:
        home = Path(tempfile.mkdtemp(prefix="gnupg-"))
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    return home


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "key"


def _fingerprint(home: Path) -> str:
    out = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def _export(home: Path, workdir: Path, name: str, fpr: str, unlock: list[str],
            passphrase: str | None) -> GpgKey:
    slug = _slug(name)
    secret, ring, pub = (workdir / f"{slug}.secret.asc", workdir / f"{slug}.gpg",
                         workdir / f"{slug}.pub.asc")
    secret.write_bytes(_gpg(home, *unlock, "--armor", "--export-secret-keys", fpr))
    secret.chmod(0o600)
    ring.write_bytes(_gpg(home, "--export", fpr))
    pub.write_bytes(_gpg(home, "--armor", "--export", fpr))
    pw_file = None
    if passphrase is not None:
        pw_file = workdir / f"{slug}.passphrase"
        pw_file.write_text(passphrase + "\n")
    uid = _gpg(home, "--with-colons", "--list-keys", fpr).decode()
    uid = next(line.split(":")[9] for line in uid.splitlines() if line.startswith("uid:"))
    return GpgKey(home=home, fingerprint=fpr, uid=uid, secret_armored=secret,
                  public_keyring=ring, public_armored=pub, passphrase=passphrase,
                  passphrase_file=pw_file)


def generate(workdir: os.PathLike, name: str = "Test Archive", *,
             passphrase: str | None = None) -> GpgKey:
    """Make an rsa2048 signing key in `workdir/gnupg` and export it into `workdir`.

    Files written: `<slug>.secret.asc`, `<slug>.gpg` (binary public keyring),
    `<slug>.pub.asc` and, with a passphrase, `<slug>.passphrase`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    home = _new_home(workdir)
    unlock = (["--pinentry-mode", "loopback", "--passphrase", passphrase or ""])
    uid = f"{name} <{_slug(name)}@example.invalid>"
    _gpg(home, *unlock, "--quick-gen-key", uid, "rsa2048", "sign", "never")
    return _export(home, workdir, name, _fingerprint(home), unlock, passphrase)


def load(workdir: os.PathLike, secret_armored: os.PathLike, name: str, *,
         passphrase: str | None = None) -> GpgKey:
    """Import an exported secret key into a fresh home: reuse a key across runs
    (the bundled example keeps its upstream key so committed keyrings stay valid)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    home = _new_home(workdir)
    unlock = ["--pinentry-mode", "loopback", "--passphrase", passphrase or ""]
    _gpg(home, *unlock, "--import", secret_armored)
    return _export(home, workdir, name, _fingerprint(home), unlock, passphrase)
