"""The network controls of a mirror (spec.network), each against a real component.

Errors in words against a closed port and an unresolvable name; a real forwarding
proxy (tests.support.proxy) for http_proxy / https_proxy / no_proxy and the mirror's
own `proxy`; a real TLS server on 127.0.0.1 with a throwaway private CA
(tests.support.tlscerts) for caFile and mutual TLS; the archive server's request log
for extra headers; a clock for the shared rate limit. Mirrors are synced through the
real CLI (typer's runner, in process, so the environment a test sets is the one the
fetcher reads).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from reconciler.cli import app
from reconciler.errors import PermanentError, TemporaryError
from reconciler.fetch import Fetcher, Want
from reconciler.plan import mirror_fields
from reconciler.pool import FilesystemPool
from reconciler.spec import Network, secret_digest
from tests.support import tlscerts
from tests.support.proxy import Proxy
from tests.support.server import ArchiveServer

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
              "ALL_PROXY", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    """Each test starts without the machine's proxy settings and sets its own."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tlscerts.Pki:
    return tlscerts.generate(tmp_path_factory.mktemp("pki"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mirror:
    """One mirror spec file over `url` in a fresh root, applied through the CLI."""

    def __init__(self, tmp_path: Path, url: str, key, archive):
        self.root, self.specs = tmp_path / "root", tmp_path / "specs"
        self.specs.mkdir(exist_ok=True)
        self.url, self.key, self.archive = url, key, archive

    def write(self, **network) -> Path:
        spec = {"url": self.url, "distribution": "stable", "components": ["main"], "architectures": ["amd64"],
                "keyrings": [str(self.key.public_keyring)]}
        if network:
            spec["network"] = network
        doc = {"apiVersion": "reconciler/v1", "kind": "Mirror", "metadata": {"name": "up"}, "spec": spec}
        path = self.specs / "mirror.yaml"
        path.write_text(json.dumps(doc) + "\n")
        return path

    def cli(self, *args: str, expect: int = 0) -> str:
        result = CliRunner().invoke(app, ["--root", str(self.root), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        out = result.stdout + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == expect, out
        return out

    def apply(self, expect: int = 0) -> str:
        return self.cli("apply", "-f", str(self.specs), expect=expect)

    def num_packages(self) -> int:
        return json.loads(self.cli("list", "mirrors", "--json"))[0]["numPackages"]


@pytest.fixture
def archive(example_archive):
    return example_archive()


@pytest.fixture
def http_mirror(tmp_path, archive, gpg_key):
    with ArchiveServer(archive.root) as server:
        yield Mirror(tmp_path, server.url, gpg_key, archive), server


@pytest.fixture
def https_server(archive, pki):
    with ArchiveServer(archive.root, tls=pki.server_context()) as server:
        yield server


# --- 1. errors in words, retries said -------------------------------------------------


def test_closed_port_is_named_and_each_retry_is_logged():
    port, lines = closed_port(), []
    fetcher = Fetcher(network=Network(retries=2), backoff=0.01, log=lines.append)
    with pytest.raises(TemporaryError) as caught:
        fetcher.get(f"http://127.0.0.1:{port}/dists/stable/InRelease")
    message = str(caught.value)
    assert f"connection refused by 127.0.0.1:{port}" in message
    assert "gave up after 3 attempts" in message
    assert "Error(" not in message and "errno" not in message.lower()
    assert len(lines) == 2
    assert "attempt 1 of 3 failed, next in 0.01 s" in lines[0] and "attempt 2 of 3" in lines[1]
    assert f"connection refused by 127.0.0.1:{port}" in lines[0]


def test_unresolvable_name_is_said_in_words():
    with pytest.raises(TemporaryError) as caught:
        Fetcher(network=Network(retries=0)).get("http://archive.nothing.invalid/debian/InRelease")
    message = str(caught.value)
    assert "name archive.nothing.invalid does not resolve" in message
    assert "gaierror" not in message and "attempts" not in message


def test_apply_reports_the_failure_and_its_retries(tmp_path, gpg_key, archive):
    mirror = Mirror(tmp_path, f"http://127.0.0.1:{closed_port()}", gpg_key, archive)
    mirror.write(retries=1)
    out = mirror.apply(expect=1)
    assert "connection refused by 127.0.0.1" in out
    assert "retrying: attempt 1 of 2 failed, next in" in out
    assert "ConnectionRefusedError" not in out


# --- 2. proxies ------------------------------------------------------------------------


def test_http_proxy_from_the_environment_carries_every_request(http_mirror, monkeypatch):
    mirror, server = http_mirror
    with Proxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        mirror.write()
        mirror.apply()
    assert mirror.num_packages() > 0
    targets = [target for method, target, _ in proxy.log]
    assert set(proxy.methods()) == {"GET"}
    assert f"{server.url}/dists/stable/InRelease" in targets  # absolute URIs, as a proxy expects
    assert sum(t.endswith(".deb") for t in targets) == server.count(".deb") > 0


def test_no_proxy_bypasses_the_proxy(http_mirror, monkeypatch):
    mirror, server = http_mirror
    with Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.invalid,127.0.0.1")
        mirror.write()
        mirror.apply()
    assert proxy.log == []
    assert server.count(".deb") > 0


def test_the_mirrors_proxy_overrides_the_environment_with_credentials(http_mirror, monkeypatch):
    mirror, _ = http_mirror
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")  # would fail if used
    with Proxy(credentials="ops:s3cret pass") as proxy:
        mirror.write(proxy=proxy.url.replace("s3cret pass", "s3cret%20pass"))
        mirror.apply()
    assert proxy.log and all(auth == "Basic b3BzOnMzY3JldCBwYXNz" for _, _, auth in proxy.log)
    assert mirror.num_packages() > 0


def test_an_unsupported_proxy_is_named_without_its_credentials(monkeypatch):
    monkeypatch.setenv("http_proxy", "socks5://ops:pr0xy-secret@127.0.0.1:1080")
    with pytest.raises(PermanentError) as caught, Fetcher(network=Network(retries=0)) as fetcher:
        fetcher.get("http://archive.example.invalid/dists/stable/InRelease")
    assert "proxy socks5://<redacted>@127.0.0.1:1080: only http:// proxies" in str(caught.value)
    assert "pr0xy-secret" not in str(caught.value)


def test_an_empty_proxy_turns_the_environments_off(http_mirror, monkeypatch):
    mirror, server = http_mirror
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    mirror.write(proxy="")
    mirror.apply()
    assert server.count(".deb") > 0


def test_https_goes_through_a_connect_tunnel(tmp_path, https_server, gpg_key, archive, pki, monkeypatch):
    mirror = Mirror(tmp_path, https_server.url, gpg_key, archive)
    with Proxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        mirror.write(caFile=str(pki.ca_pem))
        mirror.apply()
    assert set(proxy.methods()) == {"CONNECT"}
    assert {target for _, target, _ in proxy.log} == {f"127.0.0.1:{https_server.port}"}
    assert https_server.count(".deb") > 0


def test_a_proxy_refusing_the_tunnel_is_named(https_server, pki):
    with Proxy(credentials="ops:right") as proxy:
        wrong = proxy.url.replace("right", "wrong")
        fetcher = Fetcher(network=Network(retries=3, proxy=wrong, caFile=str(pki.ca_pem)), backoff=0.01)
        with pytest.raises(PermanentError) as caught:
            fetcher.get(https_server.url + "/dists/stable/InRelease")
    assert f"proxy {proxy.address} refused the tunnel to 127.0.0.1:{https_server.port}: 407" in str(caught.value)
    assert len(proxy.log) == 1  # a refusal is not retried


# --- 3. TLS ----------------------------------------------------------------------------


def test_private_ca_from_a_file_relative_to_the_spec(tmp_path, https_server, gpg_key, archive, pki):
    mirror = Mirror(tmp_path, https_server.url, gpg_key, archive)
    (mirror.specs / "ca.pem").write_bytes(pki.ca_pem.read_bytes())
    mirror.write(caFile="ca.pem")
    mirror.apply()
    assert mirror.num_packages() > 0 and https_server.count(".deb") > 0


def test_without_the_ca_the_certificate_is_refused_clearly(tmp_path, https_server, gpg_key, archive):
    mirror = Mirror(tmp_path, https_server.url, gpg_key, archive)
    mirror.write(retries=3)
    out = mirror.apply(expect=1)
    assert "TLS certificate verify failed for 127.0.0.1: unable to get local issuer certificate" in out
    assert "(a private CA: set spec.network.caFile)" in out
    assert "retrying" not in out  # a certificate does not get better by asking again
    assert https_server.count(".deb") == 0


def test_mutual_tls_needs_the_client_certificate(tmp_path, archive, gpg_key, pki):
    with ArchiveServer(archive.root, tls=pki.server_context(require_client_cert=True)) as server:
        mirror = Mirror(tmp_path, server.url, gpg_key, archive)
        mirror.write(caFile=str(pki.ca_pem), retries=0)
        out = mirror.apply(expect=1)
        # The server's alert races the request: either it arrives, or the connection is cut.
        assert ("the server requires a client certificate (spec.network.clientCertFile)" in out
                or "closed the TLS connection: if it requires a client certificate" in out), out
        assert server.count(".deb") == 0
        mirror.write(caFile=str(pki.ca_pem), clientCertFile=str(pki.client_pem), clientKeyFile=str(pki.client_key))
        mirror.apply()
        assert server.count(".deb") > 0


def test_an_unreadable_ca_file_is_named(https_server, tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(PermanentError, match=r"spec.network.caFile .*ca.pem: cannot load it as a PEM CA bundle"):
        Fetcher(network=Network(caFile=str(bad))).get(https_server.url + "/dists/stable/InRelease")


# --- 4. headers ------------------------------------------------------------------------


def test_extra_headers_reach_the_archive(http_mirror):
    mirror, server = http_mirror
    mirror.write(headers={"X-Archive-Token": "t0ken"})
    mirror.apply()
    requests = server.requests()
    assert requests and all(r.headers.get("X-Archive-Token") == "t0ken" for r in requests)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list] = []
    target = ""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers.items()))
        if type(self).target:
            self.send_response(302)
            self.send_header("Location", type(self).target + self.path)
            body = b""
        else:
            self.send_response(200)
            body = b"ok"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_extra_headers_do_not_follow_a_redirect_to_another_host():
    class Origin(_Recorder):
        seen: ClassVar[list] = []

    class Elsewhere(_Recorder):
        seen: ClassVar[list] = []
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (Origin, Elsewhere)]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        Origin.target = f"http://127.0.0.1:{servers[1].server_address[1]}"
        fetcher = Fetcher(network=Network(headers={"Authorization": "Bearer secret"}))
        assert fetcher.get(f"http://127.0.0.1:{servers[0].server_address[1]}/x") == b"ok"
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
    assert Origin.seen[0]["Authorization"] == "Bearer secret"
    assert "Authorization" not in Elsewhere.seen[0]


@pytest.mark.parametrize("headers, message", [
    ({"X-Token": "a\r\nX-Injected: 1"}, "must not contain CR, LF or NUL"),
    ({"X Token": "a"}, "not a valid header name"),
    ({"Host": "elsewhere"}, "cannot be overridden"),
], ids=["crlf-value", "bad-name", "host"])
def test_header_injection_is_refused_at_validation(tmp_path, gpg_key, archive, headers, message):
    mirror = Mirror(tmp_path, "http://127.0.0.1:9", gpg_key, archive)
    mirror.write(headers=headers)
    assert message in mirror.cli("validate", "-f", str(mirror.specs), expect=1)


# --- 5. rate limit ---------------------------------------------------------------------


def test_max_rate_is_shared_by_the_download_threads(tmp_path):
    files = {f"f{i}.deb": bytes([i]) * 16384 for i in range(3)}
    (tmp_path / "up").mkdir()
    for name, data in files.items():
        (tmp_path / "up" / name).write_bytes(data)
    wants = [Want(url="", path=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
             for name, data in files.items()]
    rate, total = 32768, sum(len(d) for d in files.values())
    with ArchiveServer(tmp_path / "up") as server:
        wants = [Want(f"{server.url}/{w.path}", w.path, w.size, w.sha256) for w in wants]
        fetcher = Fetcher(concurrency=3, network=Network(maxRate=rate, minRate=1024))
        start = time.monotonic()
        stats = fetcher.download(wants, FilesystemPool(tmp_path / "pool"), on_imported=lambda want: None)
        elapsed = time.monotonic() - start
    assert stats.files == 3 and not stats.failed
    assert elapsed >= total / rate  # 1.5 s: three threads, one bucket (each alone would take 0.5 s)
    assert elapsed < total / rate + 2


def test_max_rate_below_min_rate_is_refused():
    with pytest.raises(ValueError, match="maxRate: 1000 is below minRate"):
        Network(maxRate=1000)


# --- behaviour, not content --------------------------------------------------------------


def test_new_fields_at_their_defaults_keep_the_stored_shape():
    stored_before = {"idleTimeout": "30s", "minRate": 4096, "retries": 4}
    assert Network().model_dump(mode="json") == stored_before
    explicit = Network(proxy=None, headers={}, maxRate=None, caFile=None)
    spec = {"url": "http://x", "network": explicit.model_dump(mode="json")}
    assert mirror_fields(spec) == {"url": "http://x"}


def test_editing_network_fields_updates_the_spec_without_a_resync(http_mirror):
    mirror, server = http_mirror
    mirror.write()
    mirror.apply()
    debs = server.count(".deb")
    mirror.write(headers={"X-Archive-Token": "t0ken"}, maxRate=1 << 20, proxy="")
    assert "edit network" in mirror.cli("plan", "-f", str(mirror.specs))
    server.clear()
    mirror.apply()
    assert server.count(".deb") == 0 and debs > 0  # nothing downloaded again
    assert server.count(lambda path: "/Packages" in path) == 0  # no index re-read either
    mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode")  # converged: exit 0
    with sqlite3.connect(mirror.root / "state.db") as db:
        stored = json.loads(db.execute("SELECT spec FROM mirrors WHERE name = 'up'").fetchone()[0])
    assert stored["network"]["headers"] == {"X-Archive-Token": secret_digest("t0ken")}  # never the value
    assert stored["network"]["proxy"] == ""
