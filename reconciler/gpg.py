"""The only module that runs gpg and gpgv: verifying upstream Release files, signing ours.

Verification follows apt's rules, because a mirror should accept exactly what apt
would accept:

- `gpgv` (not `gpg`) checks the signature against only the keyrings given, in a
  private, empty home directory, so nothing in the operator's `~/.gnupg` can make
  a signature trusted.
- The outcome is read from `--status-fd` lines, never from the exit code alone:
  archives are signed by several keys and a keyring may hold only some of them, so
  one good signature from a known key is enough (gpgv exits 2 then), while any
  BADSIG refuses the file. Signatures with weak digests (MD5, SHA-1, RIPEMD-160)
  do not count, as in apt >= 2.
- The verified Release text is what gpgv writes out with `--output`, never a parse
  of the unverified clearsigned text; and an InRelease with more than one signed
  block, or anything but whitespace around it, is refused before gpgv runs.

Signing uses a private GNUPGHOME (e.g. ROOT/gnupg) into which an armored secret key
file is imported, so a Kubernetes Secret can hold the key; gpg always runs with
`--batch --no-tty --pinentry-mode loopback`, so it fails instead of prompting.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from reconciler.errors import ReconcilerError, VerifyError

TIMEOUT = 120  # seconds; gpg never legitimately takes this long for one Release
WEAK_DIGESTS = {"1": "MD5", "2": "SHA-1", "3": "RIPEMD-160"}

_SIGNED_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"
_SIG_BEGIN = b"-----BEGIN PGP SIGNATURE-----"
_SIG_END = b"-----END PGP SIGNATURE-----"
_ARMOR = re.compile(rb"-----BEGIN PGP ([A-Z ]+)-----\r?\n(.*?)-----END PGP \1-----", re.S)


class GpgError(ReconcilerError):
    """gpg failed to import a key, sign or export: a configuration problem, not a retryable one."""

    http_status = 500


# ---------------------------------------------------------------------------
# Verification


def verify_release(
    *,
    inrelease: bytes | None,
    release: bytes | None,
    release_gpg: bytes | None,
    keyrings: list[Path],
    workdir: Path,
) -> bytes:
    """Verify InRelease, or else Release with Release.gpg, and return the verified Release text.

    InRelease wins when given, as in apt: a bad InRelease is an error, not a
    reason to try the detached pair. Raises VerifyError naming what went wrong.
    """
    if not keyrings:
        raise VerifyError("no keyrings given to verify the Release signature against")
    if inrelease is None and (release is None or release_gpg is None):
        raise VerifyError("no signature: neither InRelease nor Release with Release.gpg")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=workdir, prefix="gpgv-"))
    try:
        rings = [_binary_keyring(Path(k), scratch, i) for i, k in enumerate(keyrings)]
        if inrelease is not None:
            _check_clearsigned(inrelease)
            return _gpgv(scratch, rings, {"InRelease": inrelease}, what="InRelease", names=keyrings)
        assert release is not None and release_gpg is not None  # checked above
        _gpgv(scratch, rings, {"Release.gpg": release_gpg, "Release": release}, what="Release.gpg", names=keyrings)
        return release
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_clearsigned(data: bytes) -> None:
    """Refuse InRelease files that gpgv would accept but apt would not (extra text, 2 blocks)."""
    stripped = data.strip()
    if not stripped.startswith(_SIGNED_HEADER):
        raise VerifyError("InRelease: not a clearsigned message (text before the signed block)")
    if not stripped.endswith(_SIG_END):
        raise VerifyError("InRelease: text after the signature block")
    lines = stripped.splitlines()
    if lines.count(_SIGNED_HEADER) != 1 or lines.count(_SIG_BEGIN) != 1:
        raise VerifyError("InRelease: more than one signed block")


def _binary_keyring(path: Path, scratch: Path, index: int) -> Path:
    """gpgv reads only binary keyrings: dearmor an armored one (as apt does for .asc)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerifyError(f"keyring {path}: {exc.strerror}") from exc
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return path.resolve()
    out = scratch / f"keyring-{index}.gpg"
    out.write_bytes(dearmor(data, source=str(path)))
    return out


def dearmor(data: bytes, *, source: str = "key") -> bytes:
    """The binary packets of every ASCII-armored block in `data` (RFC 4880 section 6.2)."""
    packets = []
    for match in _ARMOR.finditer(data):
        lines = match.group(2).splitlines()
        body = lines[lines.index(b"") + 1 :] if b"" in lines else lines
        b64 = b"".join(line.strip() for line in body if not line.startswith(b"="))
        try:
            packets.append(base64.b64decode(b64, validate=True))
        except ValueError as exc:
            raise VerifyError(f"{source}: damaged ASCII armor ({exc})") from exc
    if not packets:
        raise VerifyError(f"{source}: no ASCII-armored block found")
    return b"".join(packets)


