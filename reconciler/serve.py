"""`reconciler serve`: the reconcile loop, run continuously beside the HTTP API.

The loop is the CLI's `apply`, repeated: load the specs from a source, plan, and
`reconcile.apply` them; nothing here mutates state by another path. What it adds is
when to run and what to report:

- A **source** says which revision of the specs it holds now, cheaply: a hash of the
  files of a spec directory (a ConfigMap mount: kubelet swaps the `..data` link and
  the visible files change content, which the hash sees), or the commit a git ref
  names (`gitsource`). A revision not attempted yet is reconciled at once; otherwise
  every `interval` (±10% jitter, so many replicas of many deployments do not hit the
  same upstream in step), after failures with exponential backoff capped at the
  interval. `suspend` keeps the API up and runs only reconciles asked for by
  `POST /api/reconcile`.
- The **status** follows kstatus: conditions Ready, Reconciling and Stalled, each
  with a reason and a message; lastAppliedRevision and lastAttemptedRevision; the
  last plan's summary; a status per object. Stalled means a person must act: the
  specs do not load, the plan refuses (an in-use drop, an edited snapshot), the head
  commit is not trusted. A source or upstream that is down is not stalled: it is
  retried. Whatever fails, the last good published trees stay as they are, because a
  failing reconcile changes nothing it has not completed.
- **Shutdown** (SIGTERM): uvicorn stops accepting connections and lets running
  requests finish; the loop starts no new task, lets the running one finish, and the
  process exits within the grace period even if that task does not (tasks are
  crash-safe: a killed one is resumed by the next run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler import api, events, leader, reconcile, tasks
from reconciler.errors import ReconcilerError, Refused, SpecError, TemporaryError
from reconciler.gitsource import SourceError, UntrustedCommit
from reconciler.loader import Specs, load_specs
from reconciler.metrics import MeteredPool, Metrics
from reconciler.plan import Options as PlanOptions
from reconciler.spec import MirrorDoc
from reconciler.state.stores import now

log = logging.getLogger("reconciler.serve")
BACKOFF_START = 5.0  # seconds before the first retry; doubles per failure, capped at the interval
DIR_POLL = 2.0  # a spec directory is re-hashed this often (a few small files)
GIT_POLL = 60.0  # a git ref is checked at most this often (one request)
LEADER_POLL = 1.0  # a standby tries to take the leadership this often


class Source(Protocol):
    def describe(self) -> dict: ...

    def check(self) -> str: ...

    def load(self, revision: str) -> tuple[str, Specs]: ...


# -- spec directory source ------------------------------------------------------------


def spec_revision(root: Path) -> str:
    """sha256 over every visible file's relative path and content (symlinks followed)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # ConfigMap: ..data, ..2026_...
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath, name)
            if not path.is_file():  # dangling link, FIFO: not read here (it would block); load() reports it
                digest.update(f"{path.relative_to(root).as_posix()}\0-\n".encode())
                continue
            try:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue  # vanished mid-walk (a swap): load() notices the revision moved
            digest.update(f"{path.relative_to(root).as_posix()}\0{content}\n".encode())
    return "sha256:" + digest.hexdigest()


class DirSource:
    def __init__(self, path: Path):
        self.path = Path(path)

    def describe(self) -> dict:
        return {"type": "directory", "path": str(self.path)}

    def check(self) -> str:
        return spec_revision(self.path)

    def load(self, revision: str) -> tuple[str, Specs]:
        """Load the specs, and the revision they were read at: re-hash until it holds still."""
        for _ in range(5):
            specs = load_specs([self.path])
            after = self.check()
            if after == revision:
                return revision, specs
            revision = after
        raise TemporaryError(f"{self.path}: the spec files kept changing while being read")


def source_identity(described: dict) -> str:
    """What the owner records as its spec source: the git URL, ref and path, or the directory."""
    if described["type"] == "git":
        return f"git:{described['url']}@{described['ref']}:{described['path']}"
    return f"dir:{os.path.abspath(described['path'])}"


# -- the controller -------------------------------------------------------------------


class _Stopping(Exception):
    """Raised from apply's `started` event once shutdown began: no new task starts after
    the running one."""


