"""The HTTP API of `reconciler serve`: a thin shell over the stores, the actions and the loop.

- Reads open a connection of their own per request: the JSON shapes come from `views`,
  the same functions `--json` uses, so the CLI and the API cannot disagree.
- Mutations call the same actions the CLI's `apply` does (`mirrors.sync`,
  `mirrors.drop`, `snapshots.drop`, `publish.drop`). Each is a locked task that reloads and re-checks inside its lock,
  so a DELETE racing a snapshot of the same mirror is decided there, freshly, and a
  refusal (in use: 403 naming the users) leaves everything as it was.
- Nothing that waits for reconcile work may hold a thread the reads need, or the pod's
  probes time out and it is killed while working. Probes and /api/status are `async`
  and touch neither threads nor the database. Reads and /metrics are plain `def`s in
  AnyIO's thread pool, which nothing else holds for long: `POST /api/reconcile?wait=1`
  waits on the event loop, and endpoints that run a task run on threads of their own.
  Both are bounded (LIMITS below); a request beyond the bound is answered 429 at once.
- Domain errors become HTTP statuses in one handler, from each error's `http_status`;
  every error answer (401, 404, 422, 429 too) is `{"error", "message"}` (ErrorBody).
- Names: /api/mirrors, /api/snapshots, /api/publishes (/api/publish is an alias kept
  for old clients), each with /packages; the shapes are the models in `views`.
- With a token file, mutating endpoints need `Authorization: Bearer TOKEN`, compared in
  constant time; the file is read per request, so a rotated Secret takes effect
  without a restart. A token file that is missing, unreadable or empty refuses every
  mutation (503, logged); it never reads as "no token". Reads stay open, as /metrics
  and probes must.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Protocol

from http import HTTPStatus

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

import reconciler.reconcile  # noqa: F401 - attaches the kinds' actions (kinds.Parts) the routes call
from reconciler import __version__, kinds, tasks, views
from reconciler.actions import mirrors, publish
from reconciler.actions.result import Result
from reconciler.errors import AuthUnavailable, InUse, NotFound, ReconcilerError, Refused, SpecError
from reconciler.loader import Specs
from reconciler.metrics import CONTENT_TYPE, Metrics
from pydantic import BaseModel, Field

from reconciler.spec import API_VERSION, MirrorDoc, redacted_fields
from reconciler.state.stores import Store

log = logging.getLogger("reconciler.api")

# LIMITS: what keeps the API answering under load (see the module docstring).
MAX_WAITERS = 32  # POST /api/reconcile?wait=1 requests waiting at once; each costs a socket, no thread
WAIT_POLL = 0.1  # seconds between a waiter's looks at the loop's count of finished reconciles
TASK_THREADS = 4  # tasks run by API requests at once (update, drop); each is a locked task anyway
MAX_TASK_REQUESTS = 16  # such requests accepted at once, running or queued for one of those threads
MAX_TOKEN_BYTES = 64 * 1024  # a bearer token file is a few dozen bytes
MAX_ID = 2**63 - 1  # SQLite's largest integer: a task id beyond it cannot exist
DEFAULT_PAGE = 1000  # packages per page of /api/.../packages unless ?limit= says otherwise
MAX_PAGE = 10000
MAX_KEY_PARTS = 64  # /api/publishes/PREFIX/DIST tries each split, one query each

# Query parameters of the /packages endpoints (module level: annotations are strings here)
Q = Annotated[str | None, Query(description="aptly package query, e.g. 'Name (% lib*)'; all without one")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Packages per page")]
Offset = Annotated[int, Query(ge=0, description="Packages to skip")]
Where = Annotated[str | None, Query(alias="in", description="mirror/NAME, snapshot/NAME or publish/NAME")]



class ErrorBody(BaseModel):
    """Every error answer: the error's class (NotFound, InUse, Unauthorized, ...) and a message."""

    error: str
    message: str
    users: list[str] | None = Field(None, description="What uses the object (InUse)")
    issues: list[str] | None = Field(None, description="Each problem (SpecError, ValidationError)")


ERROR = {"model": ErrorBody}


