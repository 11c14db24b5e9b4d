"""One measured child process: wall time and peak RSS from the kernel's own accounting.

Each step runs as a fresh child, in a new session so that a kill reaches its whole
process group. Peak RSS is `ru_maxrss` of the step's process, but not as `os.wait4`
reports it to us: Linux carries the high-water RSS of the pre-exec address space into
`ru_maxrss`, so a child forked from this process (which holds a 20,000-package archive
declaration, over 100 MB) would never report less than our own size. `/usr/bin/time`
is small, forks the step itself and writes the step's own `ru_maxrss` (`%M`) to a file:
that is what we read. Without /usr/bin/time, the `os.wait4` figure is used (an upper
bound) and the measurement says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TIME = shutil.which("time", path="/usr/bin:/bin")


@dataclass
class Measurement:
    """What one step cost. `killed`: ended by our SIGKILL, so only partly done."""

    seconds: float
    peak_rss_mb: float
    exit_code: int
    log: str
    killed: bool = False
    cpu_seconds: float | None = None  # user + system of the step (None when killed)
    rss_source: str = "time"  # "time": the step's own peak; "wait4": an upper bound

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 or self.killed

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Child:
    """A running step: the process, when it started and where its output goes."""

    proc: subprocess.Popen
    started: float
    log: Path
    rss_file: Path | None
    killed: bool = False


def start(argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Child:
    """Start `argv` in its own session, stdout and stderr into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".rss") if TIME else None
    if rss_file is not None:
        rss_file.unlink(missing_ok=True)
        argv = [TIME, "-f", "%M %U %S", "-o", str(rss_file), *argv]
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Child(proc, time.perf_counter(), log, rss_file)


def _measurement(child: Child, status: int, usage) -> Measurement:
    seconds = time.perf_counter() - child.started
    child.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    own = _time_output(child.rss_file)
    if own is None:
        kb, cpu, source = usage.ru_maxrss, None, "wait4"
    else:
        (kb, cpu), source = own, "time"
    return Measurement(round(seconds, 3), round(kb / 1024, 1), child.proc.returncode, str(child.log),
                       child.killed, cpu, source)


def _time_output(path: Path | None) -> tuple[int, float] | None:
    """(peak KB, CPU seconds) from /usr/bin/time's `%M %U %S` line (the last one: a failed
    command adds a 'Command exited with non-zero status' line before it). None when killed."""
    try:
        kb, user, system = path.read_text().splitlines()[-1].split()
        return int(kb), round(float(user) + float(system), 2)
    except (AttributeError, OSError, IndexError, ValueError):
        return None


def wait(child: Child) -> Measurement:
    """Block until the child ends; reap it with its own rusage."""
    _pid, status, usage = os.wait4(child.proc.pid, 0)
    return _measurement(child, status, usage)


def poll(child: Child) -> Measurement | None:
    """The measurement if the child has ended, else None (does not block)."""
    pid, status, usage = os.wait4(child.proc.pid, os.WNOHANG)
    return _measurement(child, status, usage) if pid else None


def kill(child: Child, *, timeout: float = 30.0) -> Measurement:
    """SIGKILL the child's whole process group, reap it, and wait until every process of
    the group is gone: the step under /usr/bin/time is reaped by init, not by us, and a
    tool that checks whether the PID holding its lock is alive must see it dead."""
    child.killed = True
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    result = wait(child)
    deadline = time.monotonic() + timeout
    while _group_alive(child.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run(argv: list[str], log: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> Measurement:
    """Run one step to the end in a fresh child and measure it."""
    return wait(start(argv, log, env, cwd))


def tail(path: str | Path, lines: int = 15) -> str:
    """The last lines of a step's log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