class _LostLeadership(Exception):
    """Raised from apply's `started` event when this replica no longer leads: the new
    leader goes on from what is committed."""


@dataclass
class _Outcome:
    ok: bool
    reason: str
    message: str
    stalled: bool = False


class Controller:
    """Runs the loop in a thread; the API reads its status and asks it for reconciles."""

    def __init__(self, ctx: tasks.Context, source: Source, *, interval: float, owner: str = "default",
                 suspend: bool = False, metrics: Metrics | None = None,
                 leadership: leader.Leadership | None = None, leader_poll: float = LEADER_POLL):
        self.ctx, self.source, self.interval, self.owner, self.suspend = ctx, source, interval, owner, suspend
        # None: this controller always leads (one process by construction, as in tests)
        self.leadership, self.leader_poll = leadership, leader_poll
        self._seen_leadership: dict | None = None
        self._leading_thread: threading.Thread | None = None
        self.metrics = metrics or Metrics(ctx)
        self.poll = min(interval, GIT_POLL if source.describe()["type"] == "git" else DIR_POLL)
        self.specs: Specs | None = None
        self.ready = False
        self.stop_event = threading.Event()
        self.stopped_at: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._manual = False
        self._running = False
        self._completed = 0
        self._failures = 0
        self._attempted_check: str | None = None
        self._thread: threading.Thread | None = None
        self._status = _Status()

    # -- what the API uses ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and (self._thread.is_alive() or self.stop_event.is_set())

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    @property
    def leading(self) -> bool:
        return self.leadership is None or self.leadership.leading

    def leader_name(self) -> str:
        """Who leads, as the lease names it (for a standby's answers)."""
        lease = (self._seen_leadership or {}).get("lease") or {}
        return lease.get("holder") or "another replica"

    def status(self) -> dict:
        with self._lock:
            document = self._status.to_json(source=self.source.describe(), suspended=self.suspend,
                                            failures=self._failures)
            if self.leadership is not None:
                document["leadership"] = dict(self._seen_leadership or self.leadership.status(read=False))
            return document

    def declared_mirror(self, name: str) -> MirrorDoc | None:
        specs = self.specs
        return specs.mirrors.get(name) if specs else None

    def request(self) -> int:
        """Ask for a reconcile now; returns the ticket `finished` takes. Never blocks: the API
        waits on its event loop, holding no thread (api module docstring)."""
        with self._lock:
            self._manual = True
            self._wake.set()
            return self._completed + (2 if self._running else 1)

    def finished(self, ticket: int) -> bool:
        """Whether a reconcile that started after `request` returned `ticket` has ended
        (or shutdown began: none will)."""
        return self._completed >= ticket or self.stop_event.is_set()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> threading.Thread:
        if self.leadership is not None:
            self._poll_leadership()  # the first answer before the API or the loop uses it
            self._leading_thread = threading.Thread(target=self._lead, name="leadership", daemon=True)
            self._leading_thread.start()
        self._thread = threading.Thread(target=self.run, name="reconcile-loop", daemon=True)
        self._thread.start()
        return self._thread

    def join_leadership(self, timeout: float) -> None:
        if self._leading_thread is not None:
            self._leading_thread.join(timeout)

    def _lead(self) -> None:
        """Take or keep the leadership every `leader_poll` seconds; give it up on shutdown."""
        assert self.leadership is not None
        while not self.stop_event.wait(self.leader_poll):
            self._poll_leadership()
        self.leadership.release()
        self.metrics.leader.set(0)

    def _poll_leadership(self) -> None:
        leadership = self.leadership
        assert leadership is not None  # the thread runs only with one
        was = leadership.leading
        leading = leadership.poll()
        seen = leadership.status()
        self.metrics.leader.set(1 if leading else 0)
        with self._lock:
            self._seen_leadership = seen
            if not leading:
                holder = (seen.get("lease") or {}).get("holder") or "another replica"
                self._status.set("Ready", seen.get("readable", False), "Standby",
                                 f"standing by: {holder} reconciles; this replica answers reads")
                self._status.set("Reconciling", False, "Standby", "the leader reconciles")
        if leading and not was:
            log.info("leading: this replica reconciles (%s)", leadership.identity)
            self._wake.set()  # the loop reconciles at once: the old leader may have stopped half-way
        elif was and not leading:
            log.warning("leadership lost: standing by; no new change starts here")
        if not leading and seen.get("readable"):
            self.ready = True  # a standby serves reads (API, /metrics, /public) as soon as it can read state

    def stop(self) -> None:
        if not self.stop_event.is_set():
            self.stopped_at = time.monotonic()
            log.info("stopping: no new tasks; waiting for the running one")
        self.stop_event.set()
        self._wake.set()

    def run(self) -> None:
        next_due = 0.0
        led = False
        while not self.stop_event.is_set():
            checked, error = self._check()
            leading = self.leading
            became, led = leading and not led, leading  # a new leader reconciles at once
            with self._lock:
                manual, self._manual = self._manual, False
                new = checked is not None and checked != self._attempted_check
                due = time.monotonic() >= next_due
                go = (manual or (not self.suspend and (new or due or became))) and leading
                self._running = go
            if go:
                ok = self._attempt(checked if not manual else None, error if not manual else None)
                self._failures = 0 if ok else self._failures + 1
                next_due = time.monotonic() + self._delay()
            poll = self.poll if self.leading else self.leader_poll
            self._wake.wait(max(0.0, min(next_due - time.monotonic(), poll)))
            self._wake.clear()

    def _delay(self) -> float:
        base = self.interval if not self._failures else min(self.interval, BACKOFF_START * 2 ** (self._failures - 1))
        return base * random.uniform(0.9, 1.1)

    def _check(self) -> tuple[str | None, ReconcilerError | None]:
        try:
            return self.source.check(), None
        except ReconcilerError as exc:
            return None, exc

    # -- one reconcile ----------------------------------------------------------------

    def _attempt(self, checked: str | None, error: ReconcilerError | None) -> bool:
        started = time.monotonic()
        with self._lock:
            self._status.begin(checked)
        try:
            recovered = self.ctx.recover()  # tasks of a replica (or an apply) that died meanwhile
            if recovered:
                log.warning("%d task(s) of processes that are gone marked failed; their work is redone", recovered)
            outcome = self._reconcile(checked, error)
        except Exception as exc:  # a bug must not end the loop: report it and retry
            log.exception("reconcile failed unexpectedly")
            outcome = _Outcome(False, "InternalError", f"{type(exc).__name__}: {exc}")
        seconds = time.monotonic() - started
        self.metrics.reconcile_duration.labels("all", "all").observe(seconds)
        if outcome.ok:
            self.ready = True
            self.metrics.ready.set(1)
            self.metrics.last_success.set(time.time())
        else:
            self.metrics.reconcile_failures.labels(outcome.reason).inc()
        (log.info if outcome.ok else log.warning)("%s: %s (%.1fs)", outcome.reason, outcome.message, seconds)
        with self._lock:
            self._status.end(outcome, failures=self._failures + (0 if outcome.ok else 1))
            self._running = False
            self._completed += 1
        return outcome.ok

    def _reconcile(self, checked: str | None, error: ReconcilerError | None) -> _Outcome:
        try:
            if error is not None:
                raise error
            if checked is None:  # asked for by hand: look at the source now, not at the last poll
                checked = self.source.check()
            self._attempted_check = checked
            with self._lock:
                self._status.attempted(checked)
            revision, specs = self.source.load(checked)
            for warning in specs.warnings:
                log.warning("%s", warning)
            with self._lock:
                self._status.attempted(revision)
            self.specs = specs
            return self._apply(revision, specs)
        except SpecError as exc:
            return _Outcome(False, "SpecInvalid", str(exc), stalled=True)
        except UntrustedCommit as exc:
            return _Outcome(False, "VerificationFailed", str(exc), stalled=True)
        except Refused as exc:
            return _Outcome(False, "PlanRefused", str(exc), stalled=True)
        except SourceError as exc:
            return _Outcome(False, "SourceUnavailable", str(exc))
        except _Stopping:
            return _Outcome(False, "Interrupted", "shutdown began; the remaining changes wait for the next start")
        except _LostLeadership:
            return _Outcome(False, "LeadershipLost", "this replica no longer leads; the new leader reconciles the rest")
        except ReconcilerError as exc:
            return _Outcome(False, "ReconcileFailed", str(exc))

    def _apply(self, revision: str, specs: Specs) -> _Outcome:
        if self.stop_event.is_set():
            raise _Stopping()
        options = PlanOptions(owner=self.owner, source=source_identity(self.source.describe()))
        the_plan = reconcile.make_plan(self.ctx, specs, options, with_probe=False)
        with self._lock:
            self._status.planned(revision, the_plan)
        report = reconcile.apply(self.ctx, specs, options, plan=the_plan, echo=_log_line,
                                 subscribers=[self._on_event, events.log_to(log), self.metrics.observe])
        with self._lock:
            self._status.reported(report)
        if not report.ok:
            return _Outcome(False, "ReconcileFailed", f"revision {revision}: {len(report.failures)} change(s) "
                                                      f"failed: " + "; ".join(report.failures))
        with self._lock:
            self._status.applied(revision)
        # The plan serve applies is made without probes, so every mirror in it reads "check
        # upstream": what changed is known only from what each action says it did.
        changed = report.changed
        what = f"{len(changed)} change(s)" if changed else "no change"
        return _Outcome(True, "ReconciliationSucceeded", f"applied revision {revision} ({what})")

    def _on_event(self, event: events.Event) -> None:
        """Once shutdown began, or the leadership was lost, start no further change: the
        running one has finished (and held its locks throughout)."""
        if not event.finished and self.stop_event.is_set():
            raise _Stopping()
        if not event.finished and not self.leading:
            raise _LostLeadership()


