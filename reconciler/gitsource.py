"""Specs from a git repository, read with dulwich (no git binary in the image).

`serve --git URL --ref REF --path DIR` polls this source. Each poll is one cheap
request, `check()` (what `git ls-remote` does): which commit does REF name now. Only
a commit not seen before is fetched, into a bare cache under ROOT/git-cache, and then
exported, file by file, into a directory of its own (`checkouts/SHA`), which is
immutable from then on: the loader reads a tree that cannot change under it, and the
revision it reports is exactly the commit it read.

With `trusted_keys`, the commit REF points at must carry an OpenPGP signature by one
of those keys. The check runs `gpgv` through `reconciler.gpg` against a keyring of
only those keys, so neither the operator's ~/.gnupg nor a key that merely exists
somewhere can make a commit trusted, and an unsigned commit is refused outright.
(dulwich's own `verify_commit` trusts any good signature unless handed key ids, and
passes an unsigned commit silently without them.)

Credentials come from files (mounted Secrets), read once at start: HTTP basic
(username + password), a bearer token, or an SSH private key (`GIT_SSH_COMMAND` is
honoured, so the chart can pin known_hosts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reconciler import gpg
from reconciler.errors import ReconcilerError, Refused, SpecError, SpecIssue, TemporaryError, VerifyError
from reconciler.loader import Specs, load_specs

TIMEOUT = 60.0  # seconds per HTTP request to the git server
KEEP_CHECKOUTS = 3
_SHA = re.compile(r"^[0-9a-f]{40}$")


class SourceError(TemporaryError):
    """The git server could not be reached or refused us; retried with backoff."""


class UntrustedCommit(Refused):
    """--verify-commits: the head commit is unsigned or not signed by a trusted key."""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None
    ssh_key_file: Path | None = None

    @classmethod
    def from_files(cls, *, username_file: Path | None = None, password_file: Path | None = None,
                   token_file: Path | None = None, ssh_key_file: Path | None = None) -> Credentials:
        def read(path: Path | None) -> str | None:
            return path.read_text().strip() if path else None

        return cls(read(username_file), read(password_file), read(token_file), ssh_key_file)


def redact(url: str) -> str:
    """The URL without any user:password part, for messages and the status."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_subdir(path: str) -> str:
    """`--path` as a safe relative path inside the repository ("." for the top)."""
    pure = PurePosixPath(path.strip("/") or ".")
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"--path {path!r} must be a relative path inside the repository")
    return str(pure)


