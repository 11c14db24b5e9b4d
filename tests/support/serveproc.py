"""`reconciler serve` (or `watch`) as a real subprocess, for the API and serve tests.

The server binds `127.0.0.1:0` and logs the port it got, so tests never race for a
free port. Output is read by a thread into a list, so a test can wait for a line
instead of sleeping, and the process is started in its own session so a stuck one
can be killed with all its children.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class Proc:
    """A reconciler subprocess whose combined output is collected line by line."""

    def __init__(self, root: Path, *args: str, env: dict | None = None):
        self.cmd = [sys.executable, "-m", "reconciler", "--root", str(root), *map(str, args)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self._eof = False

    def start(self) -> "Proc":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, test: Callable[[str], bool] | str, *, timeout: float = 30, after: int = 0) -> str:
        """The first output line (from index `after`) that matches; AssertionError on timeout."""
        match = (lambda line: test in line) if isinstance(test, str) else test
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hit = next((line for line in self.lines[after:] if match(line)), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"no line matching {test!r} within {timeout}s:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def send(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal it, wait; kill the whole session if it does not exit in time."""
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"did not exit within {timeout}s of signal {sig}:\n{self.output}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Server(Proc):
    """`reconciler --root ROOT serve --listen 127.0.0.1:0 ARGS...` with an HTTP client."""

    def __init__(self, root: Path, *args: str, env: dict | None = None):
        super().__init__(root, "serve", "--listen", "127.0.0.1:0", *args, env=env)
        self.url = ""
        self.http: httpx.Client | None = None

    def start(self, timeout: float = 30) -> "Server":
        super().start()
        self.url = _LISTENING.search(self.wait_line("listening on", timeout=timeout)).group(1)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        return self

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.http.post(path, **kw)

    def delete(self, path: str, **kw) -> httpx.Response:
        return self.http.delete(path, **kw)

    def status(self) -> dict:
        return self.get("/api/status").json()

    def condition(self, kind: str) -> dict:
        return next(c for c in self.status()["conditions"] if c["type"] == kind)

    def wait_for(self, test: Callable[["Server"], object], *, timeout: float = 30, what: str = "") -> object:
        """Poll `test(self)` until it returns something true."""
        deadline = time.monotonic() + timeout
        while True:
            result = test(self)
            if result:
                return result
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"timed out waiting for {what or test}: status "
                                     f"{self.status() if self.proc.poll() is None else '-'}\n{self.output}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for(lambda s: s.get("/readyz").status_code == 200, timeout=timeout, what="/readyz 200")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.http is not None:
            self.http.close()
        return super().stop(sig, timeout)