def _log_line(text: str) -> None:
    """apply's `echo` in serve: the lines that belong to no change (the owner's claim, a
    download's retries, lost pool files)."""
    log.info("%s", text)


class _Status:
    """The kstatus-style document behind GET /api/status (guarded by the controller's lock)."""

    def __init__(self) -> None:
        stamp = now()
        self.conditions = {
            "Ready": _condition("Ready", False, "Initializing", "no reconcile has finished yet", stamp),
            "Reconciling": _condition("Reconciling", True, "Initializing", "starting", stamp),
            "Stalled": _condition("Stalled", False, "Initializing", "", stamp),
        }
        self.applied_revision: str | None = None
        self.attempted_revision: str | None = None
        self.last_attempt: str | None = None
        self.last_success: str | None = None
        self.plan: dict | None = None
        self.report: dict | None = None
        self.objects: dict[tuple[str, str], dict] = {}

    def set(self, kind: str, value: bool, reason: str, message: str) -> None:
        cond = self.conditions[kind]
        status = "True" if value else "False"
        if cond["status"] != status:
            cond["lastTransitionTime"] = now()
        cond.update(status=status, reason=reason, message=message)

    def begin(self, checked: str | None) -> None:
        self.last_attempt = now()
        self.set("Reconciling", True, "Progressing", f"reconciling {checked or 'the current revision'}")

    def attempted(self, revision: str) -> None:
        self.attempted_revision = revision

    def planned(self, revision: str, the_plan) -> None:
        summary = the_plan.to_json()
        self.plan = {"revision": revision, "summary": summary["summary"], "hasChanges": summary["hasChanges"],
                     "errors": summary["errors"], "changes": [c.text() for c in the_plan.changes]}
        self.objects = {(c.kind, c.name): {"kind": c.kind, "name": c.name, "op": c.op, "reason": c.reason,
                                           "status": "Pending" if c.changes_anything else "Current",
                                           "message": c.reason}
                        for c in the_plan.changes}

    def reported(self, report: reconcile.Report) -> None:
        self.report = {"lines": list(report.lines), "failures": list(report.failures), "changed": report.changed}
        told = set()
        for event in report.events:  # an object's last word, unless one of its changes failed
            key = (event.kind, event.name)
            obj = self.objects.get(key)
            if obj is None or not event.message or (key in told and obj["status"] == "Failed"):
                continue
            told.add(key)
            if event.outcome in (events.FAILED, events.SKIPPED):
                obj.update(status="Failed", message=event.message)
            else:  # its action's last line: warnings come first
                obj.update(status="Current", message=event.message.splitlines()[-1])
        for key, obj in self.objects.items():
            if key not in told and obj["status"] == "Pending":
                obj["status"] = "Current" if obj["op"] == "unmanaged" else "Unknown"

    def applied(self, revision: str) -> None:
        self.applied_revision = revision
        self.last_success = now()

    def end(self, outcome: _Outcome, *, failures: int) -> None:
        if outcome.ok:
            self.set("Ready", True, outcome.reason, outcome.message)
            self.set("Reconciling", False, outcome.reason, "")
            self.set("Stalled", False, outcome.reason, "")
            return
        self.set("Ready", False, outcome.reason, outcome.message)
        self.set("Stalled", outcome.stalled, outcome.reason, outcome.message if outcome.stalled else "")
        retry = "waiting for a new revision" if outcome.stalled else f"retrying with backoff ({failures} failure(s))"
        self.set("Reconciling", not outcome.stalled, outcome.reason, retry)

    def to_json(self, *, source: dict, suspended: bool, failures: int) -> dict:
        return {
            "source": source,
            "suspended": suspended,
            "conditions": [dict(c) for c in self.conditions.values()],
            "lastAppliedRevision": self.applied_revision,
            "lastAttemptedRevision": self.attempted_revision,
            "lastAttemptTime": self.last_attempt,
            "lastSuccessTime": self.last_success,
            "consecutiveFailures": failures,
            "lastPlan": self.plan,
            "lastReport": self.report,
            "objects": [dict(o) for o in self.objects.values()],
        }


