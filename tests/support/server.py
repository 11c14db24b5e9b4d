"""A real HTTP server on 127.0.0.1 serving a directory, with a request log and faults.

Resume, retry and integrity tests need to see exactly what a client fetched and to
make the network misbehave on cue: fail the next N requests for a path, close a
response after N bytes while promising the whole length, stall, trickle bytes so a
process can be killed half-way through a download, or (`endless`) send a body with no
Content-Length that never ends, as a hostile upstream would to fill a client's disk
or memory. `http.server` does the HTTP; this
module adds byte ranges (`Range: bytes=N-` / `N-M`, answered 206 with
`Content-Range`, as a real archive host does for resumed downloads), HEAD, the log and
the fault rules. Everything is in-process and deterministic: no sleeps in tests, wait
on the log (`wait_for`) instead.

Paths match a rule by suffix (`".deb"`, `"/InRelease"`), by a predicate on the path,
or always (None).
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Match = str | Callable[[str], bool] | None
_CHUNK = 64 * 1024


def _matcher(match: Match) -> Callable[[str], bool]:
    if match is None:
        return lambda path: True
    if isinstance(match, str):
        return lambda path: path.endswith(match)
    return match


@dataclass
class Request:
    """One request as the server saw it; `status`/`sent` fill in as it is answered."""

    method: str
    path: str
    range: str | None
    status: int | None = None  # None: no response sent (hung, or client gone first)
    length: int | None = None  # body length the headers promised
    sent: int = 0  # body bytes actually written
    done: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # as received

    @property
    def complete(self) -> bool:
        return self.done and self.length is not None and self.sent == self.length


@dataclass
class _Rule:
    test: Callable[[str], bool]
    action: str  # fail | truncate | hang | slow | throttle | endless
    value: float
    times: int | None  # None: every matching request
    after: int | None = None  # hang: body bytes sent before stalling


@dataclass
class _Plan:
    """What the rules say for one request (taken atomically from the rule list)."""

    fail: int | None = None
    truncate: int | None = None
    hang_after: int | None = None
    hang: bool = False
    delay: float = 0.0
    rate: float | None = None
    endless: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as apt and httpx use it
    # Headers and body go out in separate writes: without this, Nagle's algorithm holds
    # each response ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format, *args) -> None:  # quiet: the log is the list
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.owner._track(self.connection, add=False)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        entry = owner._start(self.command, path, self.headers.get("Range"), dict(self.headers.items()))
        try:
            self._answer(owner, entry, path, head)
        except (ConnectionError, socket.timeout, OSError):
            self.close_connection = True
        finally:
            owner._finish(entry)

    def _answer(self, owner: "ArchiveServer", entry: Request, path: str, head: bool) -> None:
        plan = owner._plan(path)
        if plan.hang:
            owner._stopping.wait()
            self.close_connection = True
            return
        time.sleep(plan.delay)
        if plan.fail:
            return self._error(entry, plan.fail)
        file = owner._resolve(path)
        if file is None:
            return self._error(entry, 404)
        size = file.stat().st_size
        span = _parse_range(entry.range, size)
        if span == "invalid":
            return self._error(entry, 416, {"Content-Range": f"bytes */{size}"})
        start, end = span or (0, size - 1)
        if plan.endless:
            return self._endless(entry, file, owner)
        self._headers(entry, 206 if span else 200, start, end, size, file)
        if not head:
            self._body(entry, file, start, end - start + 1, plan, owner)

    def _endless(self, entry: Request, file: Path, owner: "ArchiveServer") -> None:
        """200 without Content-Length: the file, then filler until the client goes or stop()."""
        entry.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(file.read_bytes())
        filler = b"A" * _CHUNK
        while not owner._stopping.is_set():
            self.wfile.write(filler)  # raises once the client hangs up
            entry.sent += len(filler)

    def _error(self, entry: Request, status: int, headers: dict | None = None) -> None:
        body = f"{status}\n".encode()
        entry.status, entry.length = status, len(body)
        self.send_response(status)
        for key, value in {**(headers or {}), "Content-Type": "text/plain",
                           "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            entry.sent = len(body)

    def _headers(self, entry: Request, status: int, start: int, end: int, size: int,
                 file: Path) -> None:
        entry.status, entry.length = status, end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(entry.length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(file.stat().st_mtime,
                                                                 usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()

    def _body(self, entry: Request, file: Path, start: int, length: int, plan: _Plan,
              owner: "ArchiveServer") -> None:
        """Stream the body, honouring throttle, truncate and hang-after rules."""
        limit = min(length, plan.truncate if plan.truncate is not None else length)
        stall = plan.hang_after
        chunk = max(1, int(plan.rate // 20)) if plan.rate else _CHUNK
        with file.open("rb") as fh:
            fh.seek(start)
            while entry.sent < limit:
                if stall is not None and entry.sent >= stall:
                    self.wfile.flush()
                    owner._stopping.wait()
                    break
                step = min(chunk, limit - entry.sent)
                if stall is not None:
                    step = min(step, stall - entry.sent)
                data = fh.read(step)
                if not data:
                    break
                self.wfile.write(data)
                entry.sent += len(data)
                if plan.rate:
                    self.wfile.flush()
                    time.sleep(len(data) / plan.rate)
        if entry.sent < length:
            self.close_connection = True  # promised more than sent: the client sees EOF


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """`bytes=N-` or `bytes=N-M` -> (start, end) inclusive; None: whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:  # suffix range: the last N bytes
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 and size else "invalid"
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start < size and start <= end else "invalid"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "ArchiveServer"

    def get_request(self):
        """With TLS, the handshake runs on the first read in the handler's own thread, so
        a client that fails it (no client certificate) does not stall the accept loop."""
        sock, address = super().get_request()
        if self.owner.tls is not None:
            sock = self.owner.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:  # quiet, like the handler
        pass


