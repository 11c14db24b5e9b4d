"""`reconciler serve` following a git repository, with the real components.

The spec repository is made with dulwich (no git binary) and served by dulwich's own
smart-HTTP server on 127.0.0.1 behind HTTP basic auth. Commits are signed with real
gpg keys. The upstream archive is the signed example, served on 127.0.0.1 too.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from dulwich.index import commit_tree
from dulwich.objects import Blob, Commit
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain

from reconciler import serve as serve_module
from tests.support import examples
from tests.support.serveproc import Server
from tests.support.specs import mirror as mirror_spec

SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec: {{mirror: up{extra}}}
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
  signing: {{skip: true}}
"""
USER, PASSWORD = "reconciler", "git-pa55word"


# -- a git server --------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _basic_auth(app, user: str, password: str):
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ, start_response):
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    return guarded


class GitRepo:
    """A bare repository served over smart HTTP (basic auth), and a way to commit to it."""

    def __init__(self, path: Path):
        self.repo = Repo.init_bare(str(path), mkdir=True)
        self.repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/main")
        app = _basic_auth(make_wsgi_chain(DictBackend({"/repo": self.repo})), USER, PASSWORD)
        self.httpd = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_Quiet)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/repo"

    def commit(self, files: dict[str, str], message: str, *, sign_with=None) -> str:
        """Make the tree exactly `files` the next commit on main; sign it with a GpgKey if given."""
        store = self.repo.object_store
        entries = []
        for path, text in sorted(files.items()):
            blob = Blob.from_string(text.encode())
            store.add_object(blob)
            entries.append((path.encode(), blob.id, 0o100644))
        commit = Commit()
        commit.tree = commit_tree(store, entries)
        commit.parents = [self.repo.refs[b"refs/heads/main"]] if b"refs/heads/main" in self.repo.refs else []
        commit.author = commit.committer = b"Test <test@example.invalid>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = message.encode() + b"\n"
        if sign_with is not None:
            commit.gpgsig = sign_with.gpg("--local-user", sign_with.fingerprint, "--armor", "--detach-sign",
                                          input=commit.as_raw_string())
        store.add_object(commit)
        self.repo.refs[b"refs/heads/main"] = commit.id
        return commit.id.decode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.repo.close()


@pytest.fixture
def git_repo(tmp_path):
    repo = GitRepo(tmp_path / "specs.git")
    yield repo
    repo.stop()


def spec_files(http_archive, snapshots: list[tuple[str, str]], publish_to: str, *, broken: bool = False) -> dict:
    mirror = mirror_spec("up", http_archive.url, "../keys/upstream.asc")
    text = "".join(SNAPSHOT.format(name=n, extra=extra) for n, extra in snapshots)
    if broken:
        text += SNAPSHOT.format(name="typo", extra=", filtr: hello")
    return {"keys/upstream.asc": http_archive.key.public_armored.read_text(),
            "specs/mirror.yaml": mirror,
            "specs/rest.yaml": text + PUBLISH.format(snapshot=publish_to),
            "README": "specs for the test\n"}


REQUIRED = [("s1", ', filter: "Priority (required)"')]
EVERYTHING = REQUIRED + [("s2", "")]


def credentials(tmp_path: Path, password: str = PASSWORD) -> list[str]:
    (tmp_path / "user").write_text(USER + "\n")
    (tmp_path / "password").write_text(password + "\n")
    return ["--git-username-file", str(tmp_path / "user"), "--git-password-file", str(tmp_path / "password")]


def packages(root: Path) -> set[str]:
    index = root / "public/debian/dists/stable/main/binary-amd64/Packages"
    return {line.split()[1] for line in index.read_text().splitlines() if line.startswith("Package: ")}


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(*args: str) -> Server:
        servers.append(Server(tmp_path / "root", *args).start())
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def applied(sha: str):
    return lambda s: s.status()["lastAppliedRevision"] == sha


# -- the tests ---------------------------------------------------------------------