class GitSource:
    def __init__(self, url: str, *, ref: str, path: str, cache: Path, credentials: Credentials = Credentials(),
                 trusted_keys: Path | None = None, workdir: Path):
        self.url, self.ref, self.path = url, ref, check_subdir(path)
        self.credentials = credentials
        self.trusted_keys = trusted_keys
        self.workdir = workdir
        self.cache = cache / hashlib.sha256(redact(url).encode()).hexdigest()[:16]
        self.checkouts = self.cache / "checkouts"

    def describe(self) -> dict:
        return {"type": "git", "url": redact(self.url), "ref": self.ref, "path": self.path,
                "verifyCommits": self.trusted_keys is not None}

    # -- the cheap check --------------------------------------------------------------

    def check(self) -> str:
        """The commit REF names on the server now (one ls-remote request)."""
        if _SHA.match(self.ref):
            return self.ref
        refs = self._call("list refs", lambda client, path: client.get_refs(path.encode()).refs)
        return _resolve(refs, self.ref, redact(self.url))

    # -- fetch, verify, export --------------------------------------------------------

    def load(self, revision: str) -> tuple[str, Specs]:
        """Fetch commit `revision` if needed, verify it, and load the specs it holds."""
        repo = self._repo()
        try:
            sha = self._fetch(repo, revision)
            if self.trusted_keys is not None:
                self._verify(repo, sha, self.trusted_keys)
            tree = self._export(repo, sha)
        finally:
            repo.close()
        try:
            return sha, load_specs([tree / self.path])
        except SpecError as exc:  # name files as they are in the repository, not in the cache
            raise SpecError([_in_repo(issue, tree) for issue in exc.issues]) from None

    def _repo(self):
        from dulwich.repo import Repo

        bare = self.cache / "repo.git"
        if (bare / "objects").is_dir():
            return Repo(str(bare))
        bare.mkdir(parents=True, exist_ok=True)
        return Repo.init_bare(str(bare))

    def _fetch(self, repo, revision: str) -> str:
        want = revision.encode()
        if want not in repo.object_store:
            def wants(refs, depth=None):
                tips = {v for v in refs.values() if v}
                return [want] if want in tips or not tips else sorted(tips)

            self._call("fetch", lambda client, path: client.fetch(path.encode(), repo, determine_wants=wants))
            if want not in repo.object_store:
                raise SourceError(f"{redact(self.url)}: commit {revision} is not on the server")
            repo.refs[b"refs/reconciler/fetched"] = want  # keeps it reachable for a later gc
        return _peel(repo, want).decode()

    def _verify(self, repo, sha: str, trusted_keys: Path) -> None:
        from dulwich.errors import ObjectFormatException

        short = sha[:12]
        try:
            payload, signature, _kind = repo[sha.encode()].extract_signature()
        except ObjectFormatException as exc:
            raise UntrustedCommit(f"commit {short}: unreadable signature ({exc})") from None
        if not signature:
            raise UntrustedCommit(f"commit {short} is not signed; with --verify-commits only commits signed "
                                  f"by a key in {trusted_keys} are applied")
        if not signature.lstrip().startswith(b"-----BEGIN PGP SIGNATURE-----"):
            raise UntrustedCommit(f"commit {short} carries an SSH or X.509 signature; --verify-commits "
                                  "accepts OpenPGP signatures only")
        try:
            gpg.verify_release(inrelease=None, release=payload, release_gpg=signature,
                               keyrings=[trusted_keys], workdir=self.workdir)
        except VerifyError as exc:
            reason = str(exc).removeprefix("Release.gpg: ")
            raise UntrustedCommit(f"commit {short} is not signed by a trusted key: {reason}") from None

    def _export(self, repo, sha: str) -> Path:
        """The commit's files in checkouts/SHA: written aside, then renamed into place."""
        target = self.checkouts / sha
        if target.is_dir():
            return target
        self.checkouts.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.checkouts, prefix=".tmp-"))
        try:
            for entry in repo.object_store.iter_tree_contents(repo[sha.encode()].tree):
                if not stat.S_ISREG(entry.mode):
                    continue  # symlinks and submodules: a spec tree needs neither
                rel = PurePosixPath(entry.path.decode())
                if rel.is_absolute() or ".." in rel.parts:
                    raise UntrustedCommit(f"commit {sha[:12]}: refusing path {str(rel)!r}")
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(repo[entry.sha].data)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(keep=target)
        return target

    def _prune(self, *, keep: Path) -> None:
        old = sorted((p for p in self.checkouts.iterdir() if p != keep and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
        for path in old[KEEP_CHECKOUTS - 1:]:
            shutil.rmtree(path, ignore_errors=True)

    # -- transport --------------------------------------------------------------------

    def _client(self):
        from dulwich import client

        parts = urllib.parse.urlsplit(self.url)
        creds = self.credentials
        if parts.scheme in ("http", "https"):
            headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else None
            return client.Urllib3HttpGitClient(redact(self.url), username=creds.username, password=creds.password,
                                               extra_headers=headers, timeout=TIMEOUT), parts.path
        key = str(creds.ssh_key_file) if creds.ssh_key_file else None
        return client.get_transport_and_path(self.url, key_filename=key,
                                             ssh_command=os.environ.get("GIT_SSH_COMMAND"))

    def _call(self, what: str, fn):
        """Run one transport operation; whatever dulwich or the network raises becomes a SourceError."""
        try:
            client, path = self._client()
            return fn(client, path)
        except ReconcilerError:
            raise
        except Exception as exc:  # dulwich, urllib3 and ssh each raise their own kinds
            raise SourceError(f"git {what} {redact(self.url)}: {type(exc).__name__}: {exc}") from exc


def _resolve(refs: dict, ref: str, url: str) -> str:
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        sha = refs.get(f"{name}^{{}}".encode()) or refs.get(name.encode())
        if sha:
            return sha.decode()
    heads = sorted(k.decode().removeprefix("refs/heads/") for k in refs if k.startswith(b"refs/heads/"))
    raise SourceError(f"{url}: no branch or tag {ref!r} (branches: {', '.join(heads) or 'none'})")


def _in_repo(issue: SpecIssue, tree: Path) -> SpecIssue:
    path = Path(issue.file)
    return dataclasses.replace(issue, file=path.relative_to(tree).as_posix()) if path.is_relative_to(tree) else issue


def _peel(repo, sha: bytes) -> bytes:
    """An annotated tag's sha → the commit it points at."""
    from dulwich.objects import Tag

    obj = repo[sha]
    while isinstance(obj, Tag):
        obj = repo[obj.object[1]]
    return obj.id