class ArchiveServer:
    """Serve `root` on 127.0.0.1 (a free port) from a daemon thread; use as a context
    manager, or start()/stop(). `root` may be reassigned while running."""

    def __init__(self, root: Path | str, *, tls: ssl.SSLContext | None = None):
        """`tls`: a server-side context to serve https instead of http."""
        self.root = Path(root)
        self.tls = tls
        self._lock = threading.Condition()
        self._log: list[Request] = []
        self._rules: list[_Rule] = []
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "ArchiveServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._stopping.clear()
        # A short poll interval: stop() waits up to one interval for serve_forever to notice.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="archive-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hung or stalled responses are released and their sockets closed."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            with self._lock:
                conns, self._conns = list(self._conns), set()
            for conn in conns:  # idle keep-alive connections would linger otherwise
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "ArchiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- the request log --------------------------------------------------------------

    def requests(self, match: Match = None, *, method: str | None = None,
                 status: int | None = None) -> list[Request]:
        """Logged requests (in arrival order, in flight included) that match."""
        test = _matcher(match)
        with self._lock:
            return [r for r in self._log if test(r.path) and method in (None, r.method)
                    and status in (None, r.status)]

    def count(self, match: Match = None, *, method: str | None = None,
              status: int | None = None) -> int:
        return len(self.requests(match, method=method, status=status))

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_for(self, match: Match, n: int, *, timeout: float = 10.0,
                 done: bool = False) -> bool:
        """Block until `n` matching requests arrived (or, with done=True, finished):
        kill a client at a given share of its downloads without sleeping."""
        test = _matcher(match)
        def enough() -> bool:
            return sum(1 for r in self._log if test(r.path) and (r.done or not done)) >= n
        with self._lock:
            return self._lock.wait_for(enough, timeout=timeout)

    # -- faults -----------------------------------------------------------------------

    def fail(self, match: Match, status: int = 500, *, times: int | None = 1) -> None:
        """Answer the next `times` matching requests (None: all) with `status`."""
        self._add(_Rule(_matcher(match), "fail", status, times))

    def truncate(self, match: Match, nbytes: int, *, times: int | None = 1) -> None:
        """Promise the full Content-Length, send `nbytes` of body, close the connection."""
        self._add(_Rule(_matcher(match), "truncate", nbytes, times))

    def hang(self, match: Match, *, after: int | None = None, times: int | None = 1) -> None:
        """Never answer (after=None) or stall after `after` body bytes, until stop()."""
        self._add(_Rule(_matcher(match), "hang", 0, times, after=after))

    def slow(self, match: Match, seconds: float, *, times: int | None = None) -> None:
        """Wait `seconds` before answering each matching request."""
        self._add(_Rule(_matcher(match), "slow", seconds, times))

    def throttle(self, match: Match, bytes_per_second: float, *,
                 times: int | None = None) -> None:
        """Send matching bodies at about this rate (chunks of 1/20 s) so a client can
        be killed mid-file."""
        self._add(_Rule(_matcher(match), "throttle", bytes_per_second, times))

    def endless(self, match: Match, *, times: int | None = None) -> None:
        """Answer matching requests with the file and then endless filler, no Content-Length."""
        self._add(_Rule(_matcher(match), "endless", 0, times))

    def reset(self) -> None:
        """Drop every fault rule (the log is kept; see clear())."""
        with self._lock:
            self._rules.clear()

    # -- internals used by the handler ------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _start(self, method: str, path: str, range_: str | None, headers: dict[str, str]) -> Request:
        entry = Request(method, path, range_, headers=headers)
        with self._lock:
            self._log.append(entry)
            self._lock.notify_all()
        return entry

    def _finish(self, entry: Request) -> None:
        with self._lock:
            entry.done = True
            self._lock.notify_all()

    def _plan(self, path: str) -> _Plan:
        """Consume one use of every rule that matches, and merge them into a plan."""
        plan = _Plan()
        with self._lock:
            for rule in [r for r in self._rules if r.test(path)]:
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                _apply(plan, rule)
        return plan

    def _resolve(self, path: str) -> Path | None:
        """The file under root for a URL path; None if missing, a directory or outside."""
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target


def _apply(plan: _Plan, rule: _Rule) -> None:
    if rule.action == "fail":
        plan.fail = int(rule.value)
    elif rule.action == "truncate":
        plan.truncate = int(rule.value)
    elif rule.action == "hang":
        plan.hang = rule.after is None
        plan.hang_after = rule.after
    elif rule.action == "slow":
        plan.delay += rule.value
    elif rule.action == "throttle":
        plan.rate = rule.value
    elif rule.action == "endless":
        plan.endless = True