def test_follows_new_commits_and_keeps_the_last_good_state_on_a_broken_spec(tmp_path, http_archive, git_repo,
                                                                             serve):
    root = tmp_path / "root"
    first = git_repo.commit(spec_files(http_archive, REQUIRED, "s1"), "s1")
    server = serve("--git", git_repo.url, "--ref", "main", "--path", "specs", "--interval", "2s",
                   *credentials(tmp_path))
    server.wait_ready()
    assert server.status()["lastAppliedRevision"] == first
    assert packages(root) == {"basesys", "toolbox"}
    release = (root / "public/debian/dists/stable/Release").read_bytes()

    second = git_repo.commit(spec_files(http_archive, EVERYTHING, "s2"), "publish s2")
    server.wait_for(applied(second), timeout=30, what="the new commit applied by the loop")
    assert {"hello", "libgreet1", "basesys"} <= packages(root)
    assert (root / "public/debian/dists/stable/Release").read_bytes() != release
    published = packages(root)

    broken = git_repo.commit(spec_files(http_archive, EVERYTHING, "s2", broken=True), "typo")
    server.wait_for(lambda s: s.status()["lastAttemptedRevision"] == broken
                    and s.condition("Stalled")["status"] == "True", timeout=30, what="Stalled")
    stalled, status = server.condition("Stalled"), server.status()
    assert stalled["reason"] == "SpecInvalid"
    assert stalled["message"].startswith("specs/rest.yaml:") and "spec.filtr" in stalled["message"]
    assert server.condition("Ready")["status"] == "False"
    assert status["lastAppliedRevision"] == second
    assert packages(root) == published
    assert server.get("/readyz").status_code == 200  # the last good trees are still served
    assert server.get("/api/snapshots/typo").status_code == 404

    fixed = git_repo.commit(spec_files(http_archive, EVERYTHING, "s1"), "back to s1")
    server.wait_for(applied(fixed), timeout=30, what="the fix applied")
    assert server.condition("Stalled")["status"] == "False"
    assert packages(root) == {"basesys", "toolbox"}
    assert server.stop() == 0


def test_wrong_git_password_is_reported_and_not_ready(tmp_path, http_archive, git_repo, serve):
    git_repo.commit(spec_files(http_archive, REQUIRED, "s1"), "s1")
    server = serve("--git", git_repo.url, "--ref", "main", "--path", "specs", "--interval", "1h",
                   *credentials(tmp_path, password="wrong"))
    server.wait_for(lambda s: s.condition("Ready")["reason"] == "SourceUnavailable", what="SourceUnavailable")
    ready = server.condition("Ready")
    assert ready["status"] == "False"
    assert "HTTPUnauthorized" in ready["message"] and git_repo.url in ready["message"], ready
    assert server.condition("Stalled")["status"] == "False"  # retried, not stalled
    assert PASSWORD not in server.output and "wrong" not in ready["message"]
    assert server.get("/readyz").status_code == 503


def test_verify_commits_refuses_unsigned_and_untrusted_heads(tmp_path, http_archive, git_repo, serve, gpg_key,
                                                            other_gpg_key):
    root = tmp_path / "root"
    first = git_repo.commit(spec_files(http_archive, REQUIRED, "s1"), "s1", sign_with=gpg_key)
    server = serve("--git", git_repo.url, "--ref", "main", "--path", "specs", "--interval", "1h",
                   *credentials(tmp_path), "--verify-commits", "--trusted-keys-file", str(gpg_key.public_armored))
    server.wait_ready()
    assert server.status()["lastAppliedRevision"] == first

    for signer, expected in ((None, "is not signed"), (other_gpg_key, "not signed by a trusted key")):
        head = git_repo.commit(spec_files(http_archive, EVERYTHING, "s2"), "publish s2", sign_with=signer)
        assert server.post("/api/reconcile", params={"wait": 1}).status_code == 200
        stalled, status = server.condition("Stalled"), server.status()
        assert (stalled["status"], stalled["reason"]) == ("True", "VerificationFailed")
        assert expected in stalled["message"] and head[:12] in stalled["message"]
        assert (status["lastAttemptedRevision"], status["lastAppliedRevision"]) == (head, first)
        assert packages(root) == {"basesys", "toolbox"}

    trusted = git_repo.commit(spec_files(http_archive, EVERYTHING, "s2"), "publish s2, signed", sign_with=gpg_key)
    assert server.post("/api/reconcile", params={"wait": 1}).status_code == 200
    assert server.status()["lastAppliedRevision"] == trusted
    assert "hello" in packages(root)
    assert server.stop() == 0


