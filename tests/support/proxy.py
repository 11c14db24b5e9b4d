"""A real forwarding HTTP proxy on 127.0.0.1, small enough to read, with a log.

It does what a corporate proxy does for an APT client: a GET with an absolute URI is
forwarded to its host and the answer relayed; a CONNECT opens a TCP connection to the
named host and pipes bytes both ways (so TLS runs end to end, the proxy sees only
ciphertext). With `credentials` set it answers 407 to a request without the matching
`Proxy-Authorization: Basic ...`. `log` lists what it was asked, as (method, target,
authorization header or None), so tests assert that connections went through it.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and clients cope
    server: _Server

    def log_message(self, format, *args) -> None:
        pass

    def _admit(self) -> bool:
        auth = self.headers.get("Proxy-Authorization")
        with self.server.owner.lock:
            self.server.owner.log.append((self.command, self.path, auth))
        wanted = self.server.owner.credentials
        if wanted is None or auth == "Basic " + base64.b64encode(wanted.encode()).decode():
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:
        if not self._admit():
            return
        parts = urllib.parse.urlsplit(self.path)
        if parts.scheme != "http":
            self.send_error(400, "absolute http URI expected")
            return
        upstream = http.client.HTTPConnection(parts.netloc, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            upstream.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                             headers=headers)
            response = upstream.getresponse()
            body = response.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in _HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        if not self._admit():
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except (OSError, ValueError):
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        _pipe(self.connection, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 10)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        pass
    finally:
        b.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Proxy

    def handle_error(self, request, client_address) -> None:
        pass


class Proxy:
    """Start with `with Proxy() as proxy:`; `proxy.url` is `http://[CREDS@]127.0.0.1:PORT`."""

    def __init__(self, *, credentials: str | None = None):
        self.credentials = credentials  # "user:password"
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None

    def __enter__(self) -> Proxy:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name="proxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def address(self) -> str:
        assert self._httpd is not None
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        creds = f"{self.credentials}@" if self.credentials else ""
        return f"http://{creds}{self.address}"

    def methods(self) -> list[str]:
        with self.lock:
            return [method for method, _, _ in self.log]