def _gpgv(scratch: Path, rings: list[Path], files: dict[str, bytes], *, what: str, names) -> bytes:
    """Run gpgv on `files` (signature first) and return what it wrote with --output."""
    home = scratch / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    for name, data in files.items():
        (scratch / name).write_bytes(data)
    output = scratch / "verified"
    cmd = ["gpgv", "--homedir", str(home), "--status-fd", "1", "--output", str(output)]
    for ring in rings:
        cmd += ["--keyring", str(ring)]
    cmd += [str(scratch / name) for name in files]
    proc = _run(cmd)
    status = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("[GNUPG:] ")]
    _judge(status, proc, what=what, rings=names)
    return output.read_bytes() if output.exists() else b""


def _judge(status: list[list[str]], proc: subprocess.CompletedProcess, *, what: str, rings) -> None:
    """Accept one good, strong signature and no bad one; otherwise say why not.

    Status lines are grouped per signature (each starts with NEWSIG): a signature
    counts only with GOODSIG, which gpgv does not give for an expired or revoked key
    or an expired signature even though it still prints VALIDSIG for those.
    """
    if sum(1 for words in status if words[:1] == ["PLAINTEXT"]) > 1:
        raise VerifyError(f"{what}: more than one signed block")
    signatures = _per_signature(status)
    for sig in signatures:
        if "BADSIG" in sig:
            raise VerifyError(f"{what}: BAD signature from {_who(sig['BADSIG'])}: the file was altered")
    if any("GOODSIG" in sig and not _weak(sig) for sig in signatures):
        return
    raise VerifyError(f"{what}: {_failure(signatures, proc, rings)}")


def _per_signature(status: list[list[str]]) -> list[dict[str, list[str]]]:
    signatures: list[dict[str, list[str]]] = []
    for words in status:
        if not words:
            continue
        if words[0] == "NEWSIG" or not signatures:
            signatures.append({})
        signatures[-1].setdefault(words[0], words[1:])
    return [sig for sig in signatures if set(sig) - {"NEWSIG", "PLAINTEXT"}]


def _weak(sig: dict[str, list[str]]) -> str | None:
    valid = sig.get("VALIDSIG", [])
    return WEAK_DIGESTS.get(valid[7]) if len(valid) > 7 else None


def _failure(signatures: list[dict[str, list[str]]], proc, rings) -> str:
    """Why no signature counted, the most telling reason first."""
    unknown = [sig["NO_PUBKEY"][0] for sig in signatures if sig.get("NO_PUBKEY")]
    reasons = {
        "GOODSIG": lambda w, s: f"signed with the weak digest algorithm {_weak(s)}, which apt rejects",
        "EXPKEYSIG": lambda w, s: f"signed by an expired key {_who(w)}",
        "REVKEYSIG": lambda w, s: f"signed by a revoked key {_who(w)}",
        "EXPSIG": lambda w, s: f"the signature by {_who(w)} has expired",
        "NO_PUBKEY": lambda w, s: (
            f"signed by unknown key NO_PUBKEY {', '.join(unknown)} "
            f"(not in keyrings {', '.join(str(r) for r in rings)})"
        ),
    }
    for kind, explain in reasons.items():
        for sig in signatures:
            if kind in sig:
                return explain(sig[kind], sig)
    if not signatures or any("NODATA" in sig for sig in signatures):
        return "no valid OpenPGP signature found"
    return f"signature not verified ({summarise(proc.stderr)})"


def _who(words: list[str]) -> str:
    return f"{words[0]} ({' '.join(words[1:])})" if len(words) > 1 else (words[0] if words else "?")


# ---------------------------------------------------------------------------
# Signing


def _prepare_home(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)  # gpg warns about (and agents refuse) looser homes