class ConfigMapDir:
    """A directory laid out the way kubelet mounts a ConfigMap: visible names link through
    `..data`, which points at a timestamped directory and is swapped atomically on update."""

    def __init__(self, path: Path):
        self.path = path
        self.path.mkdir()
        self.generation = 0

    def publish(self, files: dict[str, str]) -> None:
        self.generation += 1
        stamp = self.path / f"..2026_11_25_00_00_0{self.generation}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
            if not (self.path / name).is_symlink():
                (self.path / name).symlink_to(f"..data/{name}")
        old = (self.path / "..data").resolve() if (self.path / "..data").exists() else None
        (self.path / "..data_tmp").symlink_to(stamp.name)
        (self.path / "..data_tmp").rename(self.path / "..data")
        if old is not None:
            shutil.rmtree(old)


def configmap_files(http_archive, snapshots, publish_to: str, *extra_mirrors: tuple[str, str]) -> dict[str, str]:
    keyring = str(http_archive.key.public_armored)
    mirrors = [mirror_spec("up", http_archive.url, keyring)]
    mirrors += [mirror_spec(name, url, keyring) for name, url in extra_mirrors]
    rest = "".join(SNAPSHOT.format(name=n, extra=extra) for n, extra in snapshots) + PUBLISH.format(snapshot=publish_to)
    return {"mirrors.yaml": "---\n".join(mirrors), "rest.yaml": rest}


def test_configmap_swaps_are_followed_and_sigterm_mid_reconcile_exits_cleanly(tmp_path, http_archive, http_server,
                                                                              example_archive, serve):
    root, specs = tmp_path / "root", ConfigMapDir(tmp_path / "specs")
    specs.publish(configmap_files(http_archive, REQUIRED, "s1"))
    server = serve("--specs", str(specs.path), "--interval", "1h", "--grace-period", "2s")
    server.wait_ready()
    first = server.status()["lastAppliedRevision"]
    assert packages(root) == {"basesys", "toolbox"}

    specs.publish(configmap_files(http_archive, EVERYTHING, "s2"))  # kubelet's update: one rename
    server.wait_for(lambda s: s.status()["lastAppliedRevision"] not in (None, first), what="the swap applied")
    assert "hello" in packages(root)
    published = packages(root)

    stuck = http_server(example_archive(examples.synthetic(5), distribution="stable").root)
    stuck.hang(".deb", times=None)  # package downloads (of files the pool lacks) never finish
    specs.publish(configmap_files(http_archive, EVERYTHING, "s2", ("slow", stuck.url)))
    assert stuck.wait_for(".deb", 1, timeout=30), server.output
    started = time.monotonic()
    assert server.stop(timeout=10) == 0
    assert time.monotonic() - started < 6, server.output

    verify = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), "verify"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), "list", "mirrors"],
                            capture_output=True, text=True, timeout=60).stdout
    assert "up " in listed and "slow" not in listed  # the interrupted mirror never appeared half-done
    assert packages(root) == published


def test_listen_addresses():
    assert serve_module.parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert serve_module.parse_listen("[::]:8080") == ("::", 8080)
    assert serve_module.parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("8080", "host", "[::1]", "a:b", "1.2.3.4:99999"):
        with pytest.raises(ValueError):
            serve_module.parse_listen(bad)
