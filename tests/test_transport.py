"""The stdlib HTTP transport: redirects, keep-alive reuse, a server that drops idle connections."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.errors import PermanentError, TemporaryError
from reconciler.fetch import Fetcher


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set = set()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        Handler.connections.add(self.client_address)
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/old/"):
            self.send_response(301)
            self.send_header("Location", "/new/" + self.path[len("/old/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/new/"):
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if self.path.endswith("close"):
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    Handler.connections = set()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_redirects_are_followed_and_connections_kept_alive(server):
    with Fetcher(retries=0) as fetcher:
        for i in range(20):
            assert fetcher.get(f"{server}/old/file{i}") == f"/new/file{i}".encode()
    assert len(Handler.connections) == 1


def test_a_server_closing_the_connection_is_reconnected(server):
    with Fetcher(retries=0) as fetcher:
        for i in range(5):
            assert fetcher.get(f"{server}/new/{i}-close") == f"/new/{i}-close".encode()


def test_redirect_loops_and_missing_files(server):
    with Fetcher(retries=0) as fetcher:
        with pytest.raises(PermanentError, match="redirects"):
            fetcher.get(f"{server}/loop")
        assert fetcher.get(f"{server}/nothing", missing_ok=True) is None
        with pytest.raises(PermanentError, match="404"):
            fetcher.get(f"{server}/nothing")


def test_connection_refused_is_temporary():
    with Fetcher(retries=1, backoff=0.01) as fetcher:
        with pytest.raises(TemporaryError):
            fetcher.get("http://127.0.0.1:9/unreachable")