class Signer:
    """Signs Release files with one key: InRelease (clearsigned) and Release.gpg (detached).

    `key_file`: an armored secret key, imported into `gnupghome` (created mode 700;
    importing the same key again is a no-op), signing by that key's fingerprint so
    several keys can share one home. `key`: a fingerprint or key id already in
    `gnupghome`, or in the environment's GNUPGHOME when that is None.
    `close()` stops the gpg-agent of a home this Signer imported into.
    """

    def __init__(
        self,
        *,
        key_file: Path | None = None,
        key: str | None = None,
        gnupghome: Path | None = None,
        passphrase_file: Path | None = None,
    ):
        if (key_file is None) == (key is None):
            raise GpgError("signing needs exactly one of a key file or a key id")
        self.gnupghome = Path(gnupghome) if gnupghome is not None else None
        self.passphrase_file = Path(passphrase_file) if passphrase_file else None
        self._owns_home = key_file is not None
        self.key: str
        if key_file is None:
            self.key = str(key)  # given, as checked above
            self._gpg(["--list-secret-keys", self.key], action="looking up the secret key")
            return
        if self.gnupghome is None:
            raise GpgError("a key file is imported into a private GNUPGHOME: give gnupghome")
        _prepare_home(self.gnupghome)
        self.key = self._import(Path(key_file))

    def _import(self, key_file: Path) -> str:
        """Import the key file and return the fingerprint of its (first) secret key."""
        if not key_file.is_file():
            raise GpgError(f"signing key file {key_file} does not exist")
        shown = self._gpg(
            ["--with-colons", "--import-options", "show-only", "--import", str(key_file)],
            action=f"reading {key_file}",
        )
        fpr = _first_secret_fingerprint(shown.stdout.decode(errors="replace"))
        if fpr is None:
            raise GpgError(f"signing key file {key_file} holds no secret key")
        self._gpg(["--import", str(key_file)], action=f"importing {key_file}")
        return fpr

    def sign(self, release: bytes) -> tuple[bytes, bytes]:
        """(InRelease, Release.gpg) for a Release text."""
        return self.clearsign(release), self.detach_sign(release)

    def clearsign(self, data: bytes) -> bytes:
        return self._gpg(self._sign_args() + ["--clearsign"], stdin=data, action="clearsigning").stdout

    def detach_sign(self, data: bytes) -> bytes:
        args = self._sign_args() + ["--armor", "--detach-sign"]
        return self._gpg(args, stdin=data, action="signing").stdout

    def public_keyring(self) -> bytes:
        """The signing key's public part as a binary keyring, what clients verify with."""
        out = self._gpg(["--export", self.key], action="exporting").stdout
        if not out:
            raise GpgError(f"no public key {self.key} in {self._home_name()}")
        return out

    def _sign_args(self) -> list[str]:
        # SHA-256: accepted by every apt and by every RSA/ECC key size gpg makes.
        return ["--local-user", self.key, "--digest-algo", "SHA256", "--output", "-"]

    def _gpg(self, args: list[str], *, action: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        cmd = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback"]
        if self.gnupghome is not None:
            cmd += ["--homedir", str(self.gnupghome)]
        if self.passphrase_file is not None:
            cmd += ["--passphrase-file", str(self.passphrase_file)]
        proc = _run(cmd + args, stdin=stdin, text=False)
        if proc.returncode != 0:
            key = getattr(self, "key", None)  # not known yet while importing
            with_key = f" with key {key}" if key else ""
            raise GpgError(f"gpg {action}{with_key} in {self._home_name()} failed: "
                           f"{summarise(proc.stderr)}{self._socket_hint(proc.stderr)}")
        return proc

    def _socket_hint(self, stderr: bytes) -> str:
        """gpg-agent's socket lives in GNUPGHOME and a socket path has at most 107 bytes."""
        home = str(self.gnupghome or "")
        if b"agent" not in stderr or len(home) + len("/S.gpg-agent.browser") < 108:
            return ""
        return (f" (GNUPGHOME is {len(home)} characters long, too long for gpg-agent's socket: "
                "use a shorter root directory)")

    def _home_name(self) -> str:
        return str(self.gnupghome) if self.gnupghome else "the default GNUPGHOME"

    def close(self) -> None:
        """Stop the gpg-agent that signing started in our private home (no-op otherwise)."""
        if self._owns_home and self.gnupghome is not None and self.gnupghome.exists():
            _run(["gpgconf", "--homedir", str(self.gnupghome), "--kill", "gpg-agent"])

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_secret_fingerprint(colons: str) -> str | None:
    in_secret = False
    for line in colons.splitlines():
        kind = line.split(":", 1)[0]
        if kind == "sec":
            in_secret = True
        elif kind == "fpr" and in_secret:
            return line.split(":")[9]
    return None


# ---------------------------------------------------------------------------


def _run(cmd: list[str], *, stdin: bytes | None = None, text: bool = True) -> subprocess.CompletedProcess:
    try:
        env = {**os.environ, "LC_ALL": "C"}  # read now: GNUPGHOME may change after import
        proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=TIMEOUT)
    except FileNotFoundError as exc:
        raise GpgError(f"{cmd[0]} is not installed (apt-get install gpg gpgv)") from exc
    except subprocess.TimeoutExpired as exc:
        raise GpgError(f"{cmd[0]} did not finish within {TIMEOUT}s") from exc
    if text:
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))
    return proc


def summarise(stderr: bytes | str, limit: int = 400) -> str:
    """gpg's stderr in one line: its messages without the chatter, at most `limit` chars."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    noise = ("using ", "Signature made", "WARNING: unsafe", "please do a --check-trustdb")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(n in ln for n in noise)] or lines
    summary = "; ".join(kept)
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."