class Controller(Protocol):
    """What the API needs of the reconcile loop (serve.Controller)."""

    owner: str
    ready: bool
    specs: Specs | None  # the specs last loaded (None before the first load)

    @property
    def alive(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def leading(self) -> bool:
        """False on a standby replica: it answers reads, the leader reconciles."""

    def leader_name(self) -> str: ...

    def status(self) -> dict: ...

    def declared_mirror(self, name: str) -> MirrorDoc | None: ...

    def request(self) -> int:
        """Ask for a reconcile now; returns a ticket for `finished`."""

    def finished(self, ticket: int) -> bool:
        """Whether a reconcile that started after `request` returned `ticket` has ended."""


def create_app(ctx: tasks.Context, controller: Controller, *, metrics: Metrics | None = None,
               token_file: Path | None = None, serve_public: bool = False) -> FastAPI:
    app = FastAPI(title="reconciler", version=__version__,
                  description="Declarative Debian repositories: mirrors, snapshots and signed published trees.",
                  exception_handlers={ReconcilerError: _error, StarletteHTTPException: _http_error,
                                      RequestValidationError: _invalid})
    metrics = metrics or Metrics(ctx)
    if token_file is not None:
        read_token(token_file)  # refuse to start with a token file that would refuse every mutation
    auth = _bearer(token_file)
    _reads(app, ctx)
    _mutations(app, ctx, controller, metrics, auth)
    _operations(app, controller, metrics)
    if serve_public:
        ctx.publish_dir.mkdir(parents=True, exist_ok=True)
        app.mount("/public", PublicFiles(directory=ctx.publish_dir, follow_symlink=False), name="public")
    return app


async def _error(request: Request, exc: ReconcilerError) -> JSONResponse:
    """The one place domain errors become HTTP statuses (async: a 404 needs no thread)."""
    body: dict = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InUse):
        body["users"] = exc.users
        body["message"] = f"{exc.what} is in use by {', '.join(exc.users)}; pass ?force=1 to drop it anyway"
    if isinstance(exc, SpecError):
        body["issues"] = [str(i) for i in exc.issues]
    return JSONResponse(body, status_code=exc.http_status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """401, 429, 503 and unknown paths in the same {"error", "message"} shape as domain errors."""
    try:
        error = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        error = f"HTTP{exc.status_code}"
    return JSONResponse({"error": error, "message": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed request (limit=0, a task id that is no number): 422, each issue named."""
    issues = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse({"error": "ValidationError", "message": "; ".join(issues), "issues": issues},
                        status_code=422)


def read_token(path: Path) -> str:
    """The bearer token `path` holds now; AuthUnavailable when there is none to compare with."""
    advice = "mutating API calls are refused until it holds the token"
    if not path.is_file():  # missing, a dangling link, a directory, a FIFO (which would block the read)
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise AuthUnavailable(f"--token-file {path} {what}; {advice}")
    try:
        with path.open("rb") as handle:
            token = handle.read(MAX_TOKEN_BYTES + 1).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthUnavailable(f"--token-file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}; "
                              f"{advice}") from None
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthUnavailable(f"--token-file {path} is larger than {MAX_TOKEN_BYTES} bytes; {advice}")
    if not token:
        raise AuthUnavailable(f"--token-file {path} is empty or only whitespace; {advice}")
    return token


def _bearer(token_file: Path | None):
    scheme = HTTPBearer(auto_error=False, description="Needed by mutating endpoints when serve has --token-file")

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if token_file is None:
            return
        try:
            expected = read_token(token_file).encode()
        except AuthUnavailable as exc:
            log.error("%s", exc)
            raise
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def _store(ctx: tasks.Context):
    def connect() -> Iterator[Store]:
        db = ctx.connect()  # one connection per request: requests run on many threads
        try:
            yield Store(db)
        finally:
            db.close()

    return connect


def _reads(app: FastAPI, ctx: tasks.Context) -> None:
    connect = Depends(_store(ctx))  # a default value, not an alias: annotations are strings here

    named = [kind for kind in kinds.all() if not kind.path_key]  # /api/KINDS/NAME; publishes have their own
    for kind in named:
        _kind_reads(app, kind, connect)

    def packages(store: Store, q: str | None, where: str | None, limit: int, offset: int) -> dict:
        return views.packages(store, q, where, limit=limit, offset=offset)

    @app.get("/api/packages", tags=["packages"], responses={400: ERROR, 404: ERROR, 422: ERROR},
             response_model=views.PackagePage,
             summary="Search packages: in one object (in=mirror/NAME, snapshot/NAME, publish/NAME) or in "
                     "every mirror and snapshot")
    def search_packages(q: Q = None, where: Where = None,
                        limit: Limit = DEFAULT_PAGE, offset: Offset = 0, store: Store = connect) -> dict:
        return packages(store, q, where, limit, offset)

    def listing(kind: str):
        def of_kind(name: str, q: Q = None, limit: Limit = DEFAULT_PAGE, offset: Offset = 0,
                    store: Store = connect) -> dict:
            return packages(store, q, f"{kind}/{name}", limit, offset)
        return of_kind

    for kind in named:  # one endpoint each, the same shape
        app.get(f"/api/{kind.plural}/{{name}}/packages", tags=["packages"], responses={404: ERROR, 422: ERROR},
                response_model=views.PackagePage, name=f"{kind.word}_packages",
                summary=f"A {kind.word}'s packages (q: an aptly query)")(listing(kind.word))

    @app.get("/api/publish/{key:path}/packages", include_in_schema=False)
    @app.get("/api/publishes/{key:path}/packages", tags=["packages"], responses={404: ERROR, 422: ERROR},
             response_model=views.PackagePage,
             summary="A published tree's packages, each with its component: /api/publishes/PREFIX/DIST/packages")
    def publish_packages(key: str, q: Q = None, limit: Limit = DEFAULT_PAGE, offset: Offset = 0,
                         store: Store = connect) -> dict:
        row = _found(_publish_at(store, key), f"publish {key!r}")
        return packages(store, q, f"publish/{row.name}", limit, offset)

    # /api/publishes is the canonical name (plural, as /api/mirrors and /api/snapshots);
    # /api/publish stays as an alias of every publish endpoint, hidden from the schema.
    @app.get("/api/publish", include_in_schema=False)
    @app.get("/api/publishes", tags=["publishes"], summary="List published trees, each with numPackages",
             response_model=list[views.PublishView])
    def list_publishes(store: Store = connect) -> list[dict]:
        return [views.publish(r) for r in store.publishes.list()]

    @app.get("/api/publish/{key:path}", include_in_schema=False)
    @app.get("/api/publishes/{key:path}", tags=["publishes"], responses={404: ERROR},
             response_model=views.PublishView,
             summary="One published tree: /api/publishes/PREFIX/DIST (/api/publishes/DIST for the root prefix)")
    def get_publish(key: str, store: Store = connect) -> dict:
        return views.publish(_found(_publish_at(store, key), f"publish {key!r}"))

    @app.get("/api/tasks", tags=["tasks"], summary="Recent tasks, newest first",
             response_model=list[views.TaskView])
    def list_tasks(limit: Annotated[int, Query(ge=1, le=1000)] = 50, store: Store = connect) -> list[dict]:
        return [views.task(t) for t in tasks.list_tasks(store, limit=limit)]

    @app.get("/api/tasks/{task_id}", tags=["tasks"], summary="One task: state, output, error",
             responses={404: ERROR}, response_model=views.TaskView)
    def get_task(task_id: int, store: Store = connect) -> dict:
        row = tasks.get_task(store, task_id) if 0 < task_id <= MAX_ID else None
        return views.task(_found(row, f"task {task_id}"))


def _kind_reads(app: FastAPI, kind: kinds.Kind, connect) -> None:
    """GET /api/KINDS and /api/KINDS/NAME of a kind addressed by name."""
    def list_rows(store: Store = connect) -> list[dict]:
        return [kind.view(r) for r in kind.rows(store).list()]

    def get_row(name: str, store: Store = connect) -> dict:
        return kind.view(_found(kind.rows(store).get(name), f"{kind.word} {name!r}"))

    app.get(f"/api/{kind.plural}", tags=[kind.plural], summary=f"List {kind.plural}, each with numPackages",
            response_model=list[kind.model], name=f"list_{kind.plural}")(list_rows)  # type: ignore[name-defined]
    app.get(f"/api/{kind.plural}/{{name}}", tags=[kind.plural], summary=f"One {kind.word}", responses={404: ERROR},
            response_model=kind.model, name=f"get_{kind.word}")(get_row)


def _found(row, what: str):
    if row is None:
        raise NotFound(f"{what} does not exist")
    return row


def _publish_at(store: Store, key: str):
    """PREFIX/DIST, where both may hold slashes: try every split, the root prefix "." last."""
    parts = key.strip("/").split("/")
    if len(parts) > MAX_KEY_PARTS:
        return None
    for cut in range(1, len(parts)):
        row = store.publishes.at("/".join(parts[:cut]), "/".join(parts[cut:]))
        if row is not None:
            return row
    return store.publishes.at(".", "/".join(parts))


class _Bound:
    """At most `limit` requests inside at once; the next is answered 429 at once.

    Entered only from async endpoints, so only on the event loop's thread: no lock."""

    def __init__(self, limit: int, what: str):
        self.limit, self.what, self.inside = limit, what, 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        if self.inside >= self.limit:
            log.warning("refused a request: %d %s already (the limit)", self.inside, self.what)
            raise HTTPException(429, f"{self.inside} {self.what} already; retry later",
                                headers={"Retry-After": "10"})
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1


class _TaskThreads:
    """Threads of their own for requests that run a task, so a task waiting for a lock or
    downloading never holds a thread that reads and /metrics need."""

    def __init__(self) -> None:
        self.bound = _Bound(MAX_TASK_REQUESTS, "requests running or waiting to run a task")
        self.limiter: anyio.CapacityLimiter | None = None  # made on the event loop, on first use

    async def run(self, fn: Callable[[], object]):
        with self.bound.enter():
            if self.limiter is None:
                self.limiter = anyio.CapacityLimiter(TASK_THREADS)
            return await anyio.to_thread.run_sync(fn, limiter=self.limiter)


def _mutations(app: FastAPI, ctx: tasks.Context, controller: Controller, metrics: Metrics, auth) -> None:
    guarded = [Depends(auth)]
    threads = _TaskThreads()
    waiters = _Bound(MAX_WAITERS, "requests waiting for a reconcile")

    def timed(kind_op: tuple[str, str], fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            started = time.monotonic()
            try:
                return fn()
            finally:
                metrics.task_duration.labels(*kind_op).observe(time.monotonic() - started)
        return run

    @app.post("/api/mirrors/{name}/update", tags=["mirrors"], dependencies=guarded,
              responses={401: ERROR, 404: ERROR, 403: ERROR, 429: ERROR, 503: ERROR},
              summary="Update one mirror now, as a task (the declared spec, else the stored one)")
    async def update_mirror(name: str, force: bool = False) -> dict:
        def update():
            doc, owner = _mirror_doc(ctx, controller, name)
            return mirrors.sync(ctx, doc, owner=owner, force=force)

        result = await threads.run(timed(("Mirror", "update"), update))
        shown = {k: v for k, v in dataclasses.asdict(result).items() if k != "task_id"}  # the documented shape
        return {"name": name, "message": result.line(), "result": shown}

    def dropped(kind: str, name: str, message: str) -> dict:
        warnings = []
        specs = controller.specs
        if specs is not None and name in specs.by_kind(kind):
            warnings.append(f"{kind.lower()}/{name} is still declared in the specs: the next reconcile creates "
                            "it again")
        return {"name": name, "message": message, "warnings": warnings}

    def drop_responses(users: str) -> dict:
        return {401: ERROR, 404: ERROR, 429: ERROR, 503: ERROR,
                403: {"model": ErrorBody, "description": f"in use by {users} (named in users), or protected"}}

    def drop_by_name(kind: str, collection: str, users: str, action: Callable[..., Result]) -> None:
        @app.delete(f"/api/{collection}/{{name}}", tags=[collection], dependencies=guarded, response_model=Dropped,
                    responses=drop_responses(users), name=f"drop_{kind.lower()}",
                    summary=f"Drop a {kind.lower()}; refused while {users} use it unless force=1")
        async def drop(name: str, force: bool = False) -> dict:
            done = await threads.run(timed((kind, "drop"), lambda: action(ctx, name, force=force)))
            return dropped(kind, name, done.line)

    for kind in kinds.all():
        if not kind.path_key and kind.parts.drop is not None:
            drop_by_name(kind.name, kind.plural, kind.users, kind.parts.drop)

    @app.delete("/api/publish/{key:path}", dependencies=guarded, include_in_schema=False)
    @app.delete("/api/publishes/{key:path}", tags=["publishes"], dependencies=guarded, response_model=Dropped,
                responses=drop_responses("nothing (a publish has no users)"),
                summary="Drop a published tree (/api/publishes/PREFIX/DIST): its dists/ and the pool "
                        "files nothing else there links")
    async def drop_publish(key: str, force: bool = False) -> dict:
        def drop() -> tuple[str, Result]:
            db = ctx.connect()
            try:
                row = _found(_publish_at(Store(db), key), f"publish {key!r}")
            finally:
                db.close()
            return row.name, publish.drop(ctx, row.name)  # re-checked inside its lock: protect, moved, gone

        name, done = await threads.run(timed(("Publish", "drop"), drop))
        return dropped("Publish", name, done.line)

    @app.post("/api/reconcile", tags=["reconcile"], dependencies=guarded, status_code=202,
              responses={401: ERROR, 409: ERROR, 429: ERROR, 503: ERROR, 504: {}},
              summary="Reconcile now; with wait=1, answer when that reconcile has finished")
    async def trigger(request: Request, wait: bool = False,
                      timeout: Annotated[float, Query(gt=0, le=3600)] = 600) -> Response:
        if controller.stopping:
            raise HTTPException(503, "shutting down")
        if not controller.leading:
            raise HTTPException(409, f"this replica stands by: {controller.leader_name()} reconciles; "
                                     "send the request to the leader")
        if not wait:
            controller.request()
            return JSONResponse(controller.status(), status_code=202)
        with waiters.enter():
            ticket = controller.request()
            deadline = time.monotonic() + timeout
            while not controller.finished(ticket):  # on the event loop: waiting holds no thread
                if time.monotonic() >= deadline:
                    return JSONResponse(controller.status(), status_code=504)
                if await request.is_disconnected():  # gone: free the place for a client still waiting
                    return Response(status_code=499)
                await asyncio.sleep(WAIT_POLL)
        return JSONResponse(controller.status(), status_code=200)


class Dropped(BaseModel):
    name: str
    message: str
    warnings: list[str] = Field(description="E.g. the object is still declared: the next reconcile creates it")


def _mirror_doc(ctx: tasks.Context, controller: Controller, name: str) -> tuple[MirrorDoc, str]:
    declared = controller.declared_mirror(name)
    if declared is not None:
        return declared, controller.owner
    db = ctx.connect()
    try:
        row = Store(db).mirrors.get(name)
    finally:
        db.close()
    if row is None:
        raise NotFound(f"mirror {name!r} is neither declared in the specs nor stored")
    secret = redacted_fields(row.spec)
    if secret:
        raise Refused(f"mirror {name!r} is not declared in the specs this server follows, and its stored spec "
                      f"keeps only digests of its secrets ({', '.join(secret)}), which cannot authenticate a "
                      "download; update it with `reconciler apply` from the specs that declare it")
    doc = MirrorDoc.model_validate({"apiVersion": API_VERSION, "kind": "Mirror", "spec": row.spec,
                                    "metadata": {"name": name, "protect": row.protect}})
    return doc, row.owner


def _operations(app: FastAPI, controller: Controller, metrics: Metrics) -> None:
    @app.get("/api/status", tags=["reconcile"],
             summary="Loop status: Ready/Reconciling/Stalled conditions, revisions, last plan, objects")
    async def status() -> dict:
        return controller.status()

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process and its reconcile loop run")
    async def healthz() -> JSONResponse:
        alive = controller.alive
        return JSONResponse({"status": "ok" if alive else "reconcile loop died"}, status_code=200 if alive else 503)

    @app.get("/readyz", tags=["probes"],
             summary="Readiness: 200 once a reconcile has succeeded (a standby: once it can read the state)")
    async def readyz() -> JSONResponse:
        if controller.ready:
            return JSONResponse({"ready": True, "role": "leader" if controller.leading else "standby"})
        ready = next(c for c in controller.status()["conditions"] if c["type"] == "Ready")
        return JSONResponse({"ready": False, "reason": ready["reason"], "message": ready["message"]},
                            status_code=503)

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics (text format)")
    def prometheus() -> Response:  # a plain def: the mirror gauge reads the database
        return Response(metrics.render(), media_type=CONTENT_TYPE)


class PublicFiles(StaticFiles):
    """The publish root, read-only; hidden entries (staging directories) are never served.

    `follow_symlink=False` makes Starlette resolve every path and refuse one that lands
    outside the directory, so a symlink cannot expose the rest of the root.
    """

    def lookup_path(self, path: str):
        if any(part.startswith(".") for part in PurePosixPath(path).parts):
            return "", None
        return super().lookup_path(path)