def _condition(kind: str, value: bool, reason: str, message: str, stamp: str) -> dict:
    return {"type": kind, "status": "True" if value else "False", "reason": reason, "message": message,
            "lastTransitionTime": stamp}


# -- the process ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    listen: str = "127.0.0.1:8080"
    interval: float = 600.0
    owner: str = "default"
    suspend: bool = False
    token_file: Path | None = None
    serve_public: bool = False
    grace: float = 30.0
    leader_poll: float = LEADER_POLL


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` → (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT or [IPV6]:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"--listen {text!r}: port out of range")
    return host, port


def _bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, before uvicorn's loop runs
    except OSError as exc:
        sock.close()
        raise ReconcilerError(f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


def _server(app, stop: Callable[[], None], grace: float):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: stop the loop too, at once
            stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=max(1, int(grace)))
    return Server(config)


def run(ctx: tasks.Context, source: Source, options: Options) -> int:
    """Serve until SIGTERM/SIGINT; the exit is bounded by `options.grace` seconds."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics(ctx)
    ctx.pool = MeteredPool(ctx.pool.root, metrics.download_bytes.inc)
    use_pool = getattr(ctx.backend, "use_pool", None)
    if use_pool:  # PostgreSQL: the API's many short sessions reuse connections
        use_pool(max_size=16)
    controller = Controller(ctx, source, interval=options.interval, owner=options.owner,
                            suspend=options.suspend, metrics=metrics, leadership=leader.for_context(ctx),
                            leader_poll=options.leader_poll)
    app = api.create_app(ctx, controller, metrics=metrics, token_file=options.token_file,
                         serve_public=options.serve_public)
    sock = _bind(options.listen)
    server = _server(app, controller.stop, options.grace)
    for sig in (signal.SIGTERM, signal.SIGINT):  # what uvicorn restores and re-raises after its shutdown
        signal.signal(sig, lambda *_: controller.stop())
    thread = controller.start()
    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d (source %s)", f"[{host}]" if ":" in host else host, port,
             source.describe())
    try:
        server.run(sockets=[sock])
    finally:
        controller.stop()
    left = options.grace - (time.monotonic() - (controller.stopped_at or time.monotonic()))
    thread.join(timeout=max(0.0, left))
    if thread.is_alive() or _busy_threads():
        log.warning("grace period over with a task still running; it resumes on the next start")
        logging.shutdown()
        os._exit(0)  # download threads (non-daemon) would otherwise hold the interpreter open
    controller.join_leadership(timeout=2.0)  # the lease released before the connections close
    if use_pool:
        ctx.backend.close()
    log.info("stopped")
    return 0


def _busy_threads() -> list[threading.Thread]:
    """Threads the interpreter would wait for at exit: a task still running in a request."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
